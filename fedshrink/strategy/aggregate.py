"""Aggregation maths as pure functions over ``name -> ndarray`` mappings.

No Flower types here: the Strategy validates replies, converts them to arrays
and calls these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

State = Mapping[str, np.ndarray]


def weighted_mean(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-key weighted mean ``sum_i w_i s_i / sum_i w_i``.

    Accumulates in float64 and casts back to each tensor's dtype (integer
    tensors are rounded). Every state must hold the same keys and shapes; the
    caller validates replies first, so a mismatch here is a bug.
    """
    if not states:
        raise ValueError("weighted_mean needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {weights}")
    w = w / w.sum()
    out: dict[str, np.ndarray] = {}
    for key, ref in states[0].items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for wi, state in zip(w, states, strict=True):
            arr = state[key]
            assert arr.shape == ref.shape, (key, arr.shape, ref.shape)
            acc += wi * arr
        if np.issubdtype(ref.dtype, np.integer):
            acc = np.rint(acc)
        out[key] = acc.astype(ref.dtype)
    return out


def weighted_metric_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    w = np.asarray(weights, dtype=np.float64)
    return float(np.dot(np.asarray(values, dtype=np.float64), w) / w.sum())
