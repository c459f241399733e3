"""Fake quantization of weights for quantization-aware local training (straight-through estimator).

A reversible reparametrisation, in the style of :mod:`torch.nn.utils.prune`::

    fake_quantize_(model, bits)            # register on every Conv*d / Linear weight; bits=32: no-op
    remove_fake_quant(model, bake=True)    # bake=True: keep the quantized weights as plain parameters
                                           # bake=False: restore the full-precision (shadow) weights
    is_fake_quantized(model) -> bool
    quantize_weight(w, bits) -> Tensor     # the maths, as a pure function

Quantizer: symmetric, per output channel (dim 0), ``k = bits`` bits::

    qmax  = 2**(k-1) - 1                          # 127 for int8, 7 for int4, 1 for 2 bits
    s_c   = max_j |w_cj| / qmax                   # one scale per output channel
    q(w)  = clamp(round(w / s_c), -qmax, qmax) * s_c
    |q(w) - w| <= s_c / 2                         # the quantization bound

The forward pass sees ``q(w)``; the backward pass treats ``q`` as the identity
(straight-through estimator: ``w + (q(w) - w).detach()``), so gradients reach the
full-precision shadow weights the optimizer updates. Registered with
:func:`torch.nn.utils.parametrize.register_parametrization`.

Composition with pruning (:mod:`fedshrink.compression.pruning`): apply the
masks *first*, then call :func:`fake_quantize_`. On a pruned module the
parametrization wraps ``weight_orig``, so the forward weight is
``q(weight_orig) * weight_mask``: masked weights are exactly zero in every
forward, through any optimizer step. (Pruning a fake-quantized module is not
supported: ``torch.nn.utils.prune`` needs a plain parameter.) Remove in the
reverse order: :func:`remove_fake_quant`, then ``remove_pruning``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from fedshrink.errors import ConfigError

OFF = 32
QUANTIZABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_bits(bits: int) -> int:
    """``bits`` if it is 2..8 or 32 (off), else :class:`ConfigError`."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not (2 <= bits <= 8 or bits == OFF):
        raise ConfigError("weight-bits", bits, f"an integer in 2..8, or {OFF} (off)")
    return bits


def channel_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale ``max|w_c| / qmax``, shaped ``(C_out, 1, ...)`` to broadcast against ``w``."""
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)  # (C_out,)
    scale: torch.Tensor = (amax / qmax).reshape(-1, *([1] * (w.dim() - 1)))
    return scale


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``q(w)``: symmetric per-output-channel ``bits``-bit quantization (no gradient trick)."""
    check_bits(bits)
    if bits == OFF or w.dim() == 0 or w.numel() == 0:
        return w
    qmax = 2 ** (bits - 1) - 1
    scale = channel_scale(w, bits)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero channels stay zero
    return torch.clamp(torch.round(w / safe), -qmax, qmax) * scale


class FakeQuant(nn.Module):
    """Parametrization ``w -> w + (q(w) - w).detach()`` (forward: q(w); backward: identity)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = check_bits(bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (quantize_weight(w, self.bits) - w).detach()

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _target(module: nn.Module) -> str:
    """``weight_orig`` on a pruned module (so the mask applies after quantization), else ``weight``."""
    return "weight_orig" if hasattr(module, "weight_mask") and hasattr(module, "weight_orig") else "weight"


def _fake_quants(module: nn.Module) -> list[FakeQuant]:
    name = _target(module)
    if not parametrize.is_parametrized(module, name):
        return []
    plist = module.parametrizations[name]  # type: ignore[index]  # a ModuleDict once parametrized; typed loosely
    return [p for p in plist if isinstance(p, FakeQuant)]


def _key(mod_name: str) -> str:
    return f"{mod_name}.weight" if mod_name else "weight"


def fake_quantize_(model: nn.Module, bits: int, *, types: tuple[type[nn.Module], ...] = QUANTIZABLE) -> list[str]:
    """Register fake-quant on the weight of every module of ``types``; return their ``<module>.weight`` keys.

    ``bits == 32`` is off: nothing is registered and ``[]`` is returned. On an
    already fake-quantized module the bit width is replaced.
    """
    check_bits(bits)
    if bits == OFF:
        return []
    done: list[str] = []
    for mod_name, module in model.named_modules():
        if not isinstance(module, types):
            continue
        existing = _fake_quants(module)
        if existing:
            for p in existing:
                p.bits = bits
        else:
            parametrize.register_parametrization(module, _target(module), FakeQuant(bits))
        done.append(_key(mod_name))
    return done


def is_fake_quantized(model: nn.Module) -> bool:
    return any(_fake_quants(m) for m in model.modules())


def remove_fake_quant(model: nn.Module, *, bake: bool = True) -> list[str]:
    """Remove every fake-quant parametrization; return the ``<module>.weight`` keys touched.

    ``bake=True`` leaves the quantized values as the plain parameter (for a
    model deployed at that precision); ``bake=False`` restores the
    full-precision shadow weights (what a client's update is taken from, so the
    quantization error is not sent as if it were learning). On a pruned module the result is again
    ``weight_orig`` (+ mask), ready for ``remove_pruning``.
    """
    done: list[str] = []
    for mod_name, module in model.named_modules():
        if not _fake_quants(module):
            continue
        name = _target(module)
        if len(module.parametrizations[name]) != 1:
            raise ConfigError("fake-quant", f"{mod_name}.{name}", "a weight whose only parametrization is FakeQuant")
        parametrize.remove_parametrizations(module, name, leave_parametrized=bake)
        done.append(_key(mod_name))
    return done
