"""Slicing a state by a FragmentSpec, and scattering a fragment back into the full shapes.

Both walk the same per-tensor index sets (:func:`tensor_indices`): for each
dim that follows a channel group with block ``b``, the kept channels ``c``
expand to the entries ``c*b .. c*b+b-1``; other dims are taken whole.

* :func:`extract` -- ``full[ix]``: the sub-state a client trains. With prefix
  indices of size ``channels(base, w)`` (static HeteroFL) it holds exactly the
  tensors of ``build_model(model_spec.at_width(w))``.
* :func:`scatter` -- ``full[ix] = sub``: full-size values and boolean ``held`` masks.

Folding the fragments of a round back together is aggregation's job
(:mod:`fedshrink.strategy.contributions` and :mod:`fedshrink.strategy.stages`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedshrink.errors import ReplyError
from fedshrink.fragments.graph import LayerGraph, TensorRule
from fedshrink.fragments.spec import FragmentSpec

T = TypeVar("T", np.ndarray, torch.Tensor)
Array = np.ndarray | torch.Tensor
BoolArray = npt.NDArray[np.bool_]


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
    items: Mapping[str, T] = state.state_dict() if isinstance(state, nn.Module) else state
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
