"""MACs by forward hooks against hand counts; the training-FLOPs formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec, build_model
from fedshrink.resources import layer_macs, macs_per_sample, training_flops
from fedshrink.resources.flops import conv2d_macs, linear_macs


def test_cnn_macs_match_hand_count() -> None:
    model = build_model(ModelSpec("cnn", (1, 8, 8), 10))
    # Conv3x3 (padding 1) keeps H x W; MaxPool2 halves it after every stage: 8 -> 4 -> 2 -> 1.
    # MACs/sample of a conv = C_out x H_out x W_out x C_in x 3 x 3.
    conv1 = 32 * 8 * 8 * 1 * 9  # 18_432
    conv2 = 64 * 4 * 4 * 32 * 9  # 294_912
    conv3 = 128 * 2 * 2 * 64 * 9  # 294_912
    fc1 = 128 * 128  # global average pool -> 128 features -> Linear(128, 128)
    fc2 = 128 * 10
    assert layer_macs(model, (1, 8, 8)) == {
        "features.0": conv1, "features.4": conv2, "features.8": conv3, "head.1": fc1, "head.3": fc2,
    }
    assert macs_per_sample(model, (1, 8, 8)) == 625_920 == conv1 + conv2 + conv3 + fc1 + fc2


def test_cnn_macs_scale_with_width() -> None:
    half = build_model(ModelSpec("cnn", (1, 8, 8), 10, width=0.5))
    expected = 16 * 64 * 1 * 9 + 32 * 16 * 16 * 9 + 64 * 4 * 32 * 9 + 64 * 64 + 64 * 10
    assert macs_per_sample(half, (1, 8, 8)) == expected


def test_mlp_and_resnet() -> None:
    mlp = build_model(ModelSpec("mlp", (1, 8, 8), 10))
    assert macs_per_sample(mlp, (1, 8, 8)) == 64 * 256 + 256 * 128 + 128 * 10
    resnet = build_model(ModelSpec("resnet", (3, 8, 8), 10, norm="batch"))
    counts = layer_macs(resnet, (3, 8, 8))
    assert "blocks.1.shortcut.0" in counts  # 1x1 shortcut convs are counted too
    assert counts["blocks.1.shortcut.0"] == conv2d_macs(16, 32, (1, 1), (4, 4))
    assert counts["fc"] == linear_macs(64, 10)


def test_linear_counts_every_position_and_groups() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(2), nn.Linear(36, 5))
    # conv: 8 x 6 x 6 x (4/2) x 3 x 3; linear applied at 8 positions (one per channel)
    assert macs_per_sample(model, (4, 8, 8)) == 8 * 36 * 2 * 9 + 36 * 5 * 8


def test_counting_leaves_the_model_as_it_was() -> None:
    model = build_model(ModelSpec("cnn", (1, 8, 8), 10, norm="batch"))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    macs_per_sample(model, (1, 8, 8))
    assert model.training
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_flops_formula() -> None:
    # 3 (forward + backward) x 2 (FLOPs per MAC) x MACs x samples
    assert training_flops(625_920, 100) == 3 * 2 * 625_920 * 100
    assert training_flops(0, 5) == 0
    with pytest.raises(ConfigError):
        training_flops(-1, 5)
    with pytest.raises(ConfigError):
        macs_per_sample(nn.Linear(2, 2), ())
