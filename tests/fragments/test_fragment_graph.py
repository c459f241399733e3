"""The channel-dependency graph: traced generically, table-driven over the model registry."""

from __future__ import annotations

import pytest
import torch
from fragment_helpers import MODEL_NAMES, Concat, FlattenCNN, InputResidual, RunningBN, seeded_model
from torch import nn

from fedshrink.errors import ConfigError
from fedshrink.fragments import build_graph, canonical_key


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_graph_covers_every_tensor(name: str, norm: str) -> None:
    model = seeded_model(name, norm)
    graph = build_graph(model)
    state = model.state_dict()
    assert list(graph.tensors) == list(state)
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    classifier = layers[-1]
    assert graph.fixed == (classifier,)  # only the classifier's outputs are never sliced
    grouped = {p for g in graph.groups.values() for p in g.producers}
    assert grouped == set(layers[:-1])
    for key, rule in graph.tensors.items():
        assert rule.shape == tuple(state[key].shape)
        for d in rule.dims:
            assert rule.shape[d.dim] == graph.groups[d.group].size * d.block
    # model input channels: the first layer's input dim is never sliced
    first = graph.tensors[f"{layers[0]}.weight"]
    assert [d.dim for d in first.dims] == [0]
    # classifier: only its input dim is sliced, its num_classes outputs and bias never
    assert [d.dim for d in graph.tensors[f"{classifier}.weight"].dims] == [1]
    assert graph.tensors[f"{classifier}.bias"].dims == ()


def test_resnet_residual_groups_are_coupled() -> None:
    graph = build_graph(seeded_model("resnet"))
    by_producer = {p: g.name for g in graph.groups.values() for p in g.producers}
    # identity shortcut: the stem's output and block 0's conv2 are added
    assert by_producer["stem.0"] == by_producer["blocks.0.conv2"]
    # projection shortcuts: conv2 and the 1x1 shortcut conv of the same block are added
    for b in (1, 2):
        assert by_producer[f"blocks.{b}.conv2"] == by_producer[f"blocks.{b}.shortcut.0"]
        assert by_producer[f"blocks.{b}.conv1"] != by_producer[f"blocks.{b}.conv2"]
    # every tensor along a coupled group uses that one group
    g = by_producer["stem.0"]
    for key in ("stem.0.weight", "stem.1.weight", "blocks.0.conv2.weight", "blocks.0.norm2.bias"):
        assert graph.tensors[key].dims[0].group == g
    assert graph.tensors["blocks.1.conv1.weight"].dims[1].group == g
    assert graph.tensors["blocks.1.shortcut.0.weight"].dims[1].group == g


def test_channel_major_flatten_has_blocks() -> None:
    model = FlattenCNN()
    graph = build_graph(model, torch.zeros(2, 1, 8, 8))
    (rule,) = [d for d in graph.tensors["fc1.weight"].dims if d.dim == 1]
    assert (rule.group, rule.block) == ("conv2", 4)


def test_running_statistics_follow_the_group() -> None:
    graph = build_graph(RunningBN(), torch.zeros(2, 2, 5, 5))
    for key in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        assert [(d.dim, d.group) for d in graph.tensors[key].dims] == [(0, "conv")]
    assert graph.tensors["bn.num_batches_tracked"].dims == ()


def test_residual_with_the_input_is_fixed() -> None:
    graph = build_graph(InputResidual(), torch.zeros(2, 3, 4, 4))
    assert set(graph.groups) == {"hidden"}
    assert "conv" in graph.fixed and "fc" in graph.fixed
    assert graph.tensors["conv.weight"].dims == ()


def test_unsupported_ops_raise_config_error() -> None:
    with pytest.raises(ConfigError, match=r"fragments\.graph"):
        build_graph(Concat(), torch.zeros(2, 1, 4, 4))
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(ConfigError, match="groups=1"):
        build_graph(grouped, torch.zeros(2, 4, 5, 5))
    with pytest.raises(ConfigError, match="example_input"):
        build_graph(nn.Linear(3, 2))


@pytest.mark.parametrize(
    ("key", "canon"),
    [
        ("fc.weight", "fc.weight"),
        ("fc.weight_orig", "fc.weight"),
        ("fc.weight_mask", "fc.weight"),
        ("a.b.parametrizations.weight.original", "a.b.weight"),
        ("a.parametrizations.weight_orig.original", "a.weight"),
        ("bn.running_mean", "bn.running_mean"),
    ],
)
def test_canonical_key(key: str, canon: str) -> None:
    assert canonical_key(key) == canon
