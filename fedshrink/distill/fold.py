"""Fold a student's static BatchNorm into the layers that feed it, for the edge.

A student distilled from a static-BatchNorm teacher trains with static BatchNorm too
(``track_running_stats=False``: batch statistics, as its teacher trained). For deployment
its statistics are frozen on the inputs it was distilled on (the transfer set: augmented,
partly mixed proxy images, :func:`freeze_on`), so each BatchNorm becomes an affine map per
channel, ``y = gamma (x - mean) / sqrt(var + eps) + beta``, and that map is folded into the
convolution or linear layer whose output it normalises (:func:`fold_batch_norm`):
``W' = W * s`` per output channel and ``b' = (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. The result is the same architecture with norm ``none``:
nothing is normalised at run time, nothing is stored for it, pruned weights stay zero,
and it computes what the frozen model computes (checked on the freezing inputs).

Why freeze on the transfer set rather than on the plain proxy images: those are the
statistics the student learned under; the plain images' statistics differ from those of
augmented, mixed batches, and the layers after each norm were fitted to the former.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
from torch import nn

from fedshrink.errors import DistillError
from fedshrink.models import ModelSpec, build_model, freeze_batch_stats

FREEZE_INPUTS = 4096  # transfer images whose statistics the folded student keeps (an even stride over the set)


def freeze_on(model: nn.Module, x: torch.Tensor, limit: int = FREEZE_INPUTS) -> nn.Module:
    """An eval-mode copy of ``model`` whose static BatchNorm layers keep the statistics of ``x``
    (at most ``limit`` of its rows, taken at an even stride so every part of the set counts)."""
    step = max(1, len(x) // limit)
    return freeze_batch_stats(model, x[::step][:limit])


def deployed_spec(spec: ModelSpec) -> ModelSpec:
    """The spec of what a student of ``spec`` becomes for the edge: static BatchNorm is folded away."""
    return dataclasses.replace(spec, norm="none") if spec.norm == "batch" else spec


def _feeding_layers(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """For each BatchNorm of ``model``, the name of the Conv2d / Linear called just before it."""
    names = {id(m): n for n, m in model.named_modules()}
    calls: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_pre_hook(lambda mod, _args: calls.append(mod)) for m in leaves]
    try:
        with torch.no_grad():
            model(x[:2])
    finally:
        for h in hooks:
            h.remove()
    pairs: dict[str, str] = {}
    for before, m in itertools.pairwise(calls):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not isinstance(before, nn.Conv2d | nn.Linear) or _out_features(before) != m.num_features:
                raise DistillError(f"cannot fold {names[id(m)]}: the layer before it is {type(before).__name__}, "
                                   f"not a Conv2d or Linear with {m.num_features} outputs")
            pairs[names[id(m)]] = names[id(before)]
    return pairs


def _out_features(layer: nn.Conv2d | nn.Linear) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


@torch.no_grad()
def fold_batch_norm(model: nn.Module, spec: ModelSpec, x: torch.Tensor) -> tuple[nn.Module, ModelSpec]:
    """``model`` (static BatchNorm, ``spec``) frozen on ``x`` and folded: an eval-mode model of
    :func:`deployed_spec` computing the same function. Raises :class:`DistillError` if it does not."""
    frozen = freeze_on(model, x)
    new_spec = deployed_spec(spec)
    folded = build_model(new_spec)
    target = dict(folded.named_modules())
    state = {k: v for k, v in frozen.state_dict().items() if k in folded.state_dict()}
    missing = set(folded.state_dict()) - set(state)
    for bn_name, layer_name in _feeding_layers(frozen, x).items():
        if target[layer_name].bias is None:
            raise DistillError(f"cannot fold {bn_name}: {layer_name} has no bias in the norm-free model")
        bn = frozen.get_submodule(bn_name)
        layer = frozen.get_submodule(layer_name)
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm) and isinstance(layer, nn.Conv2d | nn.Linear)
        assert bn.running_var is not None and bn.running_mean is not None
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = layer.weight * s.reshape(-1, *([1] * (layer.weight.dim() - 1)))
        b = layer.bias if layer.bias is not None else torch.zeros_like(s)
        state[f"{layer_name}.weight"] = w
        state[f"{layer_name}.bias"] = (b - bn.running_mean) * s + bn.bias
        missing.discard(f"{layer_name}.bias")
    if missing:
        raise DistillError(f"folding left {sorted(missing)} of the norm-free model unset")
    folded.load_state_dict(state)
    folded.eval()
    check = x[:: max(1, len(x) // 256)][:256]
    want, got = frozen(check), folded(check)
    err = float((want - got).abs().max())
    if not err <= 1e-4 * max(1.0, float(want.abs().max())):
        raise DistillError(f"the folded student differs from the frozen one by {err:.3g} on the freezing inputs")
    return folded, new_spec
