from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshrink.distill.compress import (
    QuantConv2d,
    QuantLinear,
    activation_qparams,
    finalize_pruning,
    pack_int8,
    packed_nbytes_bound,
    prune_student,
    quantize_int8,
    quantize_weight_per_channel,
    sparsity,
    unpack_int8,
)
from fedshrink.errors import DistillError
from fedshrink.models import ModelSpec, build_model


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 20), st.floats(1e-3, 1e3), st.integers(0, 2**31 - 1))
def test_per_channel_error_within_half_step(c_out: int, fan_in: int, mag: float, seed: int) -> None:
    w = torch.from_numpy(np.random.default_rng(seed).normal(0, mag, (c_out, fan_in)).astype(np.float32))
    q, s = quantize_weight_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (c_out,) and int(q.abs().max()) <= 127
    err = (q.float() * s[:, None] - w).abs()
    assert bool((err <= s[:, None] / 2 + 1e-6 * mag).all())


def test_zero_channel_and_activation_zero_exact() -> None:
    q, s = quantize_weight_per_channel(torch.zeros(2, 3))
    assert int(q.abs().sum()) == 0 and torch.equal(s, torch.ones(2))
    scale, zp = activation_qparams(0.0, 2.55)
    assert zp == 0 and scale == pytest.approx(0.01)
    scale, zp = activation_qparams(-1.0, 1.0)
    assert round(-1.0 / scale) + zp == 0 and abs(zp * scale - 1.0) < scale


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_prune_quantize_pack_roundtrip(name: str) -> None:
    spec = ModelSpec(name, (1, 8, 8), 10, 0.25)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    prune_student(model, 0.5)
    finalize_pruning(model)
    assert sparsity(model) == pytest.approx(0.5, abs=0.01)
    x = torch.rand(16, 1, 8, 8)
    qmodel = quantize_int8(model, x)
    assert all(not isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in qmodel.modules())
    assert any(isinstance(m, QuantConv2d | QuantLinear) for m in qmodel.modules())
    data = pack_int8(qmodel)
    assert len(data) <= packed_nbytes_bound(spec, 0.5)
    back = unpack_int8(data)
    with torch.no_grad():
        assert torch.equal(back(x), qmodel(x))
        # int8 stays close to fp32 on the calibration images
        assert float((qmodel(x) - model(x)).abs().max()) < 0.1 * float(model(x).abs().max()) + 1e-3


def test_packed_size_is_the_formula() -> None:
    spec = ModelSpec("mlp", (1, 8, 8), 10, 0.25)  # Linear 64->64, 64->32, 32->10, no other params
    torch.manual_seed(0)
    model = build_model(spec).eval()
    qmodel = quantize_int8(model, torch.rand(4, 1, 8, 8))
    header = len(spec.to_json().encode())
    layers = [(64 * 64, 64), (64 * 32, 32), (32 * 10, 10)]
    nnz = sum(int((m.weight_q != 0).sum()) for m in qmodel.modules() if isinstance(m, QuantLinear))
    want = 8 + header + sum(5 + -(-n // 8) + 8 * c for n, c in layers) + nnz
    assert len(pack_int8(qmodel)) == want


def test_malformed_files_refused() -> None:
    spec = ModelSpec("mlp", (1, 8, 8), 10, 0.1)
    qmodel = quantize_int8(build_model(spec).eval(), torch.rand(4, 1, 8, 8))
    data = pack_int8(qmodel)
    with pytest.raises(DistillError, match="magic"):
        unpack_int8(b"XXXX" + data[4:])
    with pytest.raises(DistillError, match="truncated"):
        unpack_int8(data[:-3])
    with pytest.raises(DistillError, match="trailing"):
        unpack_int8(data + b"\0")
    with pytest.raises(DistillError, match="empty"):
        quantize_int8(build_model(spec), torch.rand(0, 1, 8, 8))
