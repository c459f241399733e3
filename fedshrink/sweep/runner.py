"""Run a sweep: every planned run not finished yet, in parallel, then its summary.

On this machine the runs go to a pool of worker processes (one run per
worker at a time, one torch thread each; ``forkserver`` start, so workers do
not inherit the parent's threads); with one worker they run one after
another in the calling process. With ``ray_address`` each run is a Ray task
(``num_cpus=1``) on that cluster instead: every node must import the same
fedshrink and see the sweep directory at the same path (a shared file
system), since each task writes its run there. The Ray path is not covered by
fedshrink's tests.

A run already finished (its hash's directory holds the ``sweep-run.json``
marker) is skipped, so a sweep that was stopped, even by SIGKILL, resumes
where it stopped; a run killed half-way is made again from scratch (sweeps
do not checkpoint: ``checkpoint = false`` unless the base sets it).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from fedshrink.sweep.execute import RunOrder, RunOutcome, execute_run, init_worker
from fedshrink.sweep.layout import SweepDirectory
from fedshrink.sweep.spec import SweepSpec


@dataclass(frozen=True)
class SweepResult:
    path: Path  # the sweep directory
    skipped: int  # runs found finished
    done: int  # runs made now
    failed: list[RunOutcome]
    summary: Path  # summary.md


def default_sweep_dir(spec: SweepSpec) -> Path:
    return Path("runs") / "sweeps" / spec.name


def run_sweep(spec: SweepSpec, out_dir: Path | str | None = None, *, workers: int = 0, ray_address: str = "",
              command: str = "", say: Callable[[str], None] = print) -> SweepResult:
    """Make every run of ``spec`` that ``out_dir`` does not hold finished, then write the summary."""
    from fedshrink.runner.flower import require_ray
    from fedshrink.sweep.table import write_summary

    if ray_address:  # before anything is written: both ways to Ray fail at start where it is not installed
        require_ray("--ray-address", ray_address)
    if spec.engine == "flower":
        require_ray("engine", spec.engine)
    sweep = SweepDirectory(Path(out_dir) if out_dir is not None else default_sweep_dir(spec))
    sweep.write_plan(spec, command or f"fedshrink sweep {spec.source}")
    unique = spec.unique_runs()
    pending = [r for r in unique if not sweep.finished(r.key)]
    say(f"sweep {spec.name}: {len(spec.configs)} configurations, {len(unique)} runs; "
        f"{len(unique) - len(pending)} finished already, {len(pending)} to make -> {sweep.path}")
    orders = [RunOrder(r, str(sweep.path.resolve()), spec.num_clients, spec.engine) for r in pending]
    failed: list[RunOutcome] = []
    for i, outcome in enumerate(_dispatch(orders, workers or spec.worker_count(), ray_address), start=1):
        r = outcome.run
        state = f"accuracy {outcome.accuracy:.4f}" if outcome.ok and outcome.accuracy is not None else outcome.error
        say(f"[{i}/{len(orders)}] {r.config} seed {r.seed} ({r.key}): "
            f"{'done' if outcome.ok else 'FAILED'}, {state}, {outcome.seconds:.1f} s host wall")
        if not outcome.ok:
            failed.append(outcome)
    summary = write_summary(sweep.path)
    say(f"wrote {summary}")
    return SweepResult(sweep.path, len(unique) - len(pending), len(orders) - len(failed), failed, summary)


def _dispatch(orders: list[RunOrder], workers: int, ray_address: str) -> Iterable[RunOutcome]:
    if not orders:
        return []
    if ray_address:
        return _on_ray(orders, ray_address)
    if workers == 1:
        return _in_this_process(orders)
    return _on_pool(orders, workers)


def _in_this_process(orders: list[RunOrder]) -> Iterable[RunOutcome]:
    """One worker: the runs one after another in this process (on one torch thread, restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    try:
        for order in orders:
            yield execute_run(order)
    finally:
        torch.set_num_threads(threads)


def _on_pool(orders: list[RunOrder], workers: int) -> Iterable[RunOutcome]:
    """The runs on a local process pool, as they finish."""
    ctx = multiprocessing.get_context("forkserver" if sys.platform != "win32" else "spawn")
    if sys.platform != "win32":
        # imported once in the fork server, not once per worker (torch._dynamo alone is seconds: the first
        # optimizer imports it)
        ctx.set_forkserver_preload(["fedshrink.sweep.execute", "fedshrink.runner", "fedshrink.server_app",
                                    "fedshrink.client_app", "torch._dynamo"])
    with ProcessPoolExecutor(max_workers=min(workers, len(orders)), mp_context=ctx, initializer=init_worker,
                             initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(execute_run, o) for o in orders]
        for future in as_completed(futures):
            yield future.result()


def _on_ray(orders: list[RunOrder], address: str) -> Iterable[RunOutcome]:
    """The runs as Ray tasks on the cluster at ``address`` (``auto``, ``host:port``; ``local`` starts one here).

    Not in fedshrink's test suite (see the module doc for what the cluster needs); tried by hand with
    ``local`` only.
    """
    import ray

    ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
             runtime_env={"env_vars": {"FLWR_TELEMETRY_ENABLED": "0",
                                       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}})
    try:
        task = ray.remote(num_cpus=1)(execute_run)
        pending = [task.remote(o) for o in orders]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        ray.shutdown()  # disconnects from a cluster; stops the instance ``local`` started
