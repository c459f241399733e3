"""Slicing a state by a FragmentSpec, scattering it back, and folding fragments together.

All three walk the same per-tensor index sets (:func:`tensor_indices`): for each
dim that follows a channel group with block ``b``, the kept channels ``c``
expand to the entries ``c*b .. c*b+b-1``; other dims are taken whole.

* :func:`extract` -- ``full[ix]``: the sub-state a client trains. With prefix
  indices of size ``channels(base, w)`` (static HeteroFL) it holds exactly the
  tensors of ``build_model(model_spec.at_width(w))``.
* :func:`scatter` -- ``full[ix] = sub``: full-size values and boolean ``held`` masks.
* :func:`aggregate_fragments` -- per coordinate, the sample-weighted mean over
  the clients whose fragment held it; coordinates nobody held keep the global
  value. Vectorised: one scatter-add per (client, tensor), no loop over elements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedshrink.errors import ReplyError
from fedshrink.fragments.graph import LayerGraph, TensorRule, canonical_key
from fedshrink.fragments.spec import FragmentSpec

T = TypeVar("T", np.ndarray, torch.Tensor)
Array = np.ndarray | torch.Tensor
BoolArray = npt.NDArray[np.bool_]


class Contribution(NamedTuple):
    """One client's fragment for :func:`aggregate_fragments` (a plain 4-tuple works too).

    ``sub_state``: trained values of the fragment (sub-shapes); ``weight``: its
    sample count; ``held``: optional ``key -> bool mask`` of sub-shape (e.g. the
    client's prune masks): False marks coordinates the client did not hold.
    """

    sub_state: Mapping[str, Array]
    spec: FragmentSpec
    weight: float
    held: Mapping[str, Array] | None = None


def tensor_indices(rule: TensorRule, spec: FragmentSpec) -> list[npt.NDArray[np.int64]]:
    """Kept entries of every dim of ``rule``'s tensor (``arange`` for dims taken whole)."""
    out = [np.arange(n, dtype=np.int64) for n in rule.shape]
    for d in rule.dims:
        kept = spec.kept[d.group]  # (k,)
        out[d.dim] = (kept[:, None] * d.block + np.arange(d.block)[None, :]).reshape(-1)  # (k*b,)
    return out


def sub_shapes(graph: LayerGraph, spec: FragmentSpec) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor of the fragment."""
    return {key: tuple(int(i.size) for i in tensor_indices(rule, spec)) for key, rule in graph.tensors.items()}


def _take(value: T, rule: TensorRule, spec: FragmentSpec) -> T:
    out = value
    for d in rule.dims:
        idx = tensor_indices(rule, spec)[d.dim]
        if isinstance(out, torch.Tensor):
            out = out.index_select(d.dim, torch.from_numpy(idx).to(out.device))
        else:
            out = np.take(out, idx, axis=d.dim)
    if not rule.dims:
        out = out.clone() if isinstance(out, torch.Tensor) else out.copy()
    return out


def extract(state: nn.Module | Mapping[str, T], graph: LayerGraph, spec: FragmentSpec) -> dict[str, T]:
    """The fragment of a full state (or model): every key, sliced along its group dims.

    Keys of the state that are reparametrised (``*_orig``, ``*_mask``,
    ``parametrizations.*.original``) are sliced like the parameter they stand for.
    Returns tensors of the input's kind (torch in, torch out; numpy in, numpy out).
    """
    spec.check(graph)
    items: Mapping[str, T] = state.state_dict() if isinstance(state, nn.Module) else state  # type: ignore[assignment]
    out: dict[str, T] = {}
    for key, value in items.items():
        rule = graph.rule_for(key)
        if tuple(value.shape) != rule.shape:
            raise ReplyError(f"tensor {key!r} has shape {tuple(value.shape)}, the graph says {rule.shape}")
        out[key] = _take(value, rule, spec)
    return out


def _numpy(value: Array) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _index(rule: TensorRule, spec: FragmentSpec, key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Open-mesh index of the fragment inside the full tensor; checks the sub-shape."""
    idx = tensor_indices(rule, spec)
    want = tuple(int(i.size) for i in idx)
    if shape != want:
        raise ReplyError(f"fragment tensor {key!r} has shape {shape}, the spec says {want}")
    return np.ix_(*idx) if idx else ()


def scatter(
    sub_state: Mapping[str, Array],
    graph: LayerGraph,
    spec: FragmentSpec,
    full_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, BoolArray]]:
    """Place a fragment into zeros of full shape: ``(values, held)``, both numpy, keyed like ``sub_state``."""
    spec.check(graph)
    values: dict[str, np.ndarray] = {}
    held: dict[str, BoolArray] = {}
    for key, sub in sub_state.items():
        rule = graph.rule_for(key)
        shape = tuple(full_shapes[key]) if full_shapes is not None else rule.shape
        arr = _numpy(sub)
        ix = _index(rule, spec, key, tuple(arr.shape))
        full = np.zeros(shape, dtype=arr.dtype)
        mask = np.zeros(shape, dtype=bool)
        full[ix] = arr
        mask[ix] = True
        values[key], held[key] = full, mask
    return values, held


def fold_reparametrised(
    sub_state: Mapping[str, Array], held: Mapping[str, Array] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, BoolArray]]:
    """Plain keys and held masks from a state that may still carry pruning reparametrisations.

    ``m.weight_orig`` with ``m.weight_mask`` becomes ``m.weight = orig * mask``
    with the mask as its held mask (combined with ``held`` where both exist);
    ``m.parametrizations.weight.original`` becomes ``m.weight``.
    """
    plain: dict[str, np.ndarray] = {}
    masks: dict[str, BoolArray] = {k: _numpy(v).astype(bool) for k, v in (held or {}).items()}
    for key, value in sub_state.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in sub_state:
            continue
        arr = _numpy(value)
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in sub_state:
            mask = _numpy(sub_state[key[: -len("_orig")] + "_mask"]).astype(bool)
            arr = arr * mask
            base = canonical_key(key)
            masks[base] = masks[base] & mask if base in masks else mask
            plain[base] = arr
            continue
        plain[canonical_key(key)] = arr
    return plain, masks


def aggregate_fragments(
    global_state: Mapping[str, Array],
    graph: LayerGraph,
    contributions: Sequence[Contribution | tuple[Mapping[str, Array], FragmentSpec, float, Mapping[str, Array] | None]],
    *,
    pruned_as_zero: bool = False,
) -> dict[str, np.ndarray]:
    """Overlap-aware weighted mean of fragments (HeteroFL / FedRolex / Federated Dropout).

    For every coordinate ``j`` of every tensor::

        new[j] = sum_i w_i h_ij x_ij / sum_i w_i h_ij    if some client held j
        new[j] = global[j]                                otherwise

    with ``w_i`` the client's weight, ``x_ij`` its value and ``h_ij`` 1 when its
    fragment held ``j`` and the client's ``held`` mask (prune mask) is not 0 there.
    With ``pruned_as_zero`` a pruned coordinate counts as held with value 0
    (the pruned model's literal weights). Accumulates in float64 and casts back
    to each global tensor's dtype (integer tensors are rounded), as
    :func:`fedshrink.strategy.aggregate.weighted_mean` does, which this equals
    when every client holds everything.

    Raises :class:`ReplyError` for a key the graph does not know or a fragment
    tensor whose shape is not the spec's; :class:`ValueError` for bad weights.
    """
    weights = np.asarray([float(c[2]) for c in contributions], dtype=np.float64)
    if weights.size and not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
        raise ValueError(f"weights must be finite and >= 0, got {weights.tolist()}")
    num = {k: np.zeros(tuple(v.shape), dtype=np.float64) for k, v in global_state.items()}
    den = {k: np.zeros(tuple(v.shape), dtype=np.float64) for k, v in global_state.items()}
    for sub_state, spec, weight, held in contributions:
        spec.check(graph)
        plain, masks = fold_reparametrised(sub_state, held)
        w = float(weight)
        for key, x in plain.items():
            if key not in num:
                raise ReplyError(f"fragment tensor {key!r} is not in the global state")
            ix = _index(graph.rule_for(key), spec, key, tuple(x.shape))
            x64 = x.astype(np.float64)
            h = masks.get(key)
            if h is not None and h.shape != x.shape:
                raise ReplyError(f"held mask of {key!r} has shape {h.shape}, the tensor {x.shape}")
            if h is None:
                num[key][ix] += w * x64
                den[key][ix] += w
            elif pruned_as_zero:
                num[key][ix] += w * np.where(h, x64, 0.0)
                den[key][ix] += w
            else:
                num[key][ix] += w * h * x64
                den[key][ix] += w * h
    out: dict[str, np.ndarray] = {}
    for key, g in global_state.items():
        ref = _numpy(g)
        d = den[key]
        held_any = d > 0
        mean = np.divide(num[key], d, out=np.zeros_like(d), where=held_any)
        if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
            mean = np.rint(mean)
        out[key] = np.where(held_any, mean.astype(ref.dtype), ref)
    return out
