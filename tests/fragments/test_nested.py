"""Self-distillation across widths: prefixes computed from the client's own weights, gradients where they belong."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fragment_helpers import MODEL_NAMES, SHAPE, model_spec

from fedshrink.compression.pruning import prune_model
from fedshrink.errors import ConfigError
from fedshrink.fragments import build_graph, extract, make_policy
from fedshrink.fragments.nested import NestedConfig, NestedDistiller, nested_widths
from fedshrink.fragments.scaler import build_sub_model


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, *SHAPE, generator=g), torch.randint(0, 10, (6,), generator=g)  # (B, C, H, W), (B,)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_nested_loss_equals_the_explicit_prefix_model(name: str) -> None:
    spec = model_spec(name)
    torch.manual_seed(0)
    local = build_sub_model(spec, 0.5)
    x, y = _batch()
    logits = local(x)
    distiller = NestedDistiller(spec, 0.5, NestedConfig((0.25,), temperature=2.0, weight=1.0))
    assert distiller.widths == [0.25]
    got = distiller.loss(local, x, y, logits)

    # the same prefix built by hand: static fragment of the local model, loaded into a width-0.25 sub-model
    graph = build_graph(build_sub_model(spec, 0.5, scaled=False))
    prefix = make_policy("static").spec_for(graph, 0.5, 0, 0)  # half of width 0.5 = width 0.25
    sub = build_sub_model(spec, 0.25)
    sub.load_state_dict(extract(local.state_dict(), graph, prefix))
    out = sub(x)
    teacher = F.softmax(logits.detach() / 2.0, dim=1)
    want = F.cross_entropy(out, y) + F.kl_div(F.log_softmax(out / 2.0, dim=1), teacher, reduction="batchmean") * 4.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gradients_reach_only_the_prefix() -> None:
    spec = model_spec("cnn")
    torch.manual_seed(1)
    local = build_sub_model(spec, 1.0)
    x, y = _batch(1)
    distiller = NestedDistiller(spec, 1.0, NestedConfig((0.5,)))
    loss = distiller.loss(local, x, y, local(x))
    loss.backward()
    conv = local.features[0]  # 32 output channels at width 1, 16 in the prefix
    assert conv.weight.grad is not None
    assert conv.weight.grad[:16].abs().sum() > 0
    assert torch.all(conv.weight.grad[16:] == 0)


def test_pruned_weights_stay_zero_in_the_prefix() -> None:
    spec = model_spec("mlp")
    torch.manual_seed(2)
    local = build_sub_model(spec, 1.0)
    prune_model(local, "magnitude", 0.5)
    x, y = _batch(2)
    logits = local(x)  # the forward pre-hooks compute the masked weights
    distiller = NestedDistiller(spec, 1.0, NestedConfig((0.5,)))
    distiller.loss(local, x, y, logits).backward()
    layer = local.net[1]
    grad = layer.weight_orig.grad
    assert grad is not None and torch.all(grad[layer.weight_mask == 0] == 0)


def test_no_narrower_width_means_no_loss() -> None:
    spec = model_spec("mlp")
    local = build_sub_model(spec, 0.25)
    x, y = _batch()
    distiller = NestedDistiller(spec, 0.25, NestedConfig((0.25, 0.5)))
    assert distiller.widths == []
    assert float(distiller.loss(local, x, y, local(x))) == 0.0
    assert nested_widths([0.25, 0.5, 1.0, 0.5], 0.75) == (0.25, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"widths": (0.0,)}, "nested-widths"), ({"widths": (1.0,)}, "nested-widths"),
     ({"widths": (0.5,), "temperature": 0.0}, "nested-temperature"),
     ({"widths": (0.5,), "weight": -1.0}, "nested-weight")],
)
def test_bad_config_names_the_setting(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        NestedConfig(**kwargs)
