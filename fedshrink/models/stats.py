"""Read-only facts about a model: parameter counts and per-layer widths."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv2d / Linear layer, by module path, in forward order."""
    out: dict[str, int] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            out[name] = mod.out_channels
        elif isinstance(mod, nn.Linear):
            out[name] = mod.out_features
    return out
