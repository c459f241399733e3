"""Robust aggregation maths: per coordinate, over the clients that held it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedshrink.errors import ConfigError
from fedshrink.robust import DEFENCES, defence_from_json, parse_defence
from fedshrink.robust.defences import BulyanConfig, DefenceEnv, MedianConfig, MultiKrumConfig, TrimmedMeanConfig
from fedshrink.robust.rules import (
    bulyan,
    clip_norms,
    coordinate_median,
    fltrust_reweight,
    multi_krum_select,
    norms,
    pairwise_distances,
    quorum,
    rms,
    robust_zscores,
    trimmed_mean,
)
from fedshrink.strategy.batch import Contribution, Layout, UpdateBatch
from fedshrink.strategy.stages import RoundContext, aggregate, holder_mean

NAN = np.nan


def batch(values: list[list[float]], weights: list[float] | None = None) -> UpdateBatch:
    """Rows are clients; NaN marks a coordinate the client did not hold."""
    v = np.asarray(values, dtype=np.float64)
    held = ~np.isnan(v)
    w = np.ones(len(v)) if weights is None else np.asarray(weights, dtype=np.float64)
    return UpdateBatch.simple(np.where(held, v, 0.0), held, w)


def test_weighted_mean_over_holders_only() -> None:
    b = batch([[1.0, 2.0, NAN], [3.0, NAN, NAN], [5.0, 4.0, NAN]], weights=[1, 1, 2])
    delta, voted = holder_mean(b)
    np.testing.assert_allclose(delta[:2], [(1 + 3 + 10) / 4, (2 + 8) / 3])
    assert voted.tolist() == [True, True, False] and delta[2] == 0.0


def test_median_per_coordinate_ignores_non_holders() -> None:
    b = batch([[1.0, 100.0, 7.0], [2.0, NAN, NAN], [1000.0, 0.0, NAN], [3.0, NAN, NAN]])
    delta, voted = coordinate_median(b)
    np.testing.assert_allclose(delta, [2.5, 50.0, 7.0])  # even counts: mean of the middle two
    assert voted.all()


def test_trimmed_mean_trims_by_each_coordinates_holder_count() -> None:
    # coordinate 0: 5 holders, trim 0.2 -> drop 1 each side; coordinate 1: 2 holders -> floor(0.4)=0, plain mean
    b = batch([[1.0, 1.0], [2.0, 3.0], [3.0, NAN], [4.0, NAN], [1e6, NAN]])
    delta, _ = trimmed_mean(b, 0.2)
    np.testing.assert_allclose(delta, [3.0, 2.0])
    with pytest.raises(ValueError):
        trimmed_mean(b, 0.5)


def test_distances_compare_only_shared_coordinates() -> None:
    b = batch([[1.0, 5.0, NAN], [1.0, NAN, 9.0], [NAN, NAN, 9.0], [NAN, 2.0, NAN]])
    d = pairwise_distances(b)
    assert d[0, 1] == 0.0  # they share coordinate 0 only, where they agree
    assert d[0, 3] == 9.0  # shared coordinate 1: (5 - 2)^2 / 1
    assert np.isinf(d[0, 2]) and np.isinf(d[2, 3])  # nothing shared
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)


def test_multi_krum_rejects_the_outliers() -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(0.0, 0.1, size=(8, 50))
    bad = rng.normal(5.0, 0.1, size=(2, 50))
    b = UpdateBatch.simple(np.vstack([honest, bad]))
    kept = multi_krum_select(b, f=2)
    assert kept.clients == tuple(range(8))


def test_bulyan_stays_near_honest_values() -> None:
    rng = np.random.default_rng(1)
    honest = rng.normal(1.0, 0.05, size=(9, 30))
    bad = np.full((2, 30), -50.0)
    b = UpdateBatch.simple(np.vstack([honest, bad]))
    delta, voted = bulyan(b, f=2)
    assert voted.all() and np.all(np.abs(delta - 1.0) < 0.2)
    mean, _ = holder_mean(b)
    assert np.all(mean < -5)  # the plain mean is dragged away


def test_clip_fixed_and_adaptive() -> None:
    b = batch([[3.0, 4.0], [0.3, 0.4], [30.0, 40.0]])
    fixed = clip_norms(b, 1.0)
    np.testing.assert_allclose(norms(fixed), [1.0, 0.5, 1.0])
    adaptive = clip_norms(b)  # RMS capped at the median RMS (client 0's)
    np.testing.assert_allclose(rms(adaptive), [rms(b)[0], rms(b)[1], rms(b)[0]])
    with pytest.raises(ValueError):
        clip_norms(b, -1.0)


def test_fltrust_zero_trust_for_opposed_updates_and_root_norm() -> None:
    root = np.array([1.0, 1.0, 0.0])
    b = batch([[2.0, 2.0, NAN], [-5.0, -5.0, 1.0], [NAN, 3.0, 0.0]])
    out = fltrust_reweight(b, root)
    assert out.weights[0] == pytest.approx(1.0) and out.weights[1] == 0.0 and out.weights[2] == pytest.approx(1.0)
    # rescaled to the root's norm on the coordinates each held
    np.testing.assert_allclose(norms(out), [np.sqrt(2), np.sqrt(2), 1.0])
    with pytest.raises(ValueError):
        fltrust_reweight(b, np.ones(2))


def test_robust_zscores() -> None:
    z = robust_zscores(np.array([1.0, 1.1, 0.9, 1.0, 10.0]))
    assert z[-1] > 50 and np.all(np.abs(z[:-1]) < 2)
    assert np.all(robust_zscores(np.ones(4)) == 0)


def _fold(glob: dict[str, np.ndarray], contributions: list[Contribution], stages: list) -> dict[str, np.ndarray]:
    layout = Layout.of(glob)
    flat, _ = aggregate(layout.flatten(glob), UpdateBatch.of(contributions, layout.size), stages,
                        RoundContext(1, glob, layout))
    return layout.unflatten(flat)


def test_aggregate_keeps_unheld_coordinates_and_rounds_integers() -> None:
    glob = {"w": np.array([1.0, 2.0, 3.0], np.float32), "n": np.array(4, np.int64)}
    c0 = Contribution(100, 0, 1.0, np.array([1, 1, 0, 1], np.float32), np.array([True, True, False, True]))
    c1 = Contribution(101, 1, 1.0, np.array([3, 0, 0, 2], np.float32), np.array([True, False, False, True]))
    out = _fold(glob, [c0, c1], [])
    np.testing.assert_allclose(out["w"], [3.0, 3.0, 3.0])  # 1 + mean(1, 3); 2 + 1; untouched
    assert out["w"].dtype == np.float32 and out["n"].dtype == np.int64 and int(out["n"]) == 6  # rint(5.5)
    med = _fold(glob, [c0, c1], [MedianConfig(bucket=1).build(DefenceEnv())])
    # the combiner caps each update's RMS (over what it held) at the median: c1's (3, 2) shrinks, c0's does not
    rms0, rms1 = 1.0, float(np.sqrt((9 + 4) / 2))
    scale1 = (rms0 + rms1) / 2 / rms1
    np.testing.assert_allclose(med["w"], [1.0 + (1.0 + 3.0 * scale1) / 2, 3.0, 3.0], rtol=1e-6)


def test_sparse_uplinks_vote_only_on_what_was_sent() -> None:
    """Top-k clients hold every coordinate but send a few: the mean counts unsent values as 0 (FedAvg of sparse
    updates); a coordinate-wise rule votes only on sent values and scales by the share that sent them, where its
    senders outnumber twice the attackers there may be among its holders; elsewhere it takes the holder mean of
    updates whose RMS is capped at the round's median."""
    glob = {"w": np.zeros(4, np.float32)}
    held = np.ones(4, dtype=bool)
    # five clients (f = floor(0.2 * 5) = 1 per coordinate): coordinate 0 sent by all (one outlier), coordinate 1
    # by two (no quorum: 2 <= 2f), coordinate 2 by none, coordinate 3 by three (quorum)
    values = np.asarray([[1.0, 2.0, 0.0, 1.0], [1.1, 4.0, 0.0, 2.0], [0.9, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0],
                         [-50.0, 0.0, 0.0, -90.0]])
    sent = [[1, 1, 0, 1], [1, 1, 0, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]]
    contributions = [Contribution(i, i, 1.0, np.asarray(v, np.float32), held, np.asarray(s, bool))
                     for i, (v, s) in enumerate(zip(values, sent, strict=True))]
    mean = _fold(glob, contributions, [])["w"]
    np.testing.assert_allclose(mean, [np.mean([1.0, 1.1, 0.9, 1.0, -50.0]), 6.0 / 5, 0.0, -87.0 / 5], rtol=1e-6)
    # every combiner first caps each update's RMS at the round's median (client 4's, and client 1's, shrink)
    rms_ = np.sqrt((values**2).mean(axis=1))
    capped = values * np.minimum(1.0, np.median(rms_) / rms_)[:, None]
    bounded_1 = capped[:, 1].sum() / 5  # coordinate 1: no quorum, so the mean of capped updates
    assert bounded_1 < 6.0 / 5
    median = _fold(glob, contributions, [MedianConfig(bucket=1).build(DefenceEnv())])["w"]
    expected = [np.median(capped[:, 0]), bounded_1, 0.0, np.median(capped[[0, 1, 4], 3]) * 3 / 5]
    np.testing.assert_allclose(median, expected, rtol=1e-5)  # median over senders x sent share
    trimmed = _fold(glob, contributions, [TrimmedMeanConfig(0.2, bucket=1).build(DefenceEnv())])["w"]
    expected[0] = np.sort(capped[:, 0])[1:4].mean()  # floor(0.2 * 5 holders) = 1 dropped at each end
    np.testing.assert_allclose(trimmed, expected, rtol=1e-5)
    # with no attackers assumed, every sent coordinate has a quorum, as before
    no_quorum = _fold(glob, contributions, [MedianConfig(0.0, bucket=1).build(DefenceEnv())])["w"]
    expected = [np.median(capped[:, 0]), np.median(capped[[0, 1], 1]) * 2 / 5, 0.0,
                np.median(capped[[0, 1, 4], 3]) * 3 / 5]
    np.testing.assert_allclose(no_quorum, expected, rtol=1e-5)


def test_a_value_one_client_alone_sent_does_not_pass_a_coordinate_rule() -> None:
    held = np.ones((10, 3), dtype=bool)
    sent = np.zeros((10, 3), dtype=bool)
    sent[0, 0] = True  # one sender of ten holders
    sent[:5, 1] = True  # five senders: more than 2 * floor(0.2 * 10)
    sent[:4, 2] = True  # four: not more
    assert quorum(held.sum(axis=0), sent.sum(axis=0), 0.2).tolist() == [False, True, False]
    assert quorum(held.sum(axis=0), sent.sum(axis=0), 0.0).tolist() == [True, True, True]
    assert quorum(held[:4].sum(axis=0), sent[:4].sum(axis=0), 0.2).all()  # four holders: floor(0.8) = 0 attackers


def test_defence_configs_round_trip_through_json() -> None:
    for name, cls in DEFENCES.items():
        cfg = cls()
        again = defence_from_json(cfg.to_json())
        assert again == cfg and json.loads(cfg.to_json())["name"] == name
    assert defence_from_json({"name": "bulyan", "byzantine_fraction": 0.1}) == BulyanConfig(0.1)
    with pytest.raises(ConfigError, match="defence"):
        defence_from_json({"name": "krum"})
    with pytest.raises(ConfigError, match="trim"):
        defence_from_json({"name": "median", "trim": 0.1})
    with pytest.raises(ConfigError, match="byzantine-fraction"):
        MultiKrumConfig(0.6)


def test_parse_defence() -> None:
    assert parse_defence("none") == []
    assert parse_defence("clip+median") == ["clip", "median"]
    for bad in ("", "median+median", "median+bulyan", "krum", "clip+"):
        with pytest.raises(ConfigError, match="defence"):
            parse_defence(bad)
    with pytest.raises(ConfigError, match="root set"):
        DEFENCES["fltrust"]().build(DefenceEnv())


def test_bucket_means_average_what_members_sent_and_count_groups() -> None:
    """Groups of two: each group's value is the weighted mean of what its members sent (not of their zeros),
    held where any member held, sent where any sent; the counts are in groups."""
    from fedshrink.robust.rules import bucket_means

    values = np.asarray([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [5.0, 6.0, 0.0], [7.0, 0.0, 0.0]], np.float32)
    held = np.asarray([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 0]], bool)
    sent = np.asarray([[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]], bool)
    batch = UpdateBatch(values, held, sent, np.asarray([1.0, 3.0, 1.0, 1.0]), (10, 11, 12, 13))
    voters, holders, senders = bucket_means(batch, 2, np.random.default_rng(0))
    order = np.random.default_rng(0).permutation(4)
    groups = [sorted(order[:2].tolist()), sorted(order[2:].tolist())]
    for g, rows in enumerate(groups):
        w = batch.weights[rows][:, None] * sent[rows]
        want = np.divide((w * values[rows]).sum(axis=0), w.sum(axis=0), out=np.zeros(3), where=w.sum(axis=0) > 0)
        np.testing.assert_allclose(voters.values[g], want)
        assert voters.held[g].tolist() == voters.sent[g].tolist() == sent[rows].any(axis=0).tolist()
        assert voters.weights[g] == batch.weights[rows].sum()
    assert holders.tolist() == [2, 2, 1] and senders.tolist() == [2, sum(sent[r][:, 1].any() for r in groups), 0]


def test_bucketing_votes_over_group_means_drawn_from_the_seed() -> None:
    """rule-bucket 2: the median is taken over the means of random pairs (drawn from the run's seed and the
    round), with twice the attackers' share assumed spoilt; the same seed gives the same result, bucket 1 the
    vote over replies, and a bad size fails at start naming the setting."""
    rng = np.random.default_rng(5)
    glob = {"w": np.zeros(6, np.float32)}
    contributions = [Contribution(i, i, 1.0, rng.normal(1.0, 0.5, 6).astype(np.float32)) for i in range(7)]
    contributions.append(Contribution(7, 7, 1.0, np.full(6, -3.0, np.float32)))  # one attacker of eight
    per_reply = _fold(glob, contributions, [MedianConfig(bucket=1).build(DefenceEnv())])["w"]
    paired = _fold(glob, contributions, [MedianConfig(bucket=2).build(DefenceEnv(seed=3))])["w"]
    again = _fold(glob, contributions, [MedianConfig(bucket=2).build(DefenceEnv(seed=3))])["w"]
    other = _fold(glob, contributions, [MedianConfig(bucket=2).build(DefenceEnv(seed=4))])["w"]
    np.testing.assert_array_equal(paired, again)
    assert not np.array_equal(paired, per_reply) and not np.array_equal(paired, other)
    assert (paired > 0).all() and (per_reply > 0).all()  # the attacker moves neither far
    stage = MedianConfig(0.2, bucket=2).build(DefenceEnv())
    assert stage.vote_fraction == pytest.approx(0.4)  # one spoilt voter per attacker's group
    assert TrimmedMeanConfig(0.3, bucket=2).build(DefenceEnv()).vote_fraction == pytest.approx(0.49)
    with pytest.raises(ConfigError, match="rule-bucket"):
        MedianConfig(bucket=0)
