"""A sweep killed with SIGKILL part-way resumes: every run done exactly once, and its table matches the runs."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from fedshrink.sweep import load_sweep, open_sweep, run_sweep
from fedshrink.sweep.layout import MARKER, SweepDirectory

ROOT = Path(__file__).resolve().parents[2]
SWEEP = """
name = "resume"
seeds = [1, 2]
num-clients = 4
workers = 1
targets = [0.2]

[base]
num-server-rounds = 2
local-epochs = 1
distill = false
model = "mlp"

[grid]
learning-rate = [0.01, 0.05]
"""


def _wait_for_done(sweep: SweepDirectory, proc: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(e["event"] == "done" for e in sweep.events()):
        assert proc.poll() is None, "the sweep ended before any run finished"
        assert time.monotonic() < deadline, "no run finished in time"
        time.sleep(0.2)


@pytest.mark.e2e
def test_killed_sweep_resumes_and_runs_each_run_once(tmp_path: Path) -> None:
    f = tmp_path / "resume.toml"
    f.write_text(SWEEP)
    out = tmp_path / "sweep"
    sweep = SweepDirectory(out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fedshrink.cli", "sweep", str(f), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_done(sweep, proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        os.kill(proc.pid, signal.SIGKILL)  # the sweep process only: its workers must not outlive it
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert alive == [], f"workers left running after the sweep was killed: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, should anything be left
        except ProcessLookupError:
            pass
    first = Counter(e["key"] for e in sweep.events() if e["event"] == "done")
    assert 1 <= sum(first.values()) < 4

    result = run_sweep(load_sweep(f), out, say=lambda _: None)
    assert result.failed == [] and result.skipped == sum(first.values())
    planned = {r.key for r in load_sweep(f).runs}
    assert len(planned) == 4
    events = list(sweep.events())
    done = Counter(e["key"] for e in events if e["event"] == "done")
    assert done == Counter(planned)  # each run finished exactly once, over both invocations
    starts = Counter(e["key"] for e in events if e["event"] == "start")
    assert all(starts[k] == 1 for k in first)  # finished runs were not made again
    assert {p.name for p in sweep.runs_dir.iterdir()} == planned
    for key in planned:  # a run killed half-way was made again from scratch, not appended to
        assert (sweep.run_dir(key) / MARKER).is_file()
        assert [json.loads(x)["round"] for x in (sweep.run_dir(key) / "metrics.jsonl").read_text().splitlines()] \
            == [1, 2]

    table = json.loads((out / "summary.json").read_text())["configs"]
    runs = open_sweep(out)
    assert [c["config"] for c in table] == ["learning-rate=0.01", "learning-rate=0.05"]
    for row in table:
        summaries = [json.loads((r.path / "summary.json").read_text()) for r in runs.of(row["config"]).values()]
        accs = [s["accuracy"] for s in summaries]
        assert row["done"] == row["planned"] == 2
        assert row["accuracy"]["mean"] == pytest.approx(statistics.mean(accs))
        assert row["accuracy"]["sd"] == pytest.approx(statistics.stdev(accs))
        assert row["bytes-up"]["mean"] == pytest.approx(statistics.mean(s["bytes-up"] for s in summaries))
    md = (out / "summary.md").read_text()
    assert f"| learning-rate=0.01 | 2/2 | {100 * table[0]['accuracy']['mean']:.2f} ± " in md
    assert {p.name for p in (out / "plots").iterdir()} == {"final_accuracy.png", "accuracy_vs_round.png",
                                                          "accuracy_vs_bytes.png"}


def test_a_worker_watches_the_sweep_by_its_start_in_ticks_not_the_wall_clock() -> None:
    """The watch tells the sweep process from a later one with its pid by a start time the wall clock cannot
    move (a stepped or slewed clock once made every worker take a live sweep for dead)."""
    import os
    import subprocess
    import sys

    from fedshrink.sweep.execute import _identity

    me = _identity(os.getpid())
    assert me is not None and me[0] in "RS" and me == _identity(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert _identity(child.pid) is None  # reaped: gone
    if os.path.exists("/proc/self/stat"):
        with open(f"/proc/{os.getpid()}/stat") as fh:
            assert fh.read().rsplit(")", 1)[1].split()[19] == me[1]  # ticks since boot, as the kernel counts
