"""A sweep's directory: its plan, its runs named by hash, its log, its summary.

::

    <sweep dir>/
      plan.json           the sweep (name, clients, engine, targets, source file, command) and every planned run
      sweep.toml          a copy of the sweep file as it was run (sweep.yaml for a YAML file)
      runs/<hash>/        one run directory per distinct settings hash (config.json, metrics.jsonl, ...)
      runs/<hash>/sweep-run.json   written last, when the run finished: what marks it done
      runs.log            one JSON line per event: start, done, failed (pid, time, host seconds)
      summary.md, summary.json, plots/*.png   the table and comparison plots (fedshrink.sweep.table)

A run counts as finished when ``sweep-run.json`` exists and its
``summary.json`` says ``completed``. A directory without the marker is what a
killed run left; it is removed and the run made again from scratch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedshrink.errors import ConfigError
from fedshrink.report.rundir import write_json_atomic
from fedshrink.sweep.spec import PlannedRun, SweepSpec

PLAN = "plan.json"
RUNS = "runs"
LOG = "runs.log"
MARKER = "sweep-run.json"


def append_line(path: Path, obj: Mapping[str, Any]) -> None:
    """One JSON line appended in a single write (O_APPEND: lines of concurrent writers do not interleave)."""
    data = (json.dumps(obj, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class SweepDirectory:
    """Reader and writer of one sweep's directory (see the module doc)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def runs_dir(self) -> Path:
        return self.path / RUNS

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    def run_dir(self, key: str) -> Path:
        return self.runs_dir / key

    @staticmethod
    def is_sweep(path: Path | str) -> bool:
        return (Path(path) / PLAN).is_file()

    # -- writing ------------------------------------------------------------------------------
    def write_plan(self, spec: SweepSpec, command: str) -> None:
        """``plan.json`` and the copy of the sweep file (rewritten at every start: runs are found by hash)."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        suffix = ".yaml" if spec.source.endswith((".yaml", ".yml")) else ".toml"
        if spec.text:
            (self.path / f"sweep{suffix}").write_text(spec.text)
        write_json_atomic(self.path / PLAN, {
            "name": spec.name, "description": spec.description, "source": spec.source, "command": command,
            "num-clients": spec.num_clients, "engine": spec.engine, "targets": list(spec.targets),
            "runs": [r.to_json() for r in spec.runs],
        })

    def log(self, event: str, run: PlannedRun, **extra: Any) -> None:
        append_line(self.log_path, {"event": event, "key": run.key, "config": run.config, "seed": run.seed,
                                    "pid": os.getpid(), "time": now(), **extra})

    # -- reading ------------------------------------------------------------------------------
    def read_plan(self) -> dict[str, Any]:
        if not self.is_sweep(self.path):
            raise ConfigError("sweep directory", str(self.path),
                              f"a directory holding {PLAN} (made by fedshrink sweep)")
        return dict(json.loads((self.path / PLAN).read_text()))

    def planned(self) -> list[PlannedRun]:
        return [PlannedRun.from_json(d) for d in self.read_plan()["runs"]]

    def finished(self, key: str) -> bool:
        run = self.run_dir(key)
        if not (run / MARKER).is_file() or not (run / "summary.json").is_file():
            return False
        try:
            return bool(json.loads((run / "summary.json").read_text()).get("status") == "completed")
        except json.JSONDecodeError:
            return False

    def events(self) -> Iterator[dict[str, Any]]:
        """The log's events, in order (a line cut short by a kill is skipped)."""
        if not self.log_path.is_file():
            return
        for line in self.log_path.read_text().splitlines():
            try:
                yield dict(json.loads(line))
            except json.JSONDecodeError:
                continue
