"""The client's private step: clip the update it holds, add its noise share, encode within the bound.

::

    private = private_uplink(update, chain, privacy, masks=masks, residuals=store, rng=rng, noise_rng=noise_rng,
                             fragment=digest, round=rnd)
    private.record        # the encoded update, what the reply carries
    private.within        # adaptive clipping only: 1 if the update fitted the bound (plus noise in distributed mode)

For a round with bound ``C`` (:class:`ClientPrivacy`, sent in the train instruction):

1. ``x = update + r`` on the coordinates the client holds, ``r`` its error-feedback
   residual (lossy chains only); pruned coordinates and integer tensors are 0
   (not held: the server does not count them);
2. ``c = x * min(1, C / ||x||_2)`` (the norm over every tensor together);
3. distributed mode: ``y = c + z``, ``z ~ N(0, s^2)`` on the held coordinates
   with ``s = z_delta C / sqrt(m)`` (the client's share); central mode: ``y = c``;
4. ``s_sent = decode(encode(y))``. In central mode the client checks what it
   actually sends: a sparsifier (top-k, rand-k) or the sign codec only shrinks
   the norm, but rounding (int8, q4, fp16) can enlarge it slightly; while
   ``||s_sent|| > C`` it scales ``y`` by ``C / ||s_sent||`` times a margin that
   grows each try, and after :data:`MAX_TRIES` it sends zeros. So
   ``||s_sent||_2 <= C`` for every chain, always;
5. the new residual is ``r' = (x + z) - s_sent`` on held coordinates: what
   clipping removed (``x - c``) plus what compression did not send of ``y``.
   It stays on the device and enters the next round's ``x`` *before* that
   round's clipping, so no round ever sends more than ``C``; the noise share
   ``z`` cancels from ``r'`` wherever ``y`` was sent exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedshrink.compression import Chain, ResidualStore, decode_record, encode_state
from fedshrink.errors import ConfigError
from fedshrink.privacy.clipping import clip_factor, l2_norm

WITHIN_METRIC = "dp-within"  # reply metric: 1 if the client's update fitted the bound (adaptive clipping)
MAX_TRIES = 8  # encodings tried before sending zeros
Update = Mapping[str, torch.Tensor]

_KEYS = {"clip": "dp-clip", "noise_std": "dp-noise-std", "count_noise_std": "dp-count-noise-std"}
_REPORT_KEY = "dp-report-within"


@dataclass(frozen=True)
class ClientPrivacy:
    """What the server asks of a client's private step in one round (carried by the train instruction)."""

    clip: float  # the L2 bound C of this round
    noise_std: float = 0.0  # distributed mode: std of the client's noise share per held coordinate
    count_noise_std: float = 0.0  # distributed mode with adaptive clipping: std of the noise on its within-bit
    report_within: bool = False  # adaptive clipping: reply with the bit 1[||x|| <= C] (nothing is sent otherwise)

    def __post_init__(self) -> None:
        if not isinstance(self.report_within, bool):
            raise ConfigError(f"train instruction {_REPORT_KEY}", self.report_within, "true or false")
        for name, key in _KEYS.items():
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (name == "clip" and value == 0):
                raise ConfigError(f"train instruction {key}", value,
                                  "a finite number > 0" if name == "clip" else "a finite number >= 0")
            object.__setattr__(self, name, float(value))

    def to_values(self) -> dict[str, float | bool]:
        return {**{key: getattr(self, name) for name, key in _KEYS.items()}, _REPORT_KEY: self.report_within}

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> ClientPrivacy | None:
        """Read what :meth:`to_values` wrote (None when the instruction has no private step)."""
        if _KEYS["clip"] not in values:
            return None
        fields = {name: values.get(key) for name, key in _KEYS.items()}
        return cls(**fields, report_within=values.get(_REPORT_KEY))  # type: ignore[arg-type]  # checked


@dataclass(frozen=True)
class PrivateUplink:
    """What the private step produced."""

    record: ArrayRecord  # the encoded update
    nbytes: int
    within: float | None  # 1.0 if ||x|| <= C else 0.0 (plus the count noise share); None unless report_within
    sent_norm: float  # ||decode(record)||_2: what the server receives
    tries: int  # encodings tried (0: zeros were sent)


def held_update(update: Update, masks: Mapping[str, torch.Tensor], residuals: ResidualStore | None
                ) -> dict[str, torch.Tensor]:
    """``x = update + residual`` in float32, 0 where pruned (``masks`` False) and on integer tensors."""
    out: dict[str, torch.Tensor] = {}
    for name, u in update.items():
        if not u.is_floating_point():
            out[name] = torch.zeros_like(u)
            continue
        x = residuals.compensate(name, u) if residuals is not None else u.detach().to(torch.float32).clone()
        mask = masks.get(name)
        out[name] = x * mask.to(x.dtype) if mask is not None else x
    return out


def noise_share(shapes: Update, std: float, masks: Mapping[str, torch.Tensor], rng: np.random.Generator
                ) -> dict[str, torch.Tensor]:
    """``N(0, std^2)`` per held float coordinate (0 where pruned and on integer tensors)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in shapes.items():
        if not t.is_floating_point() or std == 0:
            out[name] = torch.zeros_like(t)
            continue
        z = torch.from_numpy(rng.normal(0.0, std, size=tuple(t.shape)).astype(np.float32))
        mask = masks.get(name)
        out[name] = z * mask.to(z.dtype) if mask is not None else z
    return out


def encode_within(y: Update, chain: Chain, bound: float | None, *, rng: np.random.Generator, fragment: str,
                  round: int) -> tuple[ArrayRecord, int, dict[str, torch.Tensor], int]:
    """Encode ``y`` so that its decoded L2 norm is at most ``bound`` (None: no check); (record, bytes, sent, tries).

    Try ``k`` scales ``y`` by the product of ``C / ||s_sent||`` of the tries so far, times
    ``1 - 1e-6 * 8^k`` (a margin that covers float32, fp16 and bf16 rounding by
    the fifth try); after :data:`MAX_TRIES` tries it encodes zeros.
    """
    scale = 1.0
    for attempt in range(MAX_TRIES):
        cand = {k: v * scale if v.is_floating_point() else v for k, v in y.items()}
        record, nbytes = encode_state(cand, chain, fragment=fragment, round=round, direction="uplink", rng=rng)
        sent = decode_record(record)
        if bound is None:
            return record, nbytes, sent, attempt + 1
        norm = l2_norm(sent.values())
        if norm <= bound:
            return record, nbytes, sent, attempt + 1
        scale *= bound / norm * (1.0 - 1e-6 * 8.0 ** attempt)
    zeros = {k: torch.zeros_like(v) for k, v in y.items()}
    record, nbytes = encode_state(zeros, chain, fragment=fragment, round=round, direction="uplink", rng=rng)
    return record, nbytes, decode_record(record), 0


def private_uplink(update: Update, chain: Chain, privacy: ClientPrivacy, *, masks: Mapping[str, torch.Tensor],
                   residuals: ResidualStore | None, rng: np.random.Generator, noise_rng: np.random.Generator,
                   fragment: str = "", round: int = 0) -> PrivateUplink:
    """Clip, add the noise share, encode within the bound, keep the residual (see the module doc)."""
    x = held_update(update, masks, residuals)
    norm = l2_norm(x.values())
    factor = clip_factor(norm, privacy.clip)
    clipped = {k: v * factor if v.is_floating_point() else v for k, v in x.items()}
    z = noise_share(x, privacy.noise_std, masks, noise_rng)
    y = {k: clipped[k] + z[k] if v.is_floating_point() else v for k, v in clipped.items()}
    bound = privacy.clip if privacy.noise_std == 0 else None  # with a noise share, y is the Gaussian release
    record, nbytes, sent, tries = encode_within(y, chain, bound, rng=rng, fragment=fragment, round=round)
    if residuals is not None:  # r' = (x + z - sent) on held coordinates
        for name, v in x.items():
            if v.is_floating_point():
                mask = masks[name].to(v.dtype) if name in masks else torch.ones_like(v)
                residuals.update(name, (v + z[name]) * mask, sent[name].to(torch.float32) * mask)
    within = None
    if privacy.report_within:
        within = float(norm <= privacy.clip)
        if privacy.count_noise_std > 0:
            within += float(noise_rng.normal(0.0, privacy.count_noise_std))
    return PrivateUplink(record, nbytes, within, l2_norm(sent.values()), tries)
