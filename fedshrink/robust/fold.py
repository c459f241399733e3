"""Folding the round's client contributions into a new global model through robust stages.

Pure functions: a :class:`ClientContribution` is one client's update in the
global model's coordinates (full shapes) with its ``held`` masks; stages
(:class:`Transform`, :class:`Combiner`; see :mod:`.defences`) work on the
flattened :class:`~.rules.UpdateBatch` of the round's floating-point tensors::

    new_global, notes = robust_fold(global_state, contributions, stages, server_round)

Coordinates no (kept) client held keep their global value. Integer tensors
(e.g. BatchNorm's step counter) take the rounded sample-weighted mean over
holders, as plain aggregation does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedshrink.robust.rules import BoolArray, FloatArray, UpdateBatch, weighted_mean


@dataclass(frozen=True)
class ClientContribution:
    """One client's update of the round in global coordinates.

    ``update``: ``key -> array`` of the global tensor's shape (0 where not held);
    ``held``: ``key -> bool array`` of the same shape, or None when the client
    held every coordinate; ``weight``: its sample count.
    """

    client: int  # partition id (-1 when unknown)
    node_id: int
    update: Mapping[str, np.ndarray]
    held: Mapping[str, np.ndarray] | None
    weight: float

    def held_of(self, key: str) -> np.ndarray:
        if self.held is None or key not in self.held:
            return np.ones(np.shape(self.update[key]), dtype=bool)
        return np.asarray(self.held[key], dtype=bool)


@dataclass(frozen=True)
class RoundContext:
    """What a stage may read besides the batch: the round, the global model and its flattening."""

    server_round: int
    global_state: Mapping[str, np.ndarray]
    float_keys: tuple[str, ...]

    def flatten(self, state: Mapping[str, np.ndarray]) -> FloatArray:
        """``state``'s floating tensors as one float64 vector in the batch's coordinate order."""
        return np.concatenate([np.asarray(state[k], dtype=np.float64).reshape(-1) for k in self.float_keys]) \
            if self.float_keys else np.zeros(0)


class Stage(ABC):
    """One step of robust aggregation; :mod:`.defences` registers the concrete ones."""

    name: ClassVar[str]


class Transform(Stage):
    """Changes the batch (clip, select, reweight) before it is combined."""

    @abstractmethod
    def apply(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[UpdateBatch, dict[str, Any]]:
        """The new batch and notes for the round's record (JSON-ready)."""


class Combiner(Stage):
    """Turns the batch into one update per coordinate."""

    @abstractmethod
    def combine(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        """``(delta (D,), voted (D,))``."""


class WeightedMean(Combiner):
    """The default combiner: FedAvg over each coordinate's holders."""

    name = "mean"

    def combine(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        return weighted_mean(batch)


def float_keys(global_state: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    return tuple(k for k, v in global_state.items() if np.issubdtype(np.asarray(v).dtype, np.floating))


def to_batch(global_state: Mapping[str, np.ndarray], contributions: Sequence[ClientContribution]) -> UpdateBatch:
    """Stack the contributions' floating tensors, flattened in ``global_state``'s key order."""
    keys = float_keys(global_state)
    n = len(contributions)
    sizes = [int(np.asarray(global_state[k]).size) for k in keys]
    dim = int(sum(sizes))
    values = np.zeros((n, dim), dtype=np.float64)
    held = np.zeros((n, dim), dtype=bool)
    for i, c in enumerate(contributions):
        off = 0
        for k, size in zip(keys, sizes, strict=True):
            h = c.held_of(k).reshape(-1)
            values[i, off:off + size] = np.where(h, np.asarray(c.update[k], dtype=np.float64).reshape(-1), 0.0)
            held[i, off:off + size] = h
            off += size
    weights = np.asarray([float(c.weight) for c in contributions], dtype=np.float64)
    return UpdateBatch(values, held, weights, tuple(c.client for c in contributions))


def robust_fold(
    global_state: Mapping[str, np.ndarray],
    contributions: Sequence[ClientContribution],
    stages: Sequence[Stage],
    server_round: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """New global model: transforms in order, then the one combiner (default: weighted mean)."""
    combiners = [s for s in stages if isinstance(s, Combiner)]
    if len(combiners) > 1:
        raise ValueError(f"at most one combining rule, got {[s.name for s in combiners]}")
    ctx = RoundContext(server_round, global_state, float_keys(global_state))
    batch = to_batch(global_state, contributions)
    notes: dict[str, Any] = {}
    for stage in stages:
        if isinstance(stage, Transform):
            batch, note = stage.apply(batch, ctx)
            if note:
                notes[stage.name] = note
    combiner = combiners[0] if combiners else WeightedMean()
    delta, voted = combiner.combine(batch, ctx) if len(batch) else (np.zeros(0), np.zeros(0, dtype=bool))
    out: dict[str, np.ndarray] = {}
    off = 0
    for key, g in global_state.items():
        ref = np.asarray(g)
        if key in ctx.float_keys:
            size = ref.size
            d = delta[off:off + size].reshape(ref.shape) if delta.size else np.zeros(ref.shape)
            v = voted[off:off + size].reshape(ref.shape) if voted.size else np.zeros(ref.shape, dtype=bool)
            off += size
            out[key] = np.where(v, (ref.astype(np.float64) + d).astype(ref.dtype), ref)
        else:
            out[key] = _int_mean(ref, key, contributions)
    return out, notes


def _int_mean(ref: np.ndarray, key: str, contributions: Sequence[ClientContribution]) -> np.ndarray:
    num = np.zeros(ref.shape, dtype=np.float64)
    den = np.zeros(ref.shape, dtype=np.float64)
    for c in contributions:
        h = c.held_of(key)
        num += c.weight * h * (ref.astype(np.float64) + np.asarray(c.update[key], dtype=np.float64))
        den += c.weight * h
    mean = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.where(den > 0, np.rint(mean).astype(ref.dtype), ref)
