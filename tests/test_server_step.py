"""The server's step (server-lr): the combined update scaled last, auto resolved from the fleet, bad values refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from strategy_harness import HelloGrid, first_round, make_strategy, model_state, reply_to

from fedshrink.config import RunConfig
from fedshrink.data import make_splits
from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy.batch import Layout, UpdateBatch
from fedshrink.strategy.stages import HolderMean, Perturb, RoundContext, ServerStep, aggregate


class AddOne(Perturb):
    """A perturbation that adds 1 to every voted coordinate (stands for privacy noise)."""

    name = "add-one"

    def perturb(self, delta: Any, voted: Any, batch: UpdateBatch, ctx: RoundContext) -> tuple[Any, dict[str, Any]]:
        return np.where(voted, delta + 1.0, delta), {}


def _ctx() -> RoundContext:
    state = {"w": np.zeros(3, dtype=np.float32)}
    return RoundContext(1, state, Layout.of(state))


def test_the_step_scales_the_combined_update_after_any_noise_and_leaves_unheld_coordinates() -> None:
    batch = UpdateBatch.simple([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]], held=[[1, 1, 0], [1, 1, 0]], weights=[1, 1])
    glob = np.array([10.0, 10.0, 10.0])
    plain, _ = aggregate(glob, batch, [], _ctx())
    np.testing.assert_allclose(plain, [12.0, 13.0, 10.0])  # FedAvg: the holders' mean
    stepped, _ = aggregate(glob, batch, [ServerStep(2.0)], _ctx())
    np.testing.assert_allclose(stepped, [14.0, 16.0, 10.0])  # 2 x the mean; nobody held the third
    # the step is the last stage whatever order it is given in: (mean + 1) x 2, not mean x 2 + 1
    noisy, _ = aggregate(glob, batch, [ServerStep(2.0), AddOne(), HolderMean()], _ctx())
    np.testing.assert_allclose(noisy, [16.0, 18.0, 10.0])


def test_a_step_must_be_positive_and_one_at_most() -> None:
    with pytest.raises(ValueError, match="server step"):
        ServerStep(0.0)
    batch = UpdateBatch.simple([[1.0, 2.0, 0.0]], held=[[1, 1, 0]], weights=[1])
    with pytest.raises(ValueError, match="at most one server step"):
        aggregate(np.zeros(3), batch, [ServerStep(2.0), ServerStep(3.0)], _ctx())


def test_a_strategy_round_moves_the_model_by_the_step() -> None:
    glob = model_state()
    update = {k: np.full_like(v, 0.5) for k, v in glob.items()}
    moved = {}
    for lr in (1.0, 2.5):
        with server_identity(run_id=7):
            s = make_strategy(min_train_clients=2, stages=[ServerStep(lr)] if lr != 1.0 else [])
            msgs = first_round(s, HelloGrid([11, 12]), glob)
            arrays, _ = s.aggregate_train(1, [reply_to(m, update, pid=i, n=10) for i, m in enumerate(msgs)])
        assert arrays is not None
        moved[lr] = {k: arrays[k].numpy() - glob[k] for k in glob}
    for k in glob:
        np.testing.assert_allclose(moved[1.0][k], 0.5, rtol=1e-6)
        np.testing.assert_allclose(moved[2.5][k], 1.25, rtol=1e-6)


@pytest.mark.parametrize("settings, step", [
    ({}, 2.0),  # the default mix trains fragments
    ({"profile-mix": ""}, 1.0),  # every client the full model: FedAvg's step
    ({"profile-mix": "", "budget-mix": "mem=2,device=iot:1"}, 2.0),  # budgets become profiles: fragments
    ({"server-lr": 1.5}, 1.5),
    ({"profile-mix": "", "server-lr": 3.0}, 3.0),
])
def test_auto_is_two_with_fragments_and_one_without(settings: dict[str, Any], step: float) -> None:
    assert RunConfig.from_mapping(settings).server_step == step


@pytest.mark.parametrize("value", [-1.0, 10.5, "fast"])
def test_a_bad_step_fails_at_start_naming_the_setting(value: object) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"server-lr": value})
    assert err.value.key == "server-lr" and "0 = auto" in str(err.value)


PRIVATE = {"dp-mode": "central", "dp-noise-multiplier": 1.0, "dp-clip": 0.5, "pruned-as-zero": False}


@pytest.mark.parametrize("settings, built", [({}, 2.0), ({"profile-mix": ""}, None), ({"server-lr": 0.5}, 0.5),
                                             (PRIVATE, 2.0)])
def test_the_strategy_ends_its_stages_with_the_step(settings: dict[str, Any], built: float | None) -> None:
    from fedshrink.server.factory import build_strategy

    cfg = RunConfig.from_mapping(settings)
    splits = make_splits(cfg.split_spec())
    s = build_strategy(cfg, ModelSpec("cnn", splits.input_shape, splits.num_classes), splits)
    steps = [st for st in s.stages if isinstance(st, ServerStep)]
    if built is None:
        assert steps == []
    else:
        assert len(steps) == 1 and steps[0].lr == built and s.stages[-1] is steps[0]
        if "dp-mode" in settings:  # the private stages (the noise) come before it
            assert any(isinstance(st, Perturb) for st in s.stages[:-1])


def test_a_run_records_its_resolved_step(quick: dict[str, Any]) -> None:
    from fedshrink.runner import run_inprocess

    summary = run_inprocess({**quick, "num-server-rounds": 1, "profile-mix": "phone:0.5,laptop:0.5",
                             "fusion-steps": 0}, num_clients=2).summary
    assert summary["server-step"] == 2.0  # auto on fragments
