"""Compute cost of a model: multiply-accumulates per sample and FLOPs of training.

MACs are counted by forward hooks on every ``nn.Conv2d`` and ``nn.Linear``
(the layers that hold nearly all the arithmetic of fedshrink's models) during
one forward pass::

    Conv2d: MACs/sample = C_out x H_out x W_out x (C_in / groups) x k_h x k_w
    Linear: MACs/sample = in_features x out_features x (positions per sample)

Biases, normalisation, activations and pooling are not counted (each is
O(activations), two to three orders below the convolutions).

Training FLOPs (floating-point operations, a count, not a rate)::

    FLOPs_train = 3 x 2 x MACs_per_sample x samples

* 2 FLOPs per MAC (one multiply, one add);
* x 3 for forward + backward, the backward pass costing about twice the
  forward (a gradient with respect to the inputs and one with respect to the
  weights, each about one forward): Kaplan et al., "Scaling Laws for Neural
  Language Models", 2020, sec. 2.1 (C ~ 6 N per token); Hobbhahn & Sevilla,
  "What's the backward-forward FLOP ratio for neural networks?", Epoch AI,
  2021 (ratio ~2:1);
* ``samples`` = every example processed in the round (examples x epochs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fedshrink.errors import ConfigError

FLOPS_PER_MAC = 2
TRAIN_TO_FORWARD = 3  # forward + backward ~ 3 x forward


def conv2d_macs(c_in: int, c_out: int, kernel: tuple[int, int], out_hw: tuple[int, int], groups: int = 1) -> int:
    """MACs per sample of one Conv2d layer (bias excluded)."""
    return c_out * out_hw[0] * out_hw[1] * (c_in // groups) * kernel[0] * kernel[1]


def linear_macs(in_features: int, out_features: int, positions: int = 1) -> int:
    """MACs per sample of one Linear layer applied at ``positions`` positions (bias excluded)."""
    return in_features * out_features * positions


def layer_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs per sample of every Conv2d / Linear in ``model``, by module path, for one input ``(C, H, W)``.

    Runs one forward pass of a zero batch of two samples (two, so static
    batch norm has batch statistics) without gradients, in eval mode; the
    model's training flag is restored afterwards.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise ConfigError("input-shape", input_shape, "positive sizes, e.g. (C, H, W)")
    counts: dict[str, int] = {}
    handles = []

    def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            batch = out.shape[0]
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                n = conv2d_macs(mod.in_channels, mod.out_channels, (kh, kw), (out.shape[2], out.shape[3]),
                                mod.groups)
            else:
                assert isinstance(mod, nn.Linear)
                positions = out.numel() // (batch * mod.out_features)
                n = linear_macs(mod.in_features, mod.out_features, positions)
            counts[name] = counts.get(name, 0) + n

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            handles.append(mod.register_forward_hook(hook_for(name)))
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        x = torch.zeros((2, *shape), dtype=param.dtype if param is not None else torch.float32,
                        device=param.device if param is not None else "cpu")
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return counts


_CACHE: dict[tuple[str, tuple[int, ...]], int] = {}
_CACHE_SIZE = 64


def macs_per_sample(model: nn.Module, input_shape: Sequence[int], *, cache: bool = True) -> int:
    """Total MACs of one forward pass of one sample (Conv2d + Linear layers).

    With ``cache`` the count is kept per (module tree ``repr``, input shape), which
    names every layer's sizes, kernel, stride and padding: a client that trains the
    same architecture every round pays for the hooked forward pass once.
    """
    key = (repr(model), tuple(int(s) for s in input_shape))
    if cache and key in _CACHE:
        return _CACHE[key]
    n = sum(layer_macs(model, input_shape).values())
    if cache:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = n
    return n


def training_flops(macs: int, samples: int) -> int:
    """FLOPs of training on ``samples`` examples: 3 (fwd+bwd) x 2 (FLOPs/MAC) x MACs x samples."""
    if macs < 0 or samples < 0:
        raise ConfigError("training-flops", (macs, samples), "non-negative MACs and samples")
    return TRAIN_TO_FORWARD * FLOPS_PER_MAC * int(macs) * int(samples)
