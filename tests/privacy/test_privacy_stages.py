"""The server side: noise per coordinate over its holders, uniform weights, adaptive bound, budget, checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from privacy_harness import make_private
from strategy_harness import TINY, HelloGrid, first_round, fragment_shapes, model_state, reply_to, zero_update

from fedshrink.devices.profiles import DeviceProfile
from fedshrink.privacy.controller import PrivacyBudgetSpent, PrivacyController
from fedshrink.privacy.settings import PrivacySettings
from fedshrink.privacy.stages import clip_rows, holder_noise_std
from fedshrink.protocol import TrainInstruction
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy.fleet import Fleet
from fedshrink.training import TrainSettings

HALF, FULL = DeviceProfile("half", width=0.5), DeviceProfile("full", width=1.0)


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity(run_id=41):
        yield


def test_noise_is_calibrated_to_the_holders_of_each_coordinate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two half-width and two full-width clients: inner coordinates have 4 holders, outer ones 2; std = z C / n_j."""
    glob = model_state()
    s = make_private(fragments=True, dp_mode="central", dp_clip=0.5, dp_noise_multiplier=2.0)
    grid = HelloGrid([1, 2, 3, 4], profiles={1: HALF, 2: HALF, 3: FULL, 4: FULL})
    msgs = first_round(s, grid, glob)
    monkeypatch.setattr(s.privacy, "standard_normal", lambda rnd, size: np.ones(size))  # noise = its std
    new, _ = s.aggregate_train(1, [reply_to(m, zero_update(fragment_shapes(m)), pid=i) for i, m in enumerate(msgs)])
    assert new is not None
    moved = np.concatenate([new[k].numpy().reshape(-1) - glob[k].reshape(-1) for k in glob])
    assert set(np.round(moved, 6)) <= {round(2.0 * 0.5 / 4, 6), round(2.0 * 0.5 / 2, 6)}
    assert np.isclose(moved, 0.25).any() and np.isclose(moved, 0.5).any()
    note = s.outcomes[-1].notes["dp-noise"]
    assert (note["holders-min"], note["holders-max"]) == (2, 4)
    assert note["std-max"] == pytest.approx(0.5)


def test_weights_are_uniform_and_updates_clipped_on_the_server() -> None:
    glob = model_state()
    s = make_private(dp_mode="central", dp_clip=1.0, dp_noise_multiplier=0.0)
    msgs = first_round(s, HelloGrid([1, 2, 3]), glob)
    rng = np.random.default_rng(0)
    updates = [{k: rng.normal(0, 0.01 * 10 ** i, v.shape).astype(np.float32) for k, v in glob.items()}
               for i in range(3)]
    replies = [reply_to(m, u, pid=i, n=10 ** (i + 1)) for i, (m, u) in enumerate(zip(msgs, updates, strict=True))]
    new, _ = s.aggregate_train(1, replies)
    assert new is not None
    rows = np.stack([np.concatenate([u[k].reshape(-1) for k in glob]) for u in updates]).astype(np.float64)
    clipped, norms = clip_rows(rows, 1.0)
    assert norms[0] < 1.0 < norms[2]
    expected = clipped.mean(axis=0)  # sample counts 10, 100, 1000 play no part
    moved = np.concatenate([new[k].numpy().reshape(-1) - glob[k].reshape(-1) for k in glob])
    np.testing.assert_allclose(moved, expected, atol=1e-6)
    assert s.outcomes[-1].notes["dp-clip"]["reclipped"] == [1, 2]


def test_holder_noise_std_formula() -> None:
    np.testing.assert_allclose(holder_noise_std(np.array([0, 1, 4, 10]), 1.5, 2.0), [0.0, 3.0, 0.75, 0.3])


def test_distributed_instructions_carry_the_noise_share() -> None:
    glob = model_state()
    s = make_private(dp_mode="distributed", dp_clip=2.0, dp_noise_multiplier=1.0)
    msgs = first_round(s, HelloGrid([1, 2, 3, 4]), glob)
    privacy = TrainInstruction.from_records(msgs[0].content).privacy
    assert privacy is not None
    assert (privacy.clip, privacy.noise_std) == (2.0, pytest.approx(1.0 * 2.0 / np.sqrt(4)))
    assert not privacy.report_within  # fixed bound: no bit about the norm


def test_adaptive_bound_moves_by_the_share_within() -> None:
    """Without noise the share is exact: 1 of 4 within, quantile 0.5 -> C exp(-0.2 (0.25 - 0.5))."""
    glob = model_state()
    s = make_private(dp_mode="central", dp_clip=1.0, dp_noise_multiplier=0.0, dp_clip_quantile=0.5)
    msgs = first_round(s, HelloGrid([1, 2, 3, 4]), glob)
    replies = [reply_to(m, zero_update(fragment_shapes(m)), pid=i, metrics={"dp-within": float(i == 0)})
               for i, m in enumerate(msgs)]
    s.aggregate_train(1, replies)
    assert s.privacy.clip == pytest.approx(np.exp(0.05))
    assert s.outcomes[-1].notes["privacy"]["within-share"] == 0.25
    nxt = first_round(s, HelloGrid([1, 2, 3, 4]), glob, rnd=2)
    privacy = TrainInstruction.from_records(nxt[0].content).privacy
    assert privacy is not None and privacy.clip == pytest.approx(np.exp(0.05)) and privacy.report_within


def test_adaptive_clipping_refuses_a_split_it_cannot_make() -> None:
    ctl = PrivacyController(PrivacySettings(dp_mode="central", dp_noise_multiplier=1.0, dp_clip_quantile=0.5),
                            rounds=3, seed=0)
    with pytest.raises(ValueError, match="dp-noise-multiplier"):
        ctl.plan_round(1, 10, 4)  # sigma_b = 4 / 20 = 0.2 < z / 2


def test_stop_before_the_round_that_would_pass_the_target() -> None:
    settings = PrivacySettings(dp_mode="central", dp_noise_multiplier=1.0, dp_target_epsilon=6.0, dp_at_target="stop")
    ctl = PrivacyController(settings, rounds=50, seed=0)
    played = 0
    with pytest.raises(PrivacyBudgetSpent, match="target 6"):
        for rnd in range(1, 51):
            ctl.plan_round(rnd, 100, 10)
            ctl.record_release(fewest_holders=10, replies=10)
            ctl.end_round(rnd, released=True, within=[])
            played += 1
    assert 0 < played < 50
    assert ctl.epsilons()["epsilon"] <= 6.0 and ctl.delta == pytest.approx(0.01)


def test_calibrated_multiplier_spends_the_target_over_the_run() -> None:
    ctl = PrivacyController(PrivacySettings(dp_mode="central", dp_noise_multiplier=0.0, dp_target_epsilon=4.0),
                            rounds=5, seed=0)
    for rnd in range(1, 6):
        ctl.plan_round(rnd, 50, 10)
        ctl.end_round(rnd, released=True, within=[])
    assert ctl.multiplier is not None and ctl.multiplier > 0
    assert 3.9 < ctl.epsilons()["epsilon"] <= 4.0


def test_checkpoint_round_trip() -> None:
    glob = model_state()
    s = make_private(dp_mode="central", dp_clip=1.0, dp_noise_multiplier=1.0, dp_clip_quantile=0.5,
                     dp_count_noise=1.0)
    msgs = first_round(s, HelloGrid([1, 2, 3, 4]), glob)
    s.aggregate_train(1, [reply_to(m, zero_update(fragment_shapes(m)), pid=i, metrics={"dp-within": 1.0})
                          for i, m in enumerate(msgs)])
    state = s.checkpoint_state()
    fresh = make_private(dp_mode="central", dp_clip=1.0, dp_noise_multiplier=1.0, dp_clip_quantile=0.5,
                         dp_count_noise=1.0)
    fresh.restore_state(state)
    assert fresh.privacy.clip == s.privacy.clip != 1.0
    assert fresh.privacy.epsilons() == s.privacy.epsilons()


@pytest.mark.parametrize(("strategy", "over_select", "sent"), [
    ({"fraction_train": 0.3}, None, 3), ({"clients_per_round": 4}, None, 4),
    ({"clients_per_round": 4}, 2.0, 6),  # 4 wanted + 2 over-selected
    ({"clients_per_round": 9}, 0.5, 10),  # 9 + ceil(4.5), capped at the 10 connected
])
def test_the_accountant_counts_the_clients_the_round_sampled(strategy: dict[str, Any], over_select: float | None,
                                                               sent: int) -> None:
    """m in the accountant's event is the number of nodes sent an instruction (over-selection included)."""
    if over_select is not None:
        strategy = {**strategy, "fleet": Fleet(TINY, TrainSettings(), uplink="raw", downlink="raw", seed=0,
                                              deadline_s=0.0, over_select=over_select, availability=False)}
    s = make_private(dp_mode="central", dp_noise_multiplier=1.0, strategy=strategy)
    msgs = first_round(s, HelloGrid(list(range(1, 11))), model_state())
    assert s.privacy.plan is not None
    assert (s.privacy.plan.population, s.privacy.plan.sampled, len(msgs)) == (10, sent, sent)


def test_warn_once_when_the_target_is_passed(caplog: pytest.LogCaptureFixture) -> None:
    ctl = PrivacyController(PrivacySettings(dp_mode="central", dp_noise_multiplier=1.0, dp_target_epsilon=5.0),
                            rounds=50, seed=0)
    with caplog.at_level("WARNING", logger="fedshrink.privacy"):
        for rnd in range(1, 31):
            ctl.plan_round(rnd, 100, 10)  # dp-at-target = warn: never raises
            ctl.end_round(rnd, released=True, within=[])
    assert ctl.epsilons()["epsilon"] > 5.0
    assert len(caplog.records) == 1 and "privacy budget passed" in caplog.records[0].message
