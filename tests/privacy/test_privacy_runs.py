"""Whole runs through the in-process engine: epsilon per round, in the summary, the console and the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedshrink.config import RunConfig
from fedshrink.devices.profiles import DEFAULT_MIX
from fedshrink.errors import ConfigError
from fedshrink.report import RunDirectory, build_report
from fedshrink.runner import run_inprocess
from fedshrink.runner.inprocess import RunResult


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Any]:
    return {"num-server-rounds": 3, "local-epochs": 1, "output-dir": str(tmp_path / "runs"), "quiet": True,
            "distill": False, "checkpoint": False, "report": False, "model": "mlp", "model-norm": "none",
            "dp-reproducible-noise": True, "device-availability": False, "profile-mix": ""}


@pytest.fixture
def central(tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[RunResult, str]:
    result = run_inprocess({**tiny, "dp-mode": "central", "dp-noise-multiplier": 1.0, "dp-clip": 0.5,
                            "quiet": False}, num_clients=6)
    return result, capsys.readouterr().out


def test_epsilon_per_round_in_summary_console_and_report(central: tuple[RunResult, str]) -> None:
    result, out = central
    rounds = RunDirectory(result.run_dir).read_rounds()
    eps = [r["epsilon"] for r in rounds]
    assert 0 < eps[0] < eps[1] < eps[2]
    assert all(r["delta"] == pytest.approx(1 / 6) for r in rounds)
    assert rounds[0]["stages"]["privacy"]["event"] == {"population": 6, "sampled": 6, "multiplier": 1.0,
                                                       "sampling": "without replacement, replace-one"}
    assert result.summary["epsilon"] == eps[-1] and result.summary["rounds-released"] == 3
    assert f"eps {eps[-1]:.3g}" in out
    build_report(result.run_dir, draw=False)
    report = (result.run_dir / "report.md").read_text()
    assert f"Privacy: central DP-FedAvg, epsilon {eps[-1]:.3g} at delta" in report


def test_distributed_run_on_the_default_mix(tiny: dict[str, Any]) -> None:
    """Lossy uplinks: the headline is each client's own guarantee, larger than the aggregate's."""
    result = run_inprocess({**tiny, "dp-mode": "distributed", "dp-noise-multiplier": 1.0, "profile-mix": DEFAULT_MIX,
                            "pruned-as-zero": False, "fusion-steps": 2}, num_clients=5)
    s = result.summary
    assert s["status"] == "completed"
    assert s["epsilon"] == s["epsilon-local"] > s["epsilon-aggregate"] > 0
    notes = RunDirectory(result.run_dir).read_rounds()[-1]["stages"]
    assert notes["dp-noise"]["noise"].startswith("added by the clients")
    assert notes["dp-noise"]["holders-min"] < notes["dp-noise"]["holders-max"]  # outer coordinates: full width only


def test_run_stops_at_its_target(tiny: dict[str, Any]) -> None:
    result = run_inprocess({**tiny, "num-server-rounds": 10, "dp-mode": "central", "dp-noise-multiplier": 2.0,
                            "dp-target-epsilon": 4.0, "dp-at-target": "stop"}, num_clients=4)
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert 1 <= len(rounds) < 10
    assert "dp-at-target = stop" in result.summary["stopped"]
    assert result.summary["epsilon"] <= 4.0


@pytest.mark.parametrize("values", [
    {"defence": "median"}, {"norm-guard": 3.0}, {"profile-mix": DEFAULT_MIX}, {"dp-clip": 0.0},
    {"dp-mode": "local"}, {"dp-at-target": "ignore"}])
def test_settings_that_would_break_the_calibration_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(values)) if "profile-mix" not in values else "pruned-as-zero"):
        RunConfig.from_mapping({"dp-mode": "central", **values})
