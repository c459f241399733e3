"""Fake quantization with a straight-through estimator, alone and with pruning masks."""

from __future__ import annotations

import pytest
import torch
from fragment_helpers import MODEL_NAMES, seeded_model
from torch import nn

from fedshrink.compression import pruning
from fedshrink.errors import ConfigError
from fedshrink.fakequant import (
    channel_scale,
    fake_quantize_,
    is_fake_quantized,
    quantize_weight,
    remove_fake_quant,
)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))


def test_off_is_a_noop() -> None:
    model = _net()
    x = torch.randn(4, 2, 4, 4)
    before = model(x)
    assert fake_quantize_(model, 32) == []
    assert not is_fake_quantized(model) and torch.equal(model(x), before)
    assert torch.equal(quantize_weight(model[0].weight, 32), model[0].weight)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, True])
def test_bad_bits(bits: int) -> None:
    with pytest.raises(ConfigError, match="weight-bits"):
        fake_quantize_(_net(), bits)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantization_bound_and_levels(bits: int) -> None:
    torch.manual_seed(bits)
    w = torch.randn(5, 3, 3, 3)
    w[2] = 0.0  # an all-zero channel stays zero
    q = quantize_weight(w, bits)
    scale = channel_scale(w, bits)  # (5, 1, 1, 1)
    assert torch.all((q - w).abs() <= scale / 2 + 1e-6)
    assert torch.all(q[2] == 0)
    for c in range(5):
        assert q[c].unique().numel() <= 2**bits - 1


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_forward_uses_quantized_weights_and_ste_gradients(bits: int) -> None:
    model = _net()
    x = torch.randn(4, 2, 4, 4)
    ref = _net()
    with torch.no_grad():
        for m in (ref[0], ref[3]):
            m.weight.copy_(quantize_weight(m.weight, bits))
    assert fake_quantize_(model, bits) == ["0.weight", "3.weight"]
    out = model(x)
    torch.testing.assert_close(out, ref(x))
    out.square().sum().backward()
    ref(x).square().sum().backward()
    shadow = model[0].parametrizations.weight.original
    assert shadow.grad is not None and shadow.grad.abs().sum() > 0
    torch.testing.assert_close(shadow.grad, ref[0].weight.grad)  # straight through: dL/dq passed to w


def test_remove_bakes_or_restores() -> None:
    model = _net()
    original = model[0].weight.detach().clone()
    fake_quantize_(model, 4)
    assert remove_fake_quant(model, bake=True) == ["0.weight", "3.weight"]
    assert not is_fake_quantized(model) and isinstance(model[0].weight, nn.Parameter)
    assert torch.equal(model[0].weight, quantize_weight(original, 4))
    model = _net()
    fake_quantize_(model, 4)
    remove_fake_quant(model, bake=False)
    assert torch.equal(model[0].weight, original)
    assert sorted(model.state_dict()) == sorted(_net().state_dict())  # order may change; keys do not


def test_composes_with_pruning_masks() -> None:
    model = _net()
    pruning.prune_model(model, "magnitude", 0.5)
    masks = pruning.get_masks(model)
    fake_quantize_(model, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    x = torch.randn(8, 2, 4, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model(x)  # the pruning hook recomputes ``weight`` from the stepped ``weight_orig`` in forward
    for key, mask in masks.items():
        w = model.get_submodule(key.rsplit(".", 1)[0]).weight
        assert torch.all(w[~mask] == 0), key
        q = quantize_weight(model.get_submodule(key.rsplit(".", 1)[0]).parametrizations.weight_orig.original, 4)
        torch.testing.assert_close(w, q * mask)
    remove_fake_quant(model)
    pruning.remove_pruning(model)
    assert sorted(model.state_dict()) == sorted(_net().state_dict())  # order may change; keys do not
    for key, mask in masks.items():
        assert torch.all(model.state_dict()[key][~mask] == 0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_registry_models_train_fake_quantized(name: str) -> None:
    model = seeded_model(name)
    keys = fake_quantize_(model, 8)
    assert len(keys) == sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    out = model(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
