"""Codec chains: ``"topk:0.05|int8|zlib"`` parsed, validated, serialised and applied.

Public API::

    ChainConfig(stages: tuple[CodecConfig, ...])
    ChainConfig.parse(text) / .to_string() / .to_dict() / .from_dict(d) / .to_json() / .from_json(s)
    Chain(config: ChainConfig | str)            # also Chain.parse(text)
    chain.encode(name, tensor, *, rng=None) -> EncodedTensor      # .nbytes: bytes on the wire
    chain.roundtrip(name, tensor, *, rng=None) -> (EncodedTensor, torch.Tensor)
    chain.lossy -> bool
    chain.config.for_tensor(dtype, ndim) -> ChainConfig   # the stages as the wire records them

Grammar: stages separated by ``|``; each stage is ``id`` or ``id:arg,key=value,...``
(the first bare ``arg`` is the codec's positional setting: topk/randk ratio,
quant bits, zlib/zstd level). Aliases: ``int8``/``int4``/``q1``..``q8`` (quant with
those bits), ``float16``/``half`` (fp16), ``bfloat16`` (bf16). ``raw`` or ``""``
is the empty, lossless chain (float32 bytes as they are).

A leading ``flat`` (``"flat|topk:0.01|int8|zstd"``) is not a codec but the
carriage of an update: its floating-point tensors travel as one flat float32
vector, encoded once by the rest of the chain (one header instead of one per
tensor, and a top-k over the whole update; see :func:`~.flower.encode_state`).

Stage order: at most one sparsifier (first), at most one value codec, at most
one entropy stage (last). Semantics: the sparsifier picks values + indices; the
value codec encodes the kept values (or the whole tensor, grouped per channel
if asked); the entropy stage compresses the final ``[indices][values]`` payload.
Lossy stages apply to floating-point tensors only (``bitmap`` also to bool);
other tensors (int64 counters, ...) travel raw through the entropy stage only.
Error feedback (see :mod:`~fedshrink.compression.errorfeedback`) wraps a whole
chain: ``residual = input - decode(encode(input))``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedshrink.compression import bitops
from fedshrink.compression.codecs import (
    ALIASES,
    REGISTRY,
    Codec,
    CodecConfig,
    EntropyCodec,
    Kind,
    QuantConfig,
    Sparsifier,
    TopKConfig,
    ValueCodec,
    wire_ratio,
)
from fedshrink.compression.wire import (
    DEFAULT_LIMITS,
    DTYPES,
    FLOAT_DTYPES,
    TORCH_TO_NAME,
    DecodeLimits,
    EncodedTensor,
    all_finite,
    decode_tensor,
    plain_header,
    serialize_tensor,
)
from fedshrink.errors import ConfigError, EncodeError
from fedshrink.v1 import compression_pb2 as pb

RAW = "raw"
FLAT = "flat"


def _parse_stage(text: str) -> CodecConfig:
    head, _, rest = text.strip().partition(":")
    head = head.strip().lower()
    args: dict[str, str] = {}
    if head in ALIASES:
        head, preset = ALIASES[head]
        args.update(preset)
    cls = REGISTRY.get(head)
    if cls is None:
        allowed = "one of " + ", ".join(sorted([*REGISTRY, *ALIASES]))
        raise ConfigError("codec", text.strip(), allowed)
    config_cls = cls.config_cls
    if rest.strip():
        for i, part in enumerate(rest.split(",")):
            key, eq, val = part.partition("=")
            if not eq:
                if i != 0 or config_cls.positional is None:
                    raise ConfigError(
                        f"{head}.argument",
                        part.strip(),
                        "key=value pairs"
                        + (f" after an optional {config_cls.positional}" if config_cls.positional else ""),
                    )
                key, val = config_cls.positional, part
            args[key.strip()] = val.strip()
    return config_cls.from_args(args)


@dataclass(frozen=True)
class ChainConfig:
    """An ordered, validated tuple of codec configs."""

    stages: tuple[CodecConfig, ...] = ()
    flat: bool = False  # an update's float tensors travel as one flat vector (see the module doc)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        last = -1
        order = {Kind.SPARSIFY: 0, Kind.VALUE: 1, Kind.ENTROPY: 2}
        kinds: list[Kind] = []
        for cfg in self.stages:
            if not isinstance(cfg, CodecConfig) or cfg.codec_id not in REGISTRY:
                raise ConfigError("chain.stage", cfg, "a registered codec config")
            kind = REGISTRY[cfg.codec_id].kind
            if order[kind] <= last:
                raise ConfigError(
                    "chain",
                    self.to_string(),
                    "at most one sparsifier (first), one value codec, one entropy stage (last)",
                )
            last = order[kind]
            kinds.append(kind)
        if Kind.SPARSIFY in kinds and any(cfg.codec_id == "bitmap" for cfg in self.stages):
            raise ConfigError("chain", self.to_string(), "bitmap without a sparsifier before it")

    @classmethod
    def parse(cls, text: str) -> ChainConfig:
        if not isinstance(text, str):
            raise ConfigError("chain", text, "a string such as 'topk:0.05|int8|zlib'")
        parts = text.split("|")
        flat = parts[0].strip().lower() == FLAT
        if flat:
            parts = parts[1:]
            if any(part.strip().lower() == FLAT for part in parts):
                raise ConfigError("chain", text, "'flat' at most once, first")
        if not parts or (len(parts) == 1 and parts[0].strip().lower() in ("", RAW, "none")):
            return cls((), flat=flat)
        return cls(tuple(_parse_stage(part) for part in parts), flat=flat)

    def to_string(self) -> str:
        text = "|".join(cfg.to_string() for cfg in self.stages)
        if self.flat:
            return f"{FLAT}|{text}" if text else FLAT
        return text or RAW

    def for_tensor(self, dtype: str, ndim: int) -> ChainConfig:
        """The stages this chain applies to a tensor of ``dtype`` with ``ndim`` dims, as the wire records them.

        Lossy stages apply to floating-point tensors only (``bitmap`` also to bool);
        a sparsifier's ratio travels as float32; a quantizer's axis is normalised to
        ``0..ndim-1`` and dropped for tensors of < 2 dims and after a sparsifier.
        ``parsed.chain == chain.for_tensor(parsed.dtype, len(parsed.shape)).to_string()``
        checks that a received tensor was encoded with this chain.
        """
        if dtype not in DTYPES:
            raise ConfigError("dtype", dtype, "one of " + ", ".join(DTYPES))
        is_float = dtype in FLOAT_DTYPES
        sparse = is_float and any(REGISTRY[c.codec_id].kind is Kind.SPARSIFY for c in self.stages)
        out: list[CodecConfig] = []
        for cfg in self.stages:
            codec = REGISTRY[cfg.codec_id](cfg)
            if isinstance(codec, Sparsifier):
                if is_float:
                    assert isinstance(cfg, TopKConfig)  # randk's config is a TopKConfig too
                    out.append(dataclasses.replace(cfg, ratio=wire_ratio(cfg.ratio)))
            elif isinstance(codec, ValueCodec):
                if is_float or (dtype == "bool" and codec.accepts_bool):
                    if isinstance(cfg, QuantConfig):
                        axis = None if sparse else codec.group_axis(ndim)
                        cfg = dataclasses.replace(cfg, axis=axis)
                    out.append(cfg)
            else:
                out.append(cfg)
        return ChainConfig(tuple(out))

    def __str__(self) -> str:
        return self.to_string()

    def to_dict(self) -> dict[str, Any]:
        return {"chain": [cfg.to_dict() for cfg in self.stages], **({"flat": True} if self.flat else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainConfig:
        if not isinstance(data, Mapping) or not {"chain"} <= set(data) <= {"chain", "flat"} \
                or not isinstance(data["chain"], list) or not isinstance(data.get("flat", False), bool):
            raise ConfigError("chain", data, "a mapping {'chain': [stage, ...]}, optionally with 'flat': true")
        stages: list[CodecConfig] = []
        for item in data["chain"]:
            codec_id = item.get("codec") if isinstance(item, Mapping) else None
            if not isinstance(codec_id, str) or codec_id not in REGISTRY:
                raise ConfigError("codec", codec_id, REGISTRY.allowed())
            stages.append(REGISTRY[codec_id].config_cls.from_dict(item))
        return cls(tuple(stages), flat=bool(data.get("flat", False)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChainConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError("chain", text[:80], "a JSON object {'chain': [...]}") from None
        return cls.from_dict(data)


def _buffer(arr: np.ndarray) -> memoryview:
    """A flat byte view of a contiguous array (no copy)."""
    flat: Any = np.ascontiguousarray(arr).reshape(-1)
    return memoryview(flat).cast("B")


def _raw_bytes(t: torch.Tensor, dtype: str) -> memoryview:
    """The little-endian bytes of ``t`` in its own dtype (bool as 0/1 bytes, bfloat16 as its 16 bits)."""
    t = t.contiguous()
    if dtype == "bfloat16":
        return _buffer(t.view(torch.int16).numpy().astype("<i2", copy=False))
    if dtype == "bool":
        return _buffer(t.numpy().view(np.uint8))
    return _buffer(t.numpy().astype(DTYPES[dtype][0], copy=False))


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in ``t`` (:func:`~.wire.all_finite`, the decoder's check, on its numpy view)."""
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        return bool(torch.isfinite(t).all())
    return all_finite(t.numpy())


def _grouped(x: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    """Flat float32 ``x`` as (G, N): one row (``axis`` None) or channels of ``axis`` first."""
    if axis is None:
        return x.reshape(1, -1)  # (1, n)
    per = math.prod(shape) // shape[axis] if shape[axis] else 0
    return np.moveaxis(x.reshape(shape), axis, 0).reshape(shape[axis], per)  # (C, N)


class Chain:
    """An instantiated chain of codecs; thread-compatible, stateless between calls."""

    def __init__(self, config: ChainConfig | str) -> None:
        self.config = ChainConfig.parse(config) if isinstance(config, str) else config
        if not isinstance(self.config, ChainConfig):
            raise ConfigError("chain", config, "a ChainConfig or a chain string")
        self.sparsifier: Sparsifier | None = None
        self.value: ValueCodec | None = None
        self.entropy: EntropyCodec | None = None
        for cfg in self.config.stages:
            codec: Codec = REGISTRY[cfg.codec_id](cfg)
            if isinstance(codec, Sparsifier):
                self.sparsifier = codec
            elif isinstance(codec, ValueCodec):
                self.value = codec
            elif isinstance(codec, EntropyCodec):
                self.entropy = codec

    @classmethod
    def parse(cls, text: str) -> Chain:
        return cls(ChainConfig.parse(text))

    def __repr__(self) -> str:
        return f"Chain({self.config.to_string()!r})"

    @property
    def lossy(self) -> bool:
        """Whether decode(encode(x)) may differ from x (for floating-point x)."""
        return self.sparsifier is not None or (self.value is not None and self.value.codec_id != "bitmap")

    def encode(
        self, name: str, tensor: torch.Tensor, *, rng: np.random.Generator | None = None
    ) -> EncodedTensor:
        """Encode one tensor; ``rng`` drives random-k and stochastic rounding."""
        if not isinstance(tensor, torch.Tensor):
            raise EncodeError(name, f"expected a torch.Tensor, got {type(tensor).__name__}")
        t = tensor.detach().cpu()
        dtype = TORCH_TO_NAME.get(t.dtype)
        if dtype is None:
            raise EncodeError(name, f"unsupported dtype {t.dtype}")
        # top-k keeps the largest magnitude, NaN and infinity included: checking the kept values suffices
        check_kept = dtype == "float32" and self.sparsifier is not None and self.sparsifier.keeps_largest
        if dtype in FLOAT_DTYPES and not check_kept and not _all_finite(t):
            raise EncodeError(name, "non-finite values")
        shape = tuple(int(d) for d in t.shape)
        if self.entropy is None and not self._transforms(dtype):  # sent as it is: a header made once
            parts: list[bytes | memoryview] = [_raw_bytes(t, dtype)]
            header: pb.CompressedTensor | bytes = plain_header(name, shape, dtype)
            raw_nbytes = len(parts[0])
            return EncodedTensor(name, shape, dtype, (), serialize_tensor(header, parts, raw_nbytes), raw_nbytes)
        ct = pb.CompressedTensor(name=name, shape=shape, dtype=dtype)
        rng = np.random.default_rng() if rng is None else rng
        parts = self._payload(ct, name, t, dtype, rng, check_kept)  # [index section,] value section
        raw_nbytes = sum(len(part) for part in parts)
        if self.entropy is not None:
            compressed, estage = self.entropy.compress(parts)
            ct.stages.append(estage)
            parts = [compressed]
        itemsize = np.dtype(DTYPES[dtype][0]).itemsize
        return EncodedTensor(
            name=name,
            shape=shape,
            dtype=dtype,
            codecs=tuple(s.codec for s in ct.stages),
            data=serialize_tensor(ct, parts, raw_nbytes),
            raw_nbytes=t.numel() * itemsize,
        )

    def _transforms(self, dtype: str) -> bool:
        """Whether the sparsifier or the value codec applies to a tensor of ``dtype`` (see :meth:`_payload`)."""
        is_float = dtype in FLOAT_DTYPES
        value = self.value
        return (value is not None and (is_float or (dtype == "bool" and value.accepts_bool))) or \
            (self.sparsifier is not None and is_float)

    def _payload(
        self,
        ct: pb.CompressedTensor,
        name: str,
        t: torch.Tensor,
        dtype: str,
        rng: np.random.Generator,
        check_kept: bool = False,
    ) -> list[bytes | memoryview]:
        """Apply the sparsifier and value codec (recording their stages in ``ct``); the payload's parts.

        ``check_kept``: raise EncodeError if a value the sparsifier keeps is not finite (the
        tensor's finiteness check when the sparsifier keeps the largest magnitude)."""
        is_float = dtype in FLOAT_DTYPES
        value = self.value
        use_value = value is not None and (is_float or (dtype == "bool" and value.accepts_bool))
        if not self._transforms(dtype):
            return [_raw_bytes(t, dtype)]
        x = t.to(torch.float32).contiguous().numpy().reshape(-1)  # (n,)
        parts: list[bytes | memoryview] = []
        idx = values = None
        if self.sparsifier is not None and is_float:
            idx, values = self.sparsifier.select_values(x, rng)  # values: x[idx]
            if check_kept and not all_finite(values):
                raise EncodeError(name, "non-finite values")
            ct.stages.append(self.sparsifier.stage())
            index_bytes, encoding, rice_bits = self._encode_indices(idx, x.size, rice=self.config.flat)
            ct.sparse.CopyFrom(pb.SparseIndex(encoding=encoding, count=idx.size, nbytes=len(index_bytes),
                                              rice_bits=rice_bits))
            parts.append(index_bytes)
        if value is None or not use_value:
            assert idx is not None and values is not None
            if dtype == "float32":  # the values as they are
                parts.append(_buffer(values.astype("<f4", copy=False)))
            else:  # x is the float32 copy of another dtype: take the values from the tensor itself
                parts.append(_raw_bytes(t.reshape(-1)[torch.from_numpy(idx)], dtype))
            return parts
        shape = tuple(ct.shape)
        axis = None if idx is not None else value.group_axis(len(shape))
        grouped = values.reshape(1, -1) if values is not None else _grouped(x, shape, axis)  # (G, N)
        try:
            value_bytes, stage = value.encode(grouped, rng, axis)
        except ValueError as exc:
            raise EncodeError(name, str(exc)) from None
        ct.stages.append(stage)
        parts.append(value_bytes)
        return parts

    @staticmethod
    def _encode_indices(idx: np.ndarray, n: int, *, rice: bool) -> tuple[bytes, pb.IndexEncoding, int]:
        """The shortest index section (ties: varint, then bitmap), its encoding and Rice parameter.

        A Rice code is tried only for a ``flat`` chain's vector: on the per-tensor chains the profiles ship
        (ending in zstd) it made encoding slower and, after zstd, the output no smaller (simulations/results/
        codecs.md before and after, docs/design.md#flat-updates)."""
        varint, bitmap = bitops.varint_encode(idx), bitops.packed_nbytes(n, 1)
        if rice:
            b, size = bitops.rice_choice(idx)
            if size < min(len(varint), bitmap):
                return bitops.rice_encode(idx, b), pb.INDEX_ENCODING_RICE, b
        if len(varint) <= bitmap:
            return varint, pb.INDEX_ENCODING_DELTA_VARINT, 0
        return bitops.bitmap_from_indices(idx, n), pb.INDEX_ENCODING_BITMAP, 0

    def roundtrip(
        self,
        name: str,
        tensor: torch.Tensor,
        *,
        rng: np.random.Generator | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> tuple[EncodedTensor, torch.Tensor]:
        """Encode, then decode what would arrive (what error feedback needs)."""
        enc = self.encode(name, tensor, rng=rng)
        return enc, decode_tensor(enc.data, name=name, limits=limits)
