"""One run of a sweep, where it runs: a pool worker on this machine, or a Ray task on a cluster.

:func:`execute_run` removes what a killed attempt left, logs ``start``, makes
the run in ``<sweep dir>/runs/<hash>`` on the sweep's engine, writes the
``sweep-run.json`` marker last and logs ``done`` (or ``failed`` with the
error's line). It runs on one torch thread: the runs themselves are the
parallelism, and one thread is what repeats exactly
(:mod:`fedshrink.report.determinism`).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshrink.report.rundir import write_json_atomic
from fedshrink.sweep.layout import MARKER, SweepDirectory, now
from fedshrink.sweep.spec import PlannedRun

APP_DIR = Path(__file__).resolve().parents[2]  # the Flower app (pyproject.toml) for engine "flower"


@dataclass(frozen=True)
class RunOrder:
    """What a worker needs to make one run (picklable)."""

    run: PlannedRun
    sweep_dir: str
    num_clients: int
    engine: str


@dataclass(frozen=True)
class RunOutcome:
    run: PlannedRun
    ok: bool
    seconds: float  # host wall time of the attempt (measured)
    accuracy: float | None = None
    error: str = ""


def init_worker(sweep_pid: int) -> None:
    """A pool worker: one torch thread, no Flower telemetry, and it dies with the sweep process ``sweep_pid``."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    threading.Thread(target=_die_with, args=(sweep_pid,), daemon=True, name="fedshrink-sweep-watch").start()


def _identity(pid: int) -> tuple[str, str] | None:
    """``(state, start)`` of process ``pid``, or None when there is none.

    ``start`` tells a process from a later one given the same pid. On Linux it is the start time in clock
    ticks since boot (``/proc/<pid>/stat``), which no change of the wall clock moves: psutil's
    ``create_time`` is boot time plus that, and the kernel's boot time moves when the clock is stepped or
    slewed (a virtual machine's clock does), which once made every pool worker take the sweep for dead.
    """
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:
            return None
        return fields[0], fields[19]  # state (field 3), starttime (field 22)
    import psutil  # no /proc (not Linux): psutil, its create_time to the second

    try:
        p = psutil.Process(pid)
        return ("Z" if p.status() == psutil.STATUS_ZOMBIE else "R"), str(round(p.create_time()))
    except psutil.NoSuchProcess:
        return None


def _die_with(pid: int, every: float = 0.5) -> None:
    """SIGKILL this process once process ``pid`` is gone (or a zombie).

    A killed sweep must not leave a worker finishing its run behind it, writing into the sweep directory
    while a restarted sweep makes the same run again. The worker's parent is the fork server, which
    itself waits for the workers, so the parent-death signal cannot be used; the sweep is watched instead.
    """
    first = _identity(pid)
    while first is not None and first[0] != "Z":
        now = _identity(pid)
        if now is None or now[0] == "Z" or now[1] != first[1]:
            break
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGKILL)


def execute_run(order: RunOrder) -> RunOutcome:
    """Make one planned run from scratch (see the module doc); never raises for a failed run."""
    import torch

    torch.set_num_threads(1)
    sweep = SweepDirectory(order.sweep_dir)
    run = order.run
    path = sweep.run_dir(run.key)
    if path.exists():  # a killed attempt, or a failed one: start again
        shutil.rmtree(path)
    sweep.log("start", run)
    t0 = time.perf_counter()
    try:
        summary = _make(order, path)
    except Exception as exc:  # a run that fails is recorded and the sweep goes on
        seconds = time.perf_counter() - t0
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        sweep.log("failed", run, seconds=seconds, error=error)
        return RunOutcome(run, False, seconds, error=error)
    seconds = time.perf_counter() - t0
    write_json_atomic(path / MARKER, {"key": run.key, "config": run.config, "seed": run.seed,
                                      "engine": order.engine, "num-clients": order.num_clients,
                                      "host-seconds": seconds, "finished": now()})
    sweep.log("done", run, seconds=seconds)
    return RunOutcome(run, True, seconds, accuracy=summary.get("accuracy"))


def _make(order: RunOrder, path: Path) -> dict[str, Any]:
    settings = {**order.run.settings, "output-dir": str(path.parent), "run-name": path.name}
    if order.engine == "inprocess":
        from fedshrink.runner import run_inprocess

        return run_inprocess(settings, num_clients=order.num_clients).summary
    from fedshrink.report import RunDirectory
    from fedshrink.runner.flower import FlowerRunError, LocalSimulation

    with LocalSimulation() as sim:
        flower = sim.run(APP_DIR, settings, num_supernodes=order.num_clients, echo=False)
    if flower.status != "finished:completed":
        raise FlowerRunError(f"run {flower.run_id} ended with status {flower.status!r}")
    return RunDirectory(path).read_summary()
