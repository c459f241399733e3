"""Bytes and rounds to target accuracies, and savings against a baseline, on hand-made round records."""

from __future__ import annotations

from typing import Any

import pytest

from fedshrink.errors import ConfigError
from fedshrink.report.report import reach_rows
from fedshrink.report.targets import (
    Target,
    check_levels,
    choose_targets,
    final_accuracy,
    reach,
    reach_all,
    savings,
    targets_json,
)


def rounds(accs: list[float], up: list[int], down: list[int], **extra: list[float]) -> list[dict[str, Any]]:
    return [{"round": i + 1, "accuracy": a, "bytes-up": u, "bytes-down": d,
             **{k.replace("_", "-"): v[i] for k, v in extra.items()}}
            for i, (a, u, d) in enumerate(zip(accs, up, down, strict=True))]


RUN = rounds([0.50, 0.80, 0.79, 0.90], [100, 200, 300, 400], [1000, 1000, 1000, 1000])


def test_first_round_at_or_above_the_target_and_running_sums() -> None:
    r = reach(RUN, Target(0.8, "given"))
    assert r.reached and r.round == 2
    assert r.bytes_up == 100 + 200 and r.bytes_total == 300 + 2000 and r.up_key == "bytes-up"
    assert reach(RUN, Target(0.85, "given")).round == 4  # the dip in round 3 does not count
    assert reach(RUN, Target(0.5, "given")).bytes_up == 100  # the first round itself


def test_never_reached() -> None:
    r = reach(RUN, Target(0.95, "given"))
    assert not r.reached and r.round is None and r.bytes_up is None and r.bytes_total is None
    row = reach_rows([r])[0]
    assert row["round reached"] == row["bytes up"] == row["bytes up + down"] == "never"
    assert r.to_json()["reached"] is False and r.to_json()["round"] is None


def test_received_bytes_preferred_when_every_round_has_them() -> None:
    received = [{**r, "bytes-up-received": r["bytes-up"] + 50} for r in RUN]
    assert reach(received, Target(0.8, "given")).bytes_up == 400 and \
        reach(received, Target(0.8, "given")).up_key == "bytes-up-received"
    partly = [received[0], *RUN[1:]]  # one round without it: fall back to bytes-up everywhere
    assert reach(partly, Target(0.8, "given")).bytes_up == 300


def test_modelled_device_figures_when_present() -> None:
    run = rounds([0.5, 0.9], [1, 1], [1, 1], device_time_s=[2.0, 3.0], device_energy_j=[10.0, 5.5])
    r = reach(run, Target(0.9, "given"))
    assert r.device_time_s == 5.0 and r.device_energy_j == 15.5
    row = reach_rows([r])[0]
    assert row["modelled device time"] == "5 s" and row["modelled device energy"] == "15.5 J"
    assert reach(RUN, Target(0.8, "given")).device_time_s is None
    assert "modelled device time" not in reach_rows([reach(RUN, Target(0.8, "given"))])[0]


def test_default_targets() -> None:
    base = choose_targets([], baseline_final=0.9, own_final=0.7, baseline_name="fedavg")
    assert [t.level for t in base] == [pytest.approx(0.89)] and "fedavg final accuracy 0.9000 - 1 point" in \
        base[0].source
    assert reach(rounds([0.85, 0.89], [1, 1], [1, 1]), base[0]).round == 2  # exactly final - 1 point reaches
    given = choose_targets([0.95, 0.9, 0.9], baseline_final=0.9)
    assert [t.level for t in given] == [pytest.approx(0.89), 0.9, 0.95]
    own = choose_targets([], own_final=0.75)
    assert [t.level for t in own] == [pytest.approx(0.74)] and "this run" in own[0].source
    assert [t.level for t in choose_targets([0.6], own_final=0.75)] == [0.6]  # given levels replace the own one
    assert choose_targets([]) == []


@pytest.mark.parametrize("bad", [0, 1.5, -0.2, 95])
def test_bad_levels_are_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="--targets"):
        check_levels([bad])


def test_final_accuracy() -> None:
    assert final_accuracy(RUN, {"accuracy": 0.91}) == 0.91
    assert final_accuracy(RUN, {}) == 0.9 and final_accuracy([], {}) is None


def test_savings_against_a_baseline() -> None:
    base = rounds([0.5, 0.7, 0.85, 0.9], [1000] * 4, [4000] * 4)
    targets = [Target(0.8, "given"), Target(0.95, "given")]
    mine, theirs = reach_all(RUN, targets), reach_all(base, targets)
    s = savings(mine, theirs)
    assert s[0].bytes_up_ratio == pytest.approx(3000 / 300) and s[0].bytes_total_ratio == pytest.approx(15000 / 2300)
    assert (s[0].run.round, s[0].baseline.round) == (2, 3)
    assert s[1].bytes_up_ratio is None  # neither reaches 0.95
    row = reach_rows(mine, theirs)[0]
    assert row["bytes-up saving (baseline / run)"] == "10.00x" and row["baseline round"] == "3"
    entry = targets_json(mine, "runs/fedavg", theirs)
    assert entry["baseline"] == "runs/fedavg" and entry["levels"][0]["bytes-up-saving"] == pytest.approx(10.0)
    assert entry["levels"][1]["bytes-up-saving"] is None and entry["levels"][1]["reached"] is False
    with pytest.raises(ValueError):
        savings(mine, theirs[:1])
