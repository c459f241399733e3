"""Width scaling of sub-models (the "scaler" of HeteroFL, Diao et al., 2021).

A layer of a sub-model at width ``w`` sums over ``k_sub`` of the full model's
``k_full`` inputs. Its pre-activations are therefore about ``k_sub / k_full``
of the full model's, and a narrow client that trains its fragment alone learns
weights that are too large for the full model, where the other inputs add
theirs. Multiplying each layer's input by ``k_full / k_sub`` makes the
sub-model's sums estimate the full model's, so what a narrow client learns is
what the full model needs (HeteroFL section 3.2; there it is applied in
training, here in training and evaluation, so a sub-model is the same function
wherever it runs).

The scaling is a forward pre-hook on every ``Conv2d`` / ``Linear`` whose input
is narrower than its counterpart in the full model; counterparts are paired by
position in module order, which is the same for every width of a registered
model. Weights are untouched, so a scaled sub-model loads and exports the same
state dict as an unscaled one; :func:`fold_input_scaling` bakes the factors
into the weights (for export) and removes the hooks.

Public API::

    input_scales(sub, full) -> dict[str, float]          # module name -> k_full / k_sub (only != 1)
    scale_inputs_(sub, scales) -> nn.Module              # adds the hooks, in place
    is_input_scaled(module) -> bool
    fold_input_scaling(sub) -> nn.Module                 # weights *= factor, hooks removed
    build_sub_model(spec, width, scaled=True) -> nn.Module  # build_model(spec.at_width(width)), scaled
"""

from __future__ import annotations

import torch
from torch import nn

from fedshrink.models import ModelSpec, build_model

_LAYERS = (nn.Conv2d, nn.Linear)
_ATTR = "_fedshrink_input_scale"


def _fan_in(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return int(module.in_channels)
    assert isinstance(module, nn.Linear)
    return int(module.in_features)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _LAYERS)]


def input_scales(sub: nn.Module, full: nn.Module) -> dict[str, float]:
    """``k_full / k_sub`` for every Conv2d / Linear of ``sub`` whose input is narrower than ``full``'s.

    Raises ``ValueError`` when the two models do not have the same layers in the same order
    (i.e. are not two widths of one architecture) or a sub layer is wider than its counterpart.
    """
    sub_layers, full_layers = _layers(sub), _layers(full)
    if len(sub_layers) != len(full_layers):
        raise ValueError(f"sub-model has {len(sub_layers)} Conv2d/Linear layers, the full model {len(full_layers)}")
    scales: dict[str, float] = {}
    for (name, s), (_, f) in zip(sub_layers, full_layers, strict=True):
        if type(s) is not type(f):
            raise ValueError(f"layer {name!r} is a {type(s).__name__} in the sub-model, a {type(f).__name__} in full")
        k_sub, k_full = _fan_in(s), _fan_in(f)
        if k_sub > k_full:
            raise ValueError(f"layer {name!r} takes {k_sub} inputs in the sub-model, more than the full {k_full}")
        if k_sub < k_full:
            scales[name] = k_full / k_sub
    return scales


def _pre_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    factor: float = getattr(module, _ATTR)
    return (args[0] * factor, *args[1:])


def scale_inputs_(sub: nn.Module, scales: dict[str, float]) -> nn.Module:
    """Multiply the input of each named layer by its factor (a forward pre-hook); in place, idempotent."""
    modules = dict(sub.named_modules())
    for name, factor in scales.items():
        if name not in modules or not isinstance(modules[name], _LAYERS):
            raise ValueError(f"{name!r} is not a Conv2d or Linear layer of the sub-model")
        if not factor > 0:
            raise ValueError(f"input scale of {name!r} must be > 0, got {factor}")
        module = modules[name]
        if hasattr(module, _ATTR):
            module.__dict__["_fedshrink_scale_handle"].remove()
        setattr(module, _ATTR, float(factor))
        module.__dict__["_fedshrink_scale_handle"] = module.register_forward_pre_hook(_pre_hook)
    return sub


def is_input_scaled(module: nn.Module) -> bool:
    return any(hasattr(m, _ATTR) for m in module.modules())


@torch.no_grad()
def fold_input_scaling(sub: nn.Module) -> nn.Module:
    """Bake every input factor into its layer's weight (bias unchanged) and remove the hooks; in place."""
    for module in sub.modules():
        if hasattr(module, _ATTR):
            factor = getattr(module, _ATTR)
            weight = module.weight
            assert isinstance(weight, torch.Tensor)
            weight.mul_(factor)  # W (x * s) + b == (W s) x + b
            module.__dict__.pop("_fedshrink_scale_handle").remove()
            delattr(module, _ATTR)
    return sub


def build_sub_model(spec: ModelSpec, width: float, *, scaled: bool = True) -> nn.Module:
    """A freshly initialised sub-model of ``spec`` at ``width``, with input scaling unless ``scaled`` is false."""
    sub = build_model(spec.at_width(width))
    if scaled and width != spec.width:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            full = build_model(spec)
        scale_inputs_(sub, input_scales(sub, full))
    return sub
