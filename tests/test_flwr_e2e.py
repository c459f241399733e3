"""End to end through ``flwr run`` on Flower's simulation engine (Ray).

The SuperLink is started by the test (through LocalSimulation) so its PID is
known; the run's real status is read with ``flwr ls``; every process started
is stopped by PID and no port is left open.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


RUN = {"num-server-rounds": 2, "local-epochs": 1, "distill": False, "report": False,
       "checkpoint": False, "profile-mix": "iot:0.5,laptop:0.5", "device-availability": False}


@pytest.fixture(scope="module")
def ray_run(sim: LocalSimulation, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One run through ``flwr run`` on Ray (4 SuperNodes, mixed profiles): its run directory and output."""
    out = tmp_path_factory.mktemp("ray-runs")
    run = sim.run(APP_DIR, {**RUN, "output-dir": str(out), "run-name": "e2e"}, num_supernodes=4, echo=False)
    assert run.status == "finished:completed", run.output[-3000:]
    return out / "e2e", run.output


def test_flwr_run_completes_and_writes_run_dir(ray_run: tuple[Path, str]) -> None:
    run_dir, output = ray_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["clients"] == 4 and summary["rounds"] == 2
    assert 0.0 <= summary["accuracy"] <= 1.0
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients-good"] for r in rounds] == [4, 4]
    assert set(rounds[-1]["accuracy-width"]) == {"0.25"}  # mixed profiles: iot fragments were trained
    assert "round   2/2" in output  # the console line per round reaches the stream


def test_ray_engine_gives_the_inprocess_records(ray_run: tuple[Path, str], tmp_path: Path) -> None:
    """Same settings and seed on the in-process engine: the same records, up to Flower's message envelopes."""
    from test_determinism import ENVELOPE, MAX_ENVELOPE_BYTES, engine_view, rounds

    from fedshrink.runner import run_inprocess

    local = run_inprocess({**RUN, "output-dir": str(tmp_path), "run-name": "local"}, num_clients=4).run_dir
    a, b = rounds(local), rounds(ray_run[0])
    # each engine's server process has its own torch thread count, so float32 sums on the server (evaluation,
    # fusion) are ordered differently: the losses agree to float rounding carried over rounds, the rest exactly
    def view(r: dict[str, Any]) -> dict[str, Any]:
        v = {k: val for k, val in engine_view(r).items() if k != "loss"}
        return {**v, "train": {k: val for k, val in v.get("train", {}).items() if k != "train-loss"}}

    assert [view(r) for r in a] == [view(r) for r in b]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    assert [r["train"]["train-loss"] for r in b] == pytest.approx([r["train"]["train-loss"] for r in a], rel=1e-4)
    for x, y in zip(a, b, strict=True):
        messages = x["clients-sent"] + x["clients-good"]
        for key in ENVELOPE:
            assert abs(x[key] - y[key]) <= MAX_ENVELOPE_BYTES * messages, (key, x[key], y[key])
        for key in (k for k in x if k.startswith("device-")):
            assert y[key] == pytest.approx(x[key], rel=1e-2), key
