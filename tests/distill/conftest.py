"""Tiny models and data for the distill tests (8x8 single-channel images, 10 classes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedshrink.data import LabelledArrays
from fedshrink.models import ModelSpec, build_model

SHAPE = (1, 8, 8)


@pytest.fixture
def teacher_spec() -> ModelSpec:
    return ModelSpec("cnn", SHAPE, 10, 0.5)


@pytest.fixture
def teacher(teacher_spec: ModelSpec) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(teacher_spec).eval()


@pytest.fixture
def proxy_x() -> np.ndarray:
    return np.random.default_rng(0).random((24, *SHAPE), dtype=np.float32)


@pytest.fixture
def test_set() -> LabelledArrays:
    rng = np.random.default_rng(1)
    return LabelledArrays(rng.random((40, *SHAPE), dtype=np.float32), rng.integers(0, 10, 40).astype(np.int64))
