"""Multiply-accumulate (MAC) counts of a model, measured with forward hooks.

Units: MACs per sample (batch 1), counted for ``nn.Conv2d`` and ``nn.Linear``
only, the layers that hold the multiplies; normalisation, activations, pooling
and additions are left out (they are O(activations), not O(weights x positions)).

Formulas (the usual convention, e.g. the FLOPs counters of "MobileNets",
Howard et al. 2017, Sec. 3.1, which count one multiply-add as one MAC):

* Conv2d: ``H_out * W_out * C_out * (C_in / groups) * k_h * k_w``
* Linear: ``out_features * in_features`` per input row (rows = every leading
  dimension of the input except the last, per sample)

Biases are not counted (an add, not a multiply-add).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv2d_macs(module: nn.Conv2d, out_shape: tuple[int, ...]) -> int:
    """MACs of one Conv2d call per sample; ``out_shape`` is ``(B, C_out, H_out, W_out)``."""
    _, c_out, h_out, w_out = out_shape
    k_h, k_w = module.kernel_size
    return int(h_out * w_out * c_out * (module.in_channels // module.groups) * k_h * k_w)


def linear_macs(module: nn.Linear, in_shape: tuple[int, ...]) -> int:
    """MACs of one Linear call per sample; ``in_shape`` is ``(B, ..., in_features)``."""
    rows = math.prod(in_shape[1:-1]) if len(in_shape) > 2 else 1
    return int(rows * module.in_features * module.out_features)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """MACs of one forward pass of one sample of shape ``(C, H, W)`` through ``model``."""
    total = 0

    def conv_hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Conv2d)
        total += conv2d_macs(mod, tuple(output.shape))

    def linear_hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Linear)
        total += linear_macs(mod, tuple(inputs[0].shape))

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((1, *input_shape)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
