"""Models: table-driven over the registry, every input size and width."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedshrink.errors import ConfigError
from fedshrink.models import MODELS, ModelSpec, build_model, channels, count_parameters, layer_widths

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
WIDTHS = [1.0, 0.5, 0.25]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_forward_shape(name: str, shape: tuple[int, int, int], norm: str) -> None:
    for width in WIDTHS:
        model = build_model(ModelSpec(name, shape, 10, width, norm))
        out = model(torch.randn(3, *shape))  # (B, K)
        assert out.shape == (3, 10)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_widths_scale_every_hidden_layer(name: str) -> None:
    full = layer_widths(build_model(ModelSpec(name, (1, 8, 8), 10, 1.0)))
    half = layer_widths(build_model(ModelSpec(name, (1, 8, 8), 10, 0.5)))
    assert full.keys() == half.keys()
    *hidden, last = full  # the classifier keeps num_classes outputs
    assert full[last] == half[last] == 10
    for layer in hidden:
        assert half[layer] == channels(full[layer], 0.5), layer


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameters_grow_with_width(name: str) -> None:
    counts = [count_parameters(build_model(ModelSpec(name, (1, 8, 8), 10, w))) for w in (0.25, 0.5, 1.0)]
    assert counts == sorted(counts) and counts[0] < counts[-1]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_init_is_seeded(name: str) -> None:
    spec = ModelSpec(name, (1, 8, 8), 10)
    torch.manual_seed(0)
    a = build_model(spec).state_dict()
    torch.manual_seed(0)
    b = build_model(spec).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_layers_are_plain_torch_modules(name: str) -> None:
    model = build_model(ModelSpec(name, (1, 8, 8), 10))
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and len(layers) == len(layer_widths(model))
    assert model.spec == ModelSpec(name, (1, 8, 8), 10)


def test_spec_json_round_trip() -> None:
    spec = ModelSpec("resnet", (3, 32, 32), 10, 0.5, "batch")
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert spec.at_width(0.25).width == 0.25


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"name": "vgg"}, "model"),
        ({"width": 0.0}, "model-width"),
        ({"width": 5.0}, "model-width"),
        ({"norm": "instance"}, "model-norm"),
        ({"num_classes": 1}, "num-classes"),
    ],
)
def test_bad_spec(kwargs: dict[str, object], key: str) -> None:
    base: dict[str, object] = {"name": "cnn", "input_shape": (1, 8, 8), "num_classes": 10}
    with pytest.raises(ConfigError) as info:
        ModelSpec(**{**base, **kwargs})  # type: ignore[arg-type]
    assert info.value.key == key


def test_channels_rounding() -> None:
    assert channels(32, 1.0) == 32
    assert channels(32, 0.5) == 16
    assert channels(10, 0.25) == 3  # ceil
    assert channels(4, 0.01) == 1


def test_freeze_batch_stats_classifies_one_sample_as_in_its_calibration_batch() -> None:
    from fedshrink.models import freeze_batch_stats

    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", (1, 8, 8), 10, norm="batch"))
    x = torch.randn(32, 1, 8, 8)  # (N, C, H, W)
    with torch.no_grad():
        batch_stats = model.train()(x)  # static BN: statistics of x itself
        frozen = freeze_batch_stats(model, x)
        assert not frozen.training
        torch.testing.assert_close(frozen(x), batch_stats, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(frozen(x[3:4]), frozen(x)[3:4])  # a sample alone: same logits
        assert not all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    layer = build_model(ModelSpec("cnn", (1, 8, 8), 10, norm="layer"))
    with torch.no_grad():
        torch.testing.assert_close(freeze_batch_stats(layer, x)(x), layer.eval()(x))
    with pytest.raises(ValueError, match="at least 2"):
        freeze_batch_stats(model, x[:1])
