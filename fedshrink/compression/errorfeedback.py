"""Error feedback: the part of an update a lossy chain did not send stays on the client.

Public API::

    ResidualStore(residuals: Mapping[str, torch.Tensor] | None = None)
    store.compensate(name, x) -> x + residual (or x, first round / shape change)
    store.update(name, x_in, x_sent)          # residual = x_in - x_sent
    store.encode(chain, name, x, *, rng=None) -> (EncodedTensor, x_sent)
    store.to_record() -> ArrayRecord ; ResidualStore.from_record(record)
    store.save(state: RecordDict, key=RESIDUAL_KEY) ; ResidualStore.load(state, key=RESIDUAL_KEY)

Invariant (tested): ``x_sent + residual_after == x + residual_before``, i.e. what
was sent plus the new residual equals what came in (exactly for sparsifiers,
to float32 rounding for quantizers). The ClientApp keeps the store in
``context.state`` between rounds: ``ResidualStore.load(context.state)`` at the
start of ``train``, ``store.save(context.state)`` before replying. The record
holds raw little-endian float32 bytes (stype ``fedshrink.v1.residual``), read
back with ``np.frombuffer``, never unpickled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedshrink.compression.chain import Chain
from fedshrink.compression.wire import DEFAULT_LIMITS, DecodeLimits, EncodedTensor, decode_tensor
from fedshrink.errors import DecodeError

RESIDUAL_KEY = "fedshrink.residuals"
RESIDUAL_STYPE = "fedshrink.v1.residual"


class ResidualStore:
    """Per-tensor float32 residuals of a client's lossy chain."""

    def __init__(self, residuals: Mapping[str, torch.Tensor] | None = None) -> None:
        self._r: dict[str, torch.Tensor] = {}
        for name, r in (residuals or {}).items():
            self._r[name] = r.detach().to(torch.float32).clone()

    def __len__(self) -> int:
        return len(self._r)

    def __contains__(self, name: object) -> bool:
        return name in self._r

    def __iter__(self) -> Iterator[str]:
        return iter(self._r)

    def get(self, name: str) -> torch.Tensor | None:
        return self._r.get(name)

    def clear(self) -> None:
        self._r.clear()

    def compensate(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x + residual`` in float32 (a stale residual of another shape is dropped)."""
        r = self._r.get(name)
        x32 = x.detach().to(torch.float32)
        if r is None or r.shape != x32.shape:
            return x32.clone()
        return x32 + r

    def update(self, name: str, x_in: torch.Tensor, x_sent: torch.Tensor) -> None:
        """Keep ``x_in - x_sent`` as the residual of ``name``."""
        self._r[name] = x_in.detach().to(torch.float32) - x_sent.detach().to(torch.float32)

    def encode(
        self,
        chain: Chain,
        name: str,
        x: torch.Tensor,
        *,
        rng: np.random.Generator | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> tuple[EncodedTensor, torch.Tensor]:
        """Encode ``x`` plus its residual with ``chain``; keep the new residual.

        Non-float tensors and lossless chains pass through without a residual.
        Returns the encoding and what the receiver will decode.
        """
        if not x.is_floating_point() or not chain.lossy:
            return chain.roundtrip(name, x, rng=rng, limits=limits)
        x_in = self.compensate(name, x)
        enc = chain.encode(name, x_in.to(x.dtype) if x.dtype != torch.float32 else x_in, rng=rng)
        sent = decode_tensor(enc.data, name=name, limits=limits)
        self.update(name, x_in, sent)
        return enc, sent

    def to_record(self) -> ArrayRecord:
        rec = ArrayRecord()
        for name, r in self._r.items():
            data = r.contiguous().numpy().astype("<f4", copy=False).tobytes()
            rec[name] = Array(dtype="float32", shape=tuple(r.shape), stype=RESIDUAL_STYPE, data=data)
        return rec

    @classmethod
    def from_record(cls, record: ArrayRecord) -> ResidualStore:
        store = cls()
        for name, arr in record.items():
            if arr.stype != RESIDUAL_STYPE or arr.dtype != "float32":
                raise DecodeError(name, f"residual has stype {arr.stype!r} / dtype {arr.dtype!r}")
            shape = tuple(int(d) for d in arr.shape)
            if any(d < 0 for d in shape) or 4 * int(np.prod(shape, dtype=np.int64)) != len(arr.data):
                raise DecodeError(name, f"residual of {len(arr.data)} bytes does not match shape {shape}")
            values = np.frombuffer(arr.data, dtype="<f4").astype(np.float32).reshape(shape)
            store._r[name] = torch.from_numpy(values)
        return store

    def save(self, state: RecordDict, key: str = RESIDUAL_KEY) -> None:
        """Store into a ClientApp's ``context.state``."""
        state[key] = self.to_record()

    @classmethod
    def load(cls, state: RecordDict, key: str = RESIDUAL_KEY) -> ResidualStore:
        """Read from ``context.state``; an empty store if there is none yet."""
        if key not in state:
            return cls()
        rec = state[key]
        if not isinstance(rec, ArrayRecord):
            raise DecodeError(key, f"residual record is a {type(rec).__name__}")
        return cls.from_record(rec)
