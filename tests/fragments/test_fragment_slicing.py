"""extract / scatter, and folding fragments back through the strategy, over every registered model and policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fragment_helpers import MODEL_NAMES, FlattenCNN, RunningBN, fold, model_spec, numpy_state, seeded_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedshrink.errors import ReplyError
from fedshrink.fragments import (
    POLICIES,
    FragmentSpec,
    build_graph,
    extract,
    full_spec,
    make_policy,
    scatter,
    sub_shapes,
)
from fedshrink.models import build_model

WIDTHS = [1.0, 0.5, 0.25]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_extract_then_scatter_restores_exactly(name: str, policy: str) -> None:
    model = seeded_model(name, "layer")
    graph = build_graph(model)
    glob = numpy_state(model)
    for width in WIDTHS:
        spec = make_policy(policy).spec_for(graph, width, 3, "client-7")
        sub = extract(model, graph, spec)
        # the fragment loads into the width-w model of the registry (all policies keep channels(n, w))
        build_model(model_spec(name, "layer", width)).load_state_dict(sub)
        assert {k: tuple(v.shape) for k, v in sub.items()} == sub_shapes(graph, spec)
        values, held = scatter(sub, graph, spec)
        for key, ref in glob.items():
            assert np.array_equal(values[key][held[key]], ref[held[key]]), key
            assert held[key].sum() == sub[key].numel()
        # folding the untouched slice back gives the global state bit for bit
        new = fold(glob, graph, [(sub, spec, 5.0, None)])
        for key, ref in glob.items():
            assert new[key].dtype == ref.dtype and np.array_equal(new[key], ref), key


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_static_prefix_equals_registry_submodel(name: str) -> None:
    model = seeded_model(name, "layer")
    graph = build_graph(model)
    for width in WIDTHS:
        spec = make_policy("static").spec_for(graph, width, 1, 0)
        assert spec.is_prefix()
        sub = extract(model.state_dict(), graph, spec)
        ref = build_model(model_spec(name, "layer", width)).state_dict()
        assert list(sub) == list(ref)
        for key, t in ref.items():
            assert sub[key].shape == t.shape
            full = model.state_dict()[key]
            assert torch.equal(sub[key], full[tuple(slice(0, n) for n in t.shape)]), key


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_submodel_forward_equals_zeroed_full_model(name: str, norm: str, policy: str) -> None:
    """Without cross-channel normalisation, the fragment computes what the full model
    computes when every coordinate outside the fragment is zero."""
    model = seeded_model(name, norm)
    graph = build_graph(model)
    spec = make_policy(policy).spec_for(graph, 0.5, 4, 11)
    sub = extract(model, graph, spec)
    small = build_model(model_spec(name, norm, 0.5))
    small.load_state_dict(sub)
    values, _ = scatter(sub, graph, spec)
    zeroed = build_model(model_spec(name, norm))
    zeroed.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()})
    x = torch.randn(6, 3, 16, 16)
    torch.testing.assert_close(small(x), zeroed(x), rtol=1e-5, atol=1e-5)


def test_flatten_blocks_slice_consistently() -> None:
    torch.manual_seed(1)
    model = FlattenCNN()
    x = torch.randn(4, 1, 8, 8)
    graph = build_graph(model, x[:2])
    spec = make_policy("random", seed=3).spec_for(graph, 0.5, 1, 0)
    sub = extract(model, graph, spec)
    small = FlattenCNN(c=4, d=8, h=6)
    small.load_state_dict(sub)
    values, _ = scatter(sub, graph, spec)
    zeroed = FlattenCNN()
    zeroed.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()})
    torch.testing.assert_close(small(x), zeroed(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_full_width_equals_weighted_mean(name: str) -> None:
    model = seeded_model(name)
    graph = build_graph(model)
    rng = np.random.default_rng(0)
    glob = numpy_state(model)
    states = [{k: rng.normal(size=v.shape).astype(v.dtype) for k, v in glob.items()} for _ in range(3)]
    weights = [10.0, 3.0, 27.0]
    spec = make_policy("static").spec_for(graph, 1.0, 1, 0)
    assert spec == full_spec(graph)
    got = fold(glob, graph, [(s, spec, w, None) for s, w in zip(states, weights, strict=True)])
    for key in glob:
        want = sum(w * st[key].astype(np.float64) for st, w in zip(states, weights, strict=True)) / sum(weights)
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-6)


def test_overlaps_are_weighted_by_holders() -> None:
    """Two clients on a tiny MLP: coordinate by coordinate, by hand."""
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
    graph = build_graph(model, torch.zeros(2, 2))
    glob = {k: np.full(tuple(v.shape), 7.0, dtype=np.float32) for k, v in model.state_dict().items()}
    a = FragmentSpec({"0": np.array([0, 1])}, {"0": 4})
    b = FragmentSpec({"0": np.array([1, 2])}, {"0": 4})
    sub_a = {k: np.full(s, 1.0, dtype=np.float32) for k, s in sub_shapes(graph, a).items()}
    sub_b = {k: np.full(s, 4.0, dtype=np.float32) for k, s in sub_shapes(graph, b).items()}
    new = fold(glob, graph, [(sub_a, a, 1.0, None), (sub_b, b, 3.0, None)])
    np.testing.assert_allclose(new["0.bias"], [1.0, (1 * 1 + 3 * 4) / 4, 4.0, 7.0])
    np.testing.assert_allclose(new["2.weight"][:, 3], 7.0)  # input channel 3: held by nobody
    np.testing.assert_allclose(new["2.bias"], (1 * 1 + 3 * 4) / 4)  # classifier bias: held by both


def test_pruned_coordinates() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    graph = build_graph(model, torch.zeros(2, 3))
    glob = {k: np.full(tuple(v.shape), 5.0, dtype=np.float32) for k, v in model.state_dict().items()}
    spec = full_spec(graph)
    ones = {k: np.full(v.shape, 1.0, dtype=np.float32) for k, v in glob.items()}
    threes = {k: np.full(v.shape, 3.0, dtype=np.float32) for k, v in glob.items()}
    mask = np.ones((4, 3), dtype=bool)
    mask[0, :] = False  # client 1 pruned row 0 of layer 0
    contribs = [(ones, spec, 1.0, {"0.weight": mask}), (threes, spec, 1.0, None)]
    new = fold(glob, graph, contribs)
    np.testing.assert_allclose(new["0.weight"][0], 3.0)  # only client 2 held row 0
    np.testing.assert_allclose(new["0.weight"][1:], 2.0)
    zero = fold(glob, graph, contribs, pruned_as_zero=True)
    np.testing.assert_allclose(zero["0.weight"][0], 1.5)  # (0 + 3) / 2
    # a client that pruned a coordinate alone leaves it at the global value
    alone = fold(glob, graph, contribs[:1])
    np.testing.assert_allclose(alone["0.weight"][0], 5.0)


def test_integer_buffers_and_running_stats() -> None:
    model = RunningBN()
    model.train()
    model(torch.randn(4, 2, 5, 5))
    graph = build_graph(model, torch.zeros(2, 2, 5, 5))
    glob = numpy_state(model)
    spec = make_policy("rolling").spec_for(graph, 0.5, 2, 0)
    sub = extract(glob, graph, spec)
    assert sub["bn.running_mean"].shape == (3,) and sub["bn.num_batches_tracked"].shape == ()
    other = {k: v.copy() for k, v in sub.items()}
    other["bn.num_batches_tracked"] = np.array(4, dtype=np.int64)
    new = fold(glob, graph, [(sub, spec, 1.0, None), (other, spec, 2.0, None)])
    assert new["bn.num_batches_tracked"].dtype == np.int64 and int(new["bn.num_batches_tracked"]) == 3


def test_bad_fragments_raise_reply_error() -> None:
    model = seeded_model("mlp")
    graph = build_graph(model)
    glob = numpy_state(model)
    spec = make_policy("static").spec_for(graph, 0.5, 1, 0)
    sub = extract(glob, graph, spec)
    bad = dict(sub)
    bad["net.1.weight"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ReplyError, match=r"net\.1\.weight"):
        scatter(bad, graph, spec)


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=4),
    weights=st.lists(st.floats(0.5, 20.0), min_size=4, max_size=4),
    policy=st.sampled_from(sorted(POLICIES)),
    round_=st.integers(0, 50),
)
def test_aggregate_is_a_convex_combination(widths: list[float], weights: list[float], policy: str, round_: int) -> None:
    model = _TINY
    graph = _TINY_GRAPH
    glob = numpy_state(model)
    rng = np.random.default_rng(round_)
    contribs = []
    lo = {k: v.astype(np.float64).copy() for k, v in glob.items()}
    hi = {k: v.astype(np.float64).copy() for k, v in glob.items()}
    for i, width in enumerate(widths):
        spec = make_policy(policy).spec_for(graph, width, round_, i)
        sub = {k: rng.normal(size=s).astype(np.float32) for k, s in sub_shapes(graph, spec).items()}
        values, held = scatter(sub, graph, spec)
        for k in glob:
            lo[k] = np.where(held[k], np.minimum(lo[k] if i else np.inf, values[k]), lo[k])
            hi[k] = np.where(held[k], np.maximum(hi[k] if i else -np.inf, values[k]), hi[k])
        contribs.append((sub, spec, weights[i], None))
    new = fold(glob, graph, contribs)
    for k in glob:
        assert np.all(new[k] >= lo[k] - 1e-5) and np.all(new[k] <= hi[k] + 1e-5), k


torch.manual_seed(0)
_TINY = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 6), nn.ReLU(), nn.Linear(6, 3))
_TINY_GRAPH = build_graph(_TINY, torch.zeros(2, 1, 4, 4))
