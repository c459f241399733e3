"""Server-side evaluation of the global model and of every width in use."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedshrink.data import Splits
from fedshrink.fragments import LayerGraph
from fedshrink.fragments.fusion import prefix_sub_model
from fedshrink.models import ModelSpec, freeze_batch_stats
from fedshrink.training import evaluate


def for_evaluation(model: torch.nn.Module, splits: Splits) -> torch.nn.Module:
    """``model`` with static batch statistics frozen on the proxy inputs, so no test batch normalises itself."""
    return freeze_batch_stats(model, torch.from_numpy(splits.proxy.x[:512]))


def evaluate_widths(model: torch.nn.Module, graph: LayerGraph, spec: ModelSpec, widths: Sequence[float],
                    splits: Splits, *, scaled: bool) -> dict[str, float]:
    """Test accuracy of the sub-model of every width in use below 1 (its static, prefix fragment)."""
    out: dict[str, float] = {}
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for width in widths:
        if width >= 1.0:
            continue
        sub_model = prefix_sub_model(state, graph, spec, width, scaled=scaled)
        out[f"{width:g}"] = evaluate(for_evaluation(sub_model, splits), splits.test).accuracy
    return out
