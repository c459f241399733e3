"""Reading a run directory back: its files as plain data, and the series the plots draw.

Inputs (only ``metrics.jsonl`` is required):

* ``config.json``, ``summary.json``, ``metrics.jsonl`` (see :mod:`fedshrink.report.rundir`); round records may
  carry ``bytes-up``, ``bytes-down``, ``bytes-up-uncompressed`` (the same replies with their arrays as fp32),
  ``clients-good``, ``energy-j`` (+ ``energy-estimated``), ``aggregation-s``, ``<refiner>-seconds``,
  ``distillation-s`` and the modelled ``device-time-s`` / ``device-energy-j``;
* ``clients.csv`` (:class:`~fedshrink.resources.ledger.ResourceLedger`): per-client per-round resource records;
* ``pareto.json`` (optional): the student search's candidates (:mod:`fedshrink.report.pareto`).

A file that is absent or unreadable becomes a note; nothing here knows any data set by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from fedshrink.errors import ConfigError
from fedshrink.report.costs import cumulative_full_model_fp32
from fedshrink.report.pareto import ParetoPoint, read_pareto
from fedshrink.report.plots import Curve
from fedshrink.resources.ledger import CLIENTS_CSV, ClientRound, ResourceLedger

PARETO_JSON = "pareto.json"
SUMMARY_JSON = "summary.json"


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]
    clients: list[ClientRound] | None
    pareto: list[ParetoPoint] | None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def dataset(self) -> str:
        """The data set's name as the run was configured (``config.json``, else ``summary.json``), or '?'."""
        return str(self.config.get("dataset", self.summary.get("dataset", "?")))

    @property
    def data_description(self) -> str:
        """The data set's name with its classes and input shape when the run recorded them."""
        classes, shape = self.summary.get("classes"), self.summary.get("input-shape")
        if classes is None or not isinstance(shape, list):
            return self.dataset
        return f"{self.dataset} ({classes} classes, input {'x'.join(map(str, shape))})"

    def curve(self) -> Curve:
        return run_curve(self)


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.exists():
        notes.append(f"{path.name} is absent")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        notes.append(f"{path.name} is not valid JSON ({exc})")
        return None


def load_run(path: Path | str) -> RunData:
    """Read a run directory; raises ConfigError when it has no ``metrics.jsonl``."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError("run", str(path), "a run directory holding metrics.jsonl")
    notes: list[str] = []
    rounds = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    config = _read_json(path / "config.json", notes) or {}
    summary = _read_json(path / SUMMARY_JSON, notes) or {}
    clients: list[ClientRound] | None = None
    if (path / CLIENTS_CSV).is_file():
        try:
            clients = ResourceLedger.read_csv(path / CLIENTS_CSV).records
        except ConfigError as exc:
            notes.append(f"{CLIENTS_CSV} unreadable: {exc}")
    pareto: list[ParetoPoint] | None = None
    if (path / PARETO_JSON).is_file():
        try:
            pareto = read_pareto(path / PARETO_JSON)
        except (ConfigError, ValueError, TypeError) as exc:
            notes.append(f"{PARETO_JSON} unreadable: {exc}")
    return RunData(path, dict(config), rounds, dict(summary), clients, pareto, notes)


def cumulative(rounds: Sequence[Mapping[str, Any]], key: str) -> list[float] | None:
    """Running sum of ``key`` over the round records, or None if any record lacks it."""
    if not rounds or any(key not in r for r in rounds):
        return None
    return list(accumulate(float(r[key]) for r in rounds))


def run_curve(run: RunData) -> Curve:
    rounds = [r for r in run.rounds if "accuracy" in r]
    return Curve(
        rounds=[int(r["round"]) for r in rounds],
        accuracy=[float(r["accuracy"]) for r in rounds],
        bytes_up=cumulative(rounds, "bytes-up"),
        bytes_up_uncompressed=cumulative(rounds, "bytes-up-uncompressed"),
        bytes_up_full_fp32=cumulative_full_model_fp32(rounds, run.summary),
    )
