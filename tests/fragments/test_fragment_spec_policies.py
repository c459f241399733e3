"""FragmentSpec wire form and validation; the static, rolling and random policies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fragment_helpers import MODEL_NAMES, seeded_model

from fedshrink.errors import ConfigError, DecodeError
from fedshrink.fragments import POLICIES, FragmentSpec, build_graph, make_policy
from fedshrink.models import channels

_GRAPHS = {name: build_graph(seeded_model(name)) for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_spec_json_and_bytes_round_trip(name: str, policy: str) -> None:
    graph = _GRAPHS[name]
    for width in (1.0, 0.5, 0.3):
        spec = make_policy(policy).spec_for(graph, width, 9, "node-3")
        text = spec.to_json()
        assert isinstance(text, str) and FragmentSpec.from_json(text) == spec
        assert FragmentSpec.from_bytes(spec.to_bytes()) == spec
        assert spec.counts() == {g: channels(n, width) for g, n in graph.group_sizes().items()}
        spec.check(graph)


@pytest.mark.parametrize(
    ("kept", "match"),
    [
        ([2, 1], "sorted"),
        ([1, 1], "sorted"),
        ([0, 8], r"\[0, 8\)"),
        ([-1, 2], r"\[0, 8\)"),
        ([], "at least one"),
        ([[0, 1]], "1-D"),
        ([0.5], "integer"),
    ],
)
def test_spec_validation(kept: list, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FragmentSpec({"g": kept}, {"g": 8})


def test_spec_checks_groups_against_the_graph() -> None:
    graph = _GRAPHS["mlp"]
    with pytest.raises(ConfigError, match="groups"):
        FragmentSpec({"g": [0]}, {"g": 8}).check(graph)
    with pytest.raises(ConfigError):
        FragmentSpec({"g": [0]}, {"h": 8})


def _wire(runs: object, size: object = 8, **extra: object) -> str:
    return json.dumps(
        {"format": "fedshrink.fragment/1", "width": 0.5, "groups": {"g": {"size": size, "runs": runs}}, **extra}
    )


@pytest.mark.parametrize(
    "text",
    [
        b"\xff\xfe",
        "not json",
        "[]",
        json.dumps({"format": "other", "width": None, "groups": {}}),
        _wire([[0, 2]], extra_field=1),
        _wire([[0, 2]], size=0),
        _wire([[0, 2]], size=2**40),
        _wire([[0, 2]], size=True),
        _wire([]),
        _wire([[0, 0]]),
        _wire([[4, 2], [0, 2]]),
        _wire([[0, 3], [2, 2]]),
        _wire([[6, 3]]),
        _wire([[0, "2"]]),
        _wire([[0, 2, 3]]),
        _wire("0-2"),
        json.dumps({"format": "fedshrink.fragment/1", "width": 2.0, "groups": {"g": {"size": 8, "runs": [[0, 1]]}}}),
        json.dumps({"format": "fedshrink.fragment/1", "width": "x", "groups": {}}),
    ],
)
def test_malformed_wire_raises_decode_error(text: str | bytes) -> None:
    with pytest.raises(DecodeError, match="fragment-spec"):
        FragmentSpec.from_json(text)


def test_runs_are_compact() -> None:
    spec = FragmentSpec({"g": [0, 1, 2, 6, 7]}, {"g": 8}, 0.625)
    assert spec.to_dict()["groups"]["g"] == {"size": 8, "runs": [[0, 3], [6, 2]]}


def test_static_is_a_prefix() -> None:
    spec = make_policy("static").spec_for(_GRAPHS["cnn"], 0.25, 5, 1)
    assert spec.is_prefix() and spec.width == 0.25


def test_rolling_window_moves_and_wraps() -> None:
    graph = _GRAPHS["resnet"]
    policy = make_policy("rolling", step=3)
    size = graph.groups["stem.0"].size  # 16, keep 8
    starts = []
    seen = np.zeros(size, dtype=int)
    for rnd in range(1, 8):
        kept = policy.spec_for(graph, 0.5, rnd, "any").kept["stem.0"]
        start = ((rnd - 1) * 3) % size
        assert np.array_equal(kept, np.sort((start + np.arange(8)) % size))
        starts.append(start)
        seen[kept] += 1
    assert seen.min() > 0  # every channel is trained by small clients over the rounds
    assert np.array_equal(policy.spec_for(graph, 0.5, 1, 0).kept["stem.0"], np.arange(8))


def test_random_is_seeded_by_seed_round_and_client() -> None:
    graph = _GRAPHS["cnn"]
    pol = make_policy("random", seed=1)
    a = pol.spec_for(graph, 0.5, 3, "alice")
    assert a == make_policy("random", seed=1).spec_for(graph, 0.5, 3, "alice")
    assert a != pol.spec_for(graph, 0.5, 3, "bob")
    assert a != pol.spec_for(graph, 0.5, 4, "alice")
    assert a != make_policy("random", seed=2).spec_for(graph, 0.5, 3, "alice")
    assert pol.spec_for(graph, 1.0, 3, 17) == make_policy("static").spec_for(graph, 1.0, 3, 17)


@pytest.mark.parametrize(
    ("call", "key"),
    [
        (lambda: make_policy("magic"), "fragments.policy"),
        (lambda: make_policy("static", step=2), "fragments.static"),
        (lambda: make_policy("rolling", step=0), "rolling-step"),
        (lambda: make_policy("random", seed=-1), "fragments.random.seed"),
        (lambda: make_policy("static").spec_for(_GRAPHS["mlp"], 0.0, 1, 0), "fragments.width"),
        (lambda: make_policy("static").spec_for(_GRAPHS["mlp"], 1.5, 1, 0), "fragments.width"),
        (lambda: make_policy("static").spec_for(_GRAPHS["mlp"], 0.5, -1, 0), "fragments.server_round"),
    ],
)
def test_policy_errors_name_the_setting(call, key: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as err:
        call()
    assert err.value.key == key
