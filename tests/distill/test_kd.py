from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedshrink.distill.kd import (
    AugmentConfig,
    EnsembleTeacher,
    KDSettings,
    augment,
    build_transfer_set,
    distill,
    kd_loss,
    mixed_loss,
)
from fedshrink.errors import ConfigError, DistillError
from fedshrink.models import ModelSpec, build_model


def test_kd_loss_zero_iff_equal_and_scaled_by_t2() -> None:
    t = torch.randn(5, 10)
    assert float(kd_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 10)
    p_t = F.softmax(t / 2, 1)
    want = (p_t * (F.log_softmax(t / 2, 1) - F.log_softmax(s / 2, 1))).sum(1).mean() * 4
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(float(want), rel=1e-5)


def test_mixed_loss_ends() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    y = F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
    assert torch.allclose(mixed_loss(s, None, y, 4.0, 1.0), F.cross_entropy(s, y.argmax(1)))
    assert torch.allclose(mixed_loss(s, t, None, 4.0, 0.0), kd_loss(s, t, 4.0))


def test_augment_shape_range_and_seed() -> None:
    x = torch.rand(16, 1, 8, 8)
    a1, _ = augment(x, AugmentConfig(), torch.Generator().manual_seed(3), np.random.default_rng(3))
    a2, _ = augment(x, AugmentConfig(), torch.Generator().manual_seed(3), np.random.default_rng(3))
    assert a1.shape == x.shape and float(a1.min()) >= 0 and float(a1.max()) <= 1
    assert torch.equal(a1, a2) and not torch.equal(a1, x)
    off = AugmentConfig(0, 0, 0, 0, 0, 0)
    assert torch.equal(augment(x, off, torch.Generator(), np.random.default_rng())[0], x)


def test_augment_mixes_labels_with_images() -> None:
    x = torch.rand(8, 1, 8, 8)
    y = F.one_hot(torch.arange(8) % 3, 3).float()
    _, soft = augment(x, AugmentConfig(mixup_fraction=0.5), torch.Generator(), np.random.default_rng(0), y)
    assert soft is not None and soft.shape == (8, 3)
    assert torch.allclose(soft.sum(1), torch.ones(8))


def test_bad_settings_named() -> None:
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        KDSettings(temperature=0)
    with pytest.raises(ConfigError, match="mixup_fraction"):
        AugmentConfig(mixup_fraction=1.5)


def test_transfer_set_and_empty_proxy(teacher: torch.nn.Module) -> None:
    x = torch.rand(10, 1, 8, 8)
    ts = build_transfer_set(x, teacher, 35, AugmentConfig(), seed=0)
    assert len(ts) == 35 and ts.teacher_logits is not None and ts.teacher_logits.shape == (35, 10)
    assert torch.equal(ts.x[:10], x)  # the proxy images themselves come first
    with pytest.raises(DistillError, match="empty"):
        build_transfer_set(x[:0], teacher, 35, AugmentConfig(), seed=0)


def test_distill_moves_student_towards_teacher(teacher: torch.nn.Module) -> None:
    torch.manual_seed(1)
    student = build_model(ModelSpec("mlp", (1, 8, 8), 10, 0.25))
    x = torch.rand(32, 1, 8, 8)
    ts = build_transfer_set(x, teacher, 256, AugmentConfig(), seed=0)
    assert ts.teacher_logits is not None
    with torch.no_grad():
        before = float(kd_loss(student(ts.x), ts.teacher_logits, 4.0))
    distill(student, ts, KDSettings(steps=60, batch_size=64, learning_rate=1e-2), seed=0)
    with torch.no_grad():
        after = float(kd_loss(student(ts.x), ts.teacher_logits, 4.0))
    assert after < before


def test_distill_needs_labels_for_alpha(teacher: torch.nn.Module) -> None:
    ts = build_transfer_set(torch.rand(4, 1, 8, 8), teacher, 8, AugmentConfig(), seed=0)
    with pytest.raises(DistillError, match="labels"):
        distill(build_model(ModelSpec("mlp", (1, 8, 8), 10, 0.1)), ts, KDSettings(steps=1, alpha=0.5), seed=0)


def test_ensemble_is_mean_of_logits(teacher: torch.nn.Module) -> None:
    other = build_model(ModelSpec("mlp", (1, 8, 8), 10, 0.25)).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(EnsembleTeacher([teacher, other])(x), (teacher(x) + other(x)) / 2)
    with pytest.raises(DistillError):
        EnsembleTeacher([])
