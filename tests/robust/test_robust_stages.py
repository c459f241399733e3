"""Defences as aggregation stages of the strategy: over whole models and over fragments; reply guards."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import ConfigRecord
from strategy_harness import HelloGrid, first_round, fragment_shapes, make_strategy, model_state, reply_to

from fedshrink.devices.profiles import DeviceProfile
from fedshrink.models import ModelSpec
from fedshrink.robust.defences import (
    BulyanConfig,
    ClipConfig,
    DefenceConfig,
    DefenceEnv,
    MedianConfig,
    TrimmedMeanConfig,
)
from fedshrink.robust.guard import NormGuard
from fedshrink.runner.inprocess import server_identity


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity(run_id=11):
        yield


def test_median_stage_resists_one_scaled_reply() -> None:
    glob = model_state()
    s = make_strategy(min_train_clients=2, stages=[MedianConfig(bucket=1).build(DefenceEnv())])
    msgs = first_round(s, HelloGrid([1, 2, 3, 4, 5]), glob)
    rng = np.random.default_rng(0)
    updates = [{k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in glob.items()} for _ in msgs]
    updates[4] = {k: v * -1000 for k, v in updates[4].items()}  # the attacker
    out, _ = s.aggregate_train(1, [reply_to(m, u, pid=i) for i, (m, u) in enumerate(zip(msgs, updates, strict=True))])
    assert out is not None
    # each update's RMS is capped at the round's median first (the attacker's shrinks 1000-fold or so)
    rms = np.asarray([np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in u.values())
                              / sum(v.size for v in u.values())) for u in updates])
    scale = np.minimum(1.0, np.median(rms) / rms)
    assert scale[4] < 0.01 and scale[:4].min() > 0.9
    for k in glob:
        want = glob[k] + np.median(np.stack([u[k] * c for u, c in zip(updates, scale, strict=True)]), axis=0)
        np.testing.assert_allclose(out[k].numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", [MedianConfig(), TrimmedMeanConfig(), BulyanConfig()], ids=lambda c: c.name)
def test_combiners_screen_scaled_replies_before_voting(config: DefenceConfig) -> None:
    """A combiner's stages start with a norm screen (rule-screen-z): a scaled update is dropped, with a reason
    naming the setting, and the vote runs over the others; rule-screen-z 0 leaves only the combiner."""
    stages = config.stages(DefenceEnv())
    assert [type(st) for st in stages] == [NormGuard, type(config.build(DefenceEnv()))]
    assert [type(st) for st in dataclasses.replace(config, screen_z=0.0).stages(DefenceEnv())] == \
        [type(config.build(DefenceEnv()))]
    glob = model_state()
    s = make_strategy(min_train_clients=2, stages=stages)
    msgs = first_round(s, HelloGrid(list(range(1, 8))), glob)
    rng = np.random.default_rng(1)
    updates = [{k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in glob.items()} for _ in msgs]
    updates[6] = {k: v * -10 for k, v in updates[6].items()}  # sign-flip x10
    out, _ = s.aggregate_train(1, [reply_to(m, u, pid=i) for i, (m, u) in enumerate(zip(msgs, updates, strict=True))])
    dropped = s.outcomes[-1].dropped
    assert out is not None and [d.partition_id for d in dropped] == [6]
    assert "rule-screen-z 5" in dropped[0].reason


def test_two_combining_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="at most one combining rule"):
        make_strategy(stages=[MedianConfig().build(DefenceEnv()), TrimmedMeanConfig().build(DefenceEnv())])


@pytest.mark.parametrize("pruned_as_zero", [False, True])
def test_fragments_with_prune_masks_fold_to_the_holder_mean(pruned_as_zero: bool) -> None:
    """Three profiles, random fragments, prune masks sent as bitmaps: every coordinate is the sample-weighted
    mean over the clients whose fragment held it and whose mask kept it (or held as 0 with pruned-as-zero)."""
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    glob = model_state(spec)
    lossless = [DeviceProfile(n, w, sp, "unstructured" if sp else "none", 32, "raw", "raw", 1, 16)
                for n, w, sp in (("quarter", 0.25, 0.5), ("half", 0.5, 0.3), ("whole", 1.0, 0.0))]
    grid = HelloGrid([1, 2, 3], dict(zip([1, 2, 3], lossless, strict=True)))  # lossless uplinks: values exact
    s = make_strategy(spec, fragments=True, policy="random", min_train_clients=3, pruned_as_zero=pruned_as_zero)
    msgs = first_round(s, grid, glob)
    r = np.random.default_rng(3)
    replies, want_num, want_den = [], {k: np.zeros(v.shape) for k, v in glob.items()}, \
        {k: np.zeros(v.shape) for k, v in glob.items()}
    from fedshrink.fragments import scatter

    for i, msg in enumerate(msgs):
        shapes = fragment_shapes(msg)
        update = {k: r.normal(0, 0.1, sh).astype(np.float32) for k, sh in shapes.items()}
        masks = {k: r.random(sh) > 0.3 for k, sh in shapes.items() if k.endswith("weight")} if i < 2 else {}
        replies.append(reply_to(msg, update, pid=i, n=5 * (i + 1), masks=masks or None))
        fragment = s._assigned[msg.metadata.dst_node_id].fragment
        full = {k: v.shape for k, v in glob.items()}
        values, held = scatter(update, s.planner.graph, fragment, full)
        kept, _ = scatter({k: masks.get(k, np.ones(sh, bool)) for k, sh in shapes.items()}, s.planner.graph,
                          fragment, full)
        for k in glob:
            pruned = held[k] & ~kept[k]
            h = held[k] if pruned_as_zero else held[k] & kept[k]
            x = np.where(pruned, -glob[k], values[k]) if pruned_as_zero else values[k]
            want_num[k] += 5 * (i + 1) * h * x
            want_den[k] += 5 * (i + 1) * h
    out, _ = s.aggregate_train(1, replies)
    assert out is not None and not s.outcomes[-1].dropped
    for k, g in glob.items():
        mean = np.divide(want_num[k], want_den[k], out=np.zeros_like(want_num[k]), where=want_den[k] > 0)
        np.testing.assert_allclose(out[k].numpy(), np.where(want_den[k] > 0, g + mean, g), rtol=1e-5, atol=1e-6)


def test_guards_drop_oversized_and_outlying_replies_with_reasons() -> None:
    glob = model_state()
    s = make_strategy(min_train_clients=2, stages=[NormGuard(5.0), ClipConfig().build(DefenceEnv())],
                      max_bytes=4000)
    msgs = first_round(s, HelloGrid([1, 2, 3, 4, 5, 6]), glob)
    rng = np.random.default_rng(0)
    replies = []
    for i, m in enumerate(msgs[:5]):
        u = {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in glob.items()}
        if i == 3:
            u = {k: v * 1e4 for k, v in u.items()}  # far outside the round's norms
        replies.append(reply_to(m, u, pid=i))
    big = reply_to(msgs[5], {k: np.zeros(v.shape, np.float32) for k, v in glob.items()}, pid=5)
    big.content["padding"] = ConfigRecord({"junk": b"\0" * 5000})  # past the cap
    replies.append(big)
    out, metrics = s.aggregate_train(1, replies)
    assert out is not None and metrics is not None
    outcome = s.outcomes[-1]
    reasons = {d.partition_id: d.reason for d in outcome.dropped}
    assert set(reasons) == {3, 5}
    assert "robust z-scores above" in reasons[3] and "norm-guard 5" in reasons[3]
    assert "over the cap of 4000" in reasons[5]
    assert sorted(r.partition_id for r in outcome.accepted) == [0, 1, 2, 4]
    assert "clip" in outcome.notes
    assert all(np.all(np.isfinite(out[k].numpy())) and np.abs(out[k].numpy() - glob[k]).max() < 1.0 for k in glob)


def test_update_limit_drops_an_absurd_update() -> None:
    glob = model_state()
    s = make_strategy(min_train_clients=1, update_limit=100.0)
    msgs = first_round(s, HelloGrid([1, 2]), glob)
    ok = reply_to(msgs[0], {k: np.zeros(v.shape, np.float32) for k, v in glob.items()}, pid=0)
    absurd = reply_to(msgs[1], {k: np.full(v.shape, 3e38, np.float32) for k, v in glob.items()}, pid=1)
    out, _ = s.aggregate_train(1, [ok, absurd])
    assert out is not None
    (dropped,) = s.outcomes[-1].dropped
    assert dropped.partition_id == 1 and "update-limit" in dropped.reason


def test_a_claim_of_a_trillion_examples_weighs_no_more_than_the_largest_honest_client() -> None:
    glob = model_state()
    s = make_strategy(min_train_clients=3)
    msgs = first_round(s, HelloGrid([1, 2, 3]), glob)
    honest = {k: np.ones(v.shape, np.float32) for k, v in glob.items()}
    hijack = {k: np.full(v.shape, -9.0, np.float32) for k, v in glob.items()}
    replies = [reply_to(msgs[0], honest, pid=0, n=100), reply_to(msgs[1], honest, pid=1, n=100),
               reply_to(msgs[2], hijack, pid=2, n=10**12)]
    out, metrics = s.aggregate_train(1, replies)
    assert out is not None and metrics is not None
    outcome = s.outcomes[-1]
    assert outcome.weights == [100.0, 100.0, 100.0]
    assert outcome.capped == [{"node-id": 3, "partition-id": 2, "claimed": 10**12, "accepted": 100}]
    for k, g in glob.items():
        np.testing.assert_allclose(out[k].numpy(), g + (1 + 1 - 9) / 3, rtol=1e-5, atol=1e-5)
