"""End to end through ``flwr run`` on Flower's simulation engine (Ray).

The SuperLink is started by the test (through LocalSimulation) so its PID is
known; the run's real status is read with ``flwr ls``; every process started
is stopped by PID and no port is left open.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import port_open

from fedshrink.runner.flower import LocalSimulation

pytestmark = pytest.mark.e2e
APP_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSimulation]:
    home = tmp_path_factory.mktemp("flwr-home")
    s = LocalSimulation(home)
    s.start()
    pids = s.pids()
    assert pids and port_open(s.http_port)
    yield s
    s.stop()
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left running: {alive}"
    assert not port_open(s.http_port) and not port_open(s.control_port)


def test_flwr_run_completes_and_writes_run_dir(sim: LocalSimulation, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    run = sim.run(APP_DIR, {"num-server-rounds": 2, "local-epochs": 1, "distill": False, "output-dir": str(out),
                            "report": False, "checkpoint": False, "profile-mix": "iot:0.5,laptop:0.5",
                            "device-availability": False, "run-name": "e2e"}, num_supernodes=4, echo=False)
    assert run.status == "finished:completed", run.output[-3000:]
    summary = json.loads((out / "e2e" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["clients"] == 4 and summary["rounds"] == 2
    assert 0.0 <= summary["accuracy"] <= 1.0
    rounds = [json.loads(x) for x in (out / "e2e" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients-good"] for r in rounds] == [4, 4]
    assert set(rounds[-1]["accuracy-width"]) == {"0.25"}  # mixed profiles: iot fragments were trained
    assert "round   2/2" in run.output  # the console line per round reaches the stream


def test_crashed_serverapp_is_reported_failed(sim: LocalSimulation, tmp_path: Path) -> None:
    # `flwr run` itself exits 0 here; only `flwr ls` tells the truth
    run = sim.run(APP_DIR, {"dataset": "mnist", "data-dir": str(tmp_path / "absent"),
                            "output-dir": str(tmp_path / "runs")}, num_supernodes=2, echo=False)
    assert run.status == "finished:failed"
