"""Attacks, defences and guards in whole in-process runs: what is dropped is recorded in metrics and the report."""

from __future__ import annotations

from typing import Any

import pytest

from fedshrink.report import RunDirectory, build_report
from fedshrink.robust import malicious_partitions
from fedshrink.runner import run_inprocess


@pytest.mark.slow
def test_norm_guard_drops_the_gaussian_attacker_and_the_report_says_why(quick: dict[str, Any]) -> None:
    settings = {**quick, "num-server-rounds": 2, "attack": "gaussian", "attack-fraction": 0.2, "norm-guard": 6.0,
                "defence": "clip+median", "seed": 3}
    bad = malicious_partitions(5, 0.2, 3)
    assert len(bad) == 1
    result = run_inprocess(settings, num_clients=5)
    rounds = RunDirectory(result.run_dir).read_rounds()
    for r in rounds:
        assert {d["partition-id"] for d in r["dropped"]} == set(bad)
        assert all("robust z-scores above" in d["reason"] for d in r["dropped"])
        assert r["clients-good"] == 4 and "clip" in r["stages"]
    assert result.summary["replies-dropped"] == 2 and result.summary["defence"] == "clip+median"
    report = build_report(result.run_dir, draw=False).path.read_text()  # the text only: the plots are not asked about
    assert "## Dropped replies" in report and "robust z-scores above" in report and "## Aggregation stages" in report


@pytest.mark.slow
def test_sign_flip_breaks_fedavg_and_median_holds(quick: dict[str, Any]) -> None:
    """The attack is real (FedAvg's model moves away) and the defence keeps the model near the clean run."""
    common = {**quick, "num-server-rounds": 2, "seed": 4, "checkpoint": False, "partitioner": "iid"}
    clean = run_inprocess(common, num_clients=4).summary["accuracy"]  # measured: 0.95
    attacked = {**common, "attack": "sign-flip", "attack-fraction": 0.25}  # one of the four clients
    fedavg = run_inprocess(attacked, num_clients=4).summary["accuracy"]  # 0.10
    median = run_inprocess({**attacked, "defence": "median"}, num_clients=4).summary["accuracy"]  # 0.89
    assert fedavg < clean - 0.3
    assert median > clean - 0.15
