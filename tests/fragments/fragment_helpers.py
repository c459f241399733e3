"""Shared helpers of the fragment tests: the registry table and tiny models."""

from __future__ import annotations

import torch
from torch import nn

from fedshrink.models import MODELS, ModelSpec, build_model

MODEL_NAMES = sorted(MODELS)
SHAPE = (3, 16, 16)


def model_spec(name: str, norm: str = "layer", width: float = 1.0) -> ModelSpec:
    return ModelSpec(name, SHAPE, 10, width, norm)


def seeded_model(name: str, norm: str = "layer", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(model_spec(name, norm))


def numpy_state(model: nn.Module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


class FlattenCNN(nn.Module):
    """Flattens a (16, 2, 2) map channel-major into a Linear: block 4 per channel."""

    def __init__(self, c: int = 8, d: int = 16, h: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, d, 3, padding=1)
        self.fc1 = nn.Linear(d * 2 * 2, h)
        self.fc2 = nn.Linear(h, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) -> (B, 5)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # (B, d, 2, 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class RunningBN(nn.Module):
    """A BatchNorm with running statistics (and an int64 num_batches_tracked buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class InputResidual(nn.Module):
    """``x + conv(x)``: the conv's group is tied to the input, so it is fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.hidden = nn.Conv2d(3, 7, 1)
        self.fc = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x + self.conv(x)
        return self.fc(torch.relu(self.hidden(z)).mean(dim=(2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.b = nn.Conv2d(1, 4, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.a(x), self.b(x)], dim=1).mean(dim=(2, 3)))


def fold(glob: dict, graph: object, contributions: list, *, pruned_as_zero: bool = False) -> dict:
    """The strategy's aggregation of trained fragments ``(sub_state, spec, weight, prune_masks)``: each becomes
    a contribution (update = trained - sent) and the round's batch goes through the default stages."""
    import numpy as np

    from fedshrink.fragments import extract
    from fedshrink.strategy.batch import Layout, UpdateBatch
    from fedshrink.strategy.contributions import contribution
    from fedshrink.strategy.stages import RoundContext, aggregate

    layout = Layout.of(glob)
    flat = layout.flatten(glob)
    rows = []
    for i, (sub, spec, weight, masks) in enumerate(contributions):
        sent = extract(glob, graph, spec)  # type: ignore[arg-type]
        update = {k: np.asarray(v, dtype=np.float64) - sent[k] for k, v in sub.items()}
        rows.append(contribution(node_id=i, partition_id=i, weight=weight, update=update, support={},
                                 prune_masks=masks, fragment=spec, layout=layout, graph=graph,  # type: ignore[arg-type]
                                 global_flat=flat, pruned_as_zero=pruned_as_zero))
    new, _ = aggregate(flat, UpdateBatch.of(rows, layout.size), [], RoundContext(1, glob, layout))
    return layout.unflatten(new)
