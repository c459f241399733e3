"""Input scaling of sub-models: factors from fan-in, hooks that fold into weights, every registered model."""

from __future__ import annotations

import pytest
import torch
from fragment_helpers import MODEL_NAMES, SHAPE, model_spec

from fedshrink.fragments.scaler import (
    build_sub_model,
    fold_input_scaling,
    input_scales,
    is_input_scaled,
    scale_inputs_,
)
from fedshrink.models import build_model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_full_width_has_no_scales(name: str) -> None:
    spec = model_spec(name)
    assert input_scales(build_model(spec), build_model(spec)) == {}
    assert not is_input_scaled(build_sub_model(spec, 1.0))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_scales_are_full_over_kept_fan_in(name: str) -> None:
    spec = model_spec(name)
    sub, full = build_model(spec.at_width(0.5)), build_model(spec)
    scales = input_scales(sub, full)
    assert scales  # every model has layers fed by sliced channels
    subs, fulls = dict(sub.named_modules()), dict(full.named_modules())
    for layer, factor in scales.items():
        s, f = subs[layer], fulls[layer]
        k_sub = s.in_channels if isinstance(s, torch.nn.Conv2d) else s.in_features
        k_full = f.in_channels if isinstance(f, torch.nn.Conv2d) else f.in_features
        assert factor == pytest.approx(k_full / k_sub) and factor > 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fold_keeps_outputs_and_removes_hooks(name: str) -> None:
    torch.manual_seed(0)
    sub = build_sub_model(model_spec(name), 0.25)
    assert is_input_scaled(sub)
    x = torch.randn(4, *SHAPE)  # (B, C, H, W)
    sub.eval()
    with torch.no_grad():
        before = sub(x)
    fold_input_scaling(sub)
    assert not is_input_scaled(sub)
    with torch.no_grad():
        after = sub(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_scaling_changes_the_function_by_the_factor() -> None:
    spec = model_spec("mlp")
    torch.manual_seed(0)
    plain = build_sub_model(spec, 0.5, scaled=False)
    scaled = build_sub_model(spec, 0.5, scaled=False)
    scaled.load_state_dict(plain.state_dict())
    scale_inputs_(scaled, {"net.5": 2.0})  # only the output layer
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        hidden = plain.net[:5](x)
        expected = plain.net[5](2.0 * hidden)
        torch.testing.assert_close(scaled(x), expected)
    scale_inputs_(scaled, {"net.5": 2.0})  # idempotent: one hook per layer
    with torch.no_grad():
        torch.testing.assert_close(scaled(x), expected)


def test_state_dict_is_unchanged_by_scaling() -> None:
    spec = model_spec("cnn")
    torch.manual_seed(1)
    plain = build_sub_model(spec, 0.5, scaled=False)
    torch.manual_seed(1)
    scaled = build_sub_model(spec, 0.5)
    assert plain.state_dict().keys() == scaled.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, scaled.state_dict()[k])


def test_bad_pairs_and_factors_raise() -> None:
    mlp, cnn = build_model(model_spec("mlp")), build_model(model_spec("cnn"))
    with pytest.raises(ValueError, match="layers"):
        input_scales(mlp, cnn)
    with pytest.raises(ValueError, match="more than the full"):
        input_scales(build_model(model_spec("mlp")), build_model(model_spec("mlp", width=0.5)))
    with pytest.raises(ValueError, match="not a Conv2d or Linear"):
        scale_inputs_(mlp, {"net.0": 2.0})
    with pytest.raises(ValueError, match="must be > 0"):
        scale_inputs_(mlp, {"net.3": 0.0})
