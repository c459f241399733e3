"""Robust wrappers around fedshrink's Strategy, over full models and over fragments; reply guards."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import FakeGrid

from fedshrink.compression import encode_state
from fedshrink.compression.pruning import encode_masks
from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec, build_model
from fedshrink.profiles import get_profile
from fedshrink.robust.defences import ClipConfig, MedianConfig, TrimmedMeanConfig
from fedshrink.robust.wrappers import NormClipping, RobustAggregation, build_defence, unwrap
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy import FedShrink
from fedshrink.strategy.fragments import MASKS_KEY, FragmentStrategy
from fedshrink.strategy.replies import ARRAYS_KEY


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity(run_id=11):
        yield



def _reply(msg: Message, update: dict[str, np.ndarray], n: int, pid: int,
           masks: dict[str, np.ndarray] | None = None) -> Message:
    enc, _ = encode_state({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in update.items()}, "raw")
    content = RecordDict({ARRAYS_KEY: enc, "metrics": MetricRecord({"num-examples": n, "partition-id": pid})})
    if masks:
        content[MASKS_KEY], _ = encode_masks({k: torch.from_numpy(m) for k, m in masks.items()})
    return Message(content, reply_to=msg)


def _glob() -> dict[str, np.ndarray]:
    return {"w": np.arange(12, dtype=np.float32).reshape(4, 3), "b": np.zeros(4, np.float32)}


def test_median_wrapper_resists_one_scaled_reply() -> None:
    glob = _glob()
    strategy = RobustAggregation(FedShrink(min_train_clients=2, min_available_nodes=2), MedianConfig())
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in glob.items()})
    msgs = list(strategy.configure_train(1, record, ConfigRecord({}), FakeGrid([1, 2, 3, 4, 5])))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    updates = [{k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in glob.items()} for _ in msgs]
    updates[4] = {k: v * -1000 for k, v in updates[4].items()}  # the attacker
    replies = [_reply(m, u, 10, i) for i, (m, u) in enumerate(zip(msgs, updates, strict=True))]
    out, _ = strategy.aggregate_train(1, replies)
    assert out is not None
    for k in glob:
        want = glob[k] + np.median(np.stack([u[k] for u in updates]), axis=0)
        np.testing.assert_allclose(out[k].numpy(), want, rtol=1e-6, atol=1e-6)


def test_wrappers_compose_outer_first_and_refuse_two_combiners() -> None:
    base = FedShrink()
    s = build_defence(base, [ClipConfig(), TrimmedMeanConfig(0.1)])
    assert unwrap(s) is base and [st.name for st in base.aggregation_stages] == ["clip", "trimmed-mean"]
    assert isinstance(s, RobustAggregation) and s.rule.name == "clip"
    with pytest.raises(ConfigError, match="combining"):
        RobustAggregation(s, MedianConfig())
    other = FedShrink()
    NormClipping(RobustAggregation(other, TrimmedMeanConfig(0.2)), 1.0)
    assert [st.name for st in other.aggregation_stages] == ["clip", "trimmed-mean"]
    assert build_defence(FedShrink(), []).__class__ is FedShrink


@pytest.mark.parametrize("pruned_as_zero", [False, True])
def test_fragment_contributions_with_mean_equal_aggregate_fragments(pruned_as_zero: bool) -> None:
    """The seam (per-client updates in global coordinates + held masks) folds to exactly what
    FragmentStrategy.aggregate_arrays computes, prune masks included."""
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    torch.manual_seed(0)
    glob = {k: v.numpy() for k, v in build_model(spec).state_dict().items()}
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in glob.items()})
    rng = np.random.default_rng(3)
    results = []
    for wrap in (False, True):
        inner = FragmentStrategy(model_spec=spec, policy="random", pruned_as_zero=pruned_as_zero,
                                 min_train_clients=3, min_available_nodes=3)
        inner.node_profiles = {1: get_profile("iot"), 2: get_profile("phone"), 3: get_profile("laptop")}
        strategy = NormClipping(inner, 1e9) if wrap else inner  # a clip that never bites: robust path, mean
        msgs = list(strategy.configure_train(1, record, ConfigRecord({}), FakeGrid([1, 2, 3])))  # type: ignore[arg-type]
        replies = []
        r = np.random.default_rng(3)
        for i, msg in enumerate(msgs):
            sub = {k: msg.content[ARRAYS_KEY][k] for k in msg.content[ARRAYS_KEY].keys() if k in glob}
            shapes = {k: tuple(a.shape) for k, a in sub.items()}
            update = {k: r.normal(0, 0.1, s).astype(np.float32) for k, s in shapes.items()}
            masks = {k: r.random(s) > 0.3 for k, s in shapes.items() if k.endswith("weight")} if i < 2 else None
            replies.append(_reply(msg, update, 5 * (i + 1), i, masks))
        out, _ = strategy.aggregate_train(1, replies)
        assert out is not None
        results.append({k: out[k].numpy() for k in glob})
    del rng
    for k in glob:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-5, atol=1e-6)


def test_guards_drop_oversized_and_outlying_replies_with_reasons() -> None:
    glob = _glob()
    strategy = FedShrink(min_train_clients=2, min_available_nodes=2, norm_guard=5.0, max_reply_bytes=2000)
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in glob.items()})
    nodes = [1, 2, 3, 4, 5, 6]
    msgs = list(strategy.configure_train(1, record, ConfigRecord({}), FakeGrid(nodes)))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    replies = []
    for i, m in enumerate(msgs[:5]):
        u = {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in glob.items()}
        if i == 3:
            u = {k: v * 1e4 for k, v in u.items()}  # far outside the round's norms
        replies.append(_reply(m, u, 10, i))
    big = _reply(msgs[5], {k: np.zeros(v.shape, np.float32) for k, v in glob.items()}, 10, 5)
    big.content["metrics"]["padding"] = [0.0] * 400  # inflates the message past the cap
    replies.append(big)
    out, metrics = strategy.aggregate_train(1, replies)
    assert out is not None and metrics is not None
    outcome = strategy.outcomes[-1]
    reasons = {d.partition_id: d.reason for d in outcome.dropped}
    assert set(reasons) == {3, 5}
    assert "robust z-scores above" in reasons[3] and "norm-guard 5" in reasons[3]
    assert "over the cap of 2000" in reasons[5]
    assert sorted(r.partition_id for r in outcome.good) == [0, 1, 2, 4]
    assert np.all(np.isfinite(out["w"].numpy())) and np.abs(out["w"].numpy() - glob["w"]).max() < 1.0


def test_guard_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="norm-guard"):
        FedShrink(norm_guard=-1.0)
    with pytest.raises(ConfigError, match="max-reply-bytes"):
        FedShrink(max_reply_bytes=-5)
