"""Local training loop: masked cross-entropy and extra losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedshrink.config import RunConfig
from fedshrink.data import LabelledArrays
from fedshrink.errors import ConfigError
from fedshrink.training import TrainSettings, train_local


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 2, 2) -> (B, 5)
        return self.fc(x.flatten(1))


def _data(labels: list[int]) -> LabelledArrays:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(labels), 1, 2, 2)).astype(np.float32)
    return LabelledArrays(x, np.asarray(labels, dtype=np.int64))


def test_masked_ce_leaves_absent_classes_alone() -> None:
    data = _data([0, 1, 0, 1, 0, 1, 0, 1])  # classes 2..4 absent
    torch.manual_seed(0)
    plain, masked = Tiny(), Tiny()
    masked.load_state_dict(plain.state_dict())
    before = plain.fc.weight.detach().clone()
    train_local(plain, data, TrainSettings(epochs=2, batch_size=4), seed=1)
    train_local(masked, data, TrainSettings(epochs=2, batch_size=4, loss="masked-ce"), seed=1)
    # plain CE pushes the absent classes' logits down; masked CE never touches their rows
    assert not torch.equal(plain.fc.weight[2:], before[2:])
    assert torch.equal(masked.fc.weight[2:], before[2:])
    assert not torch.equal(masked.fc.weight[:2], before[:2])


def test_extra_loss_is_added_to_every_step() -> None:
    data = _data([0, 1, 2, 3])
    calls: list[int] = []

    def extra(model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return logits.pow(2).mean()

    result = train_local(Tiny(), data, TrainSettings(epochs=3, batch_size=2), seed=0, extra_loss=extra)
    assert calls == [2] * 6 and result.steps == 6


def test_loss_setting_travels_and_is_checked() -> None:
    settings = RunConfig.from_mapping({"local-loss": "masked-ce"}).training
    assert settings.loss == "masked-ce"
    assert TrainSettings.from_values(settings.to_values()) == settings
    with pytest.raises(ConfigError, match="local-loss"):
        TrainSettings(loss="focal")
    with pytest.raises(ConfigError, match="local-loss"):
        TrainSettings.from_values({**settings.to_values(), "local-loss": 3})
    with pytest.raises(ConfigError, match="local-loss"):
        RunConfig.from_mapping({"local-loss": "hinge"})
