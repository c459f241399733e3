from __future__ import annotations

from torch import nn

from fedshrink.distill.macs import count_macs
from fedshrink.models import ModelSpec, build_model


def test_conv_and_linear_formula() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    # 8*8*4*3*9 + 4*4*8*(4/2)*9 + 128*5
    assert count_macs(model, (3, 8, 8)) == 6912 + 2304 + 640


def test_default_teacher_by_hand() -> None:
    # conv 1->32 on 8x8, 32->64 on 4x4, 64->128 on 2x2 (3x3 kernels), then 128x128 and 128x10
    want = 8 * 8 * 32 * 9 + 4 * 4 * 64 * 32 * 9 + 2 * 2 * 128 * 64 * 9 + 128 * 128 + 128 * 10
    assert count_macs(build_model(ModelSpec("cnn", (1, 8, 8), 10)), (1, 8, 8)) == want == 625_920


def test_hooks_removed_and_mode_kept() -> None:
    model = build_model(ModelSpec("mlp", (1, 8, 8), 10, 0.25)).train()
    assert count_macs(model, (1, 8, 8)) == 64 * 64 + 64 * 32 + 32 * 10
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
