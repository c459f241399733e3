"""A run's records sent on to experiment trackers: TensorBoard and MLflow.

One setting switches them on: ``tracking = "tensorboard"``, ``"mlflow"`` or
``"tensorboard+mlflow"`` (``""``, the default, sends nothing and imports
neither package). Both come with ``pip install 'fedshrink[tracking]'``; a
tracker asked for but not installed fails the run at start, before its
directory is made, with one line naming the setting and the extra.

What each receives, from the recorder (:class:`~fedshrink.report.recorder.RunRecorder`):

* the resolved settings, once at start (TensorBoard: a text table; MLflow: params);
* every round's numbers from ``metrics.jsonl`` at step = round, nested ones
  flattened with ``/`` (``train/train-loss``, ``accuracy-width/0.5``);
* every client's numbers from the round's ``clients.csv`` rows, under
  ``client/<partition-id>/<column>`` (host-measured and modelled device figures alike, named as in the CSV);
* at the end, the summary's numbers, and the artefacts the run left in its
  directory: ``report.md`` and its plots, ``student.onnx``, ``model_card.json``
  (MLflow artefacts; TensorBoard gets ``report.md`` as text, the rest stays beside its event files).

Where: TensorBoard event files go to ``<run dir>/tensorboard/``
(:class:`torch.utils.tensorboard.SummaryWriter`). MLflow logs through
:class:`mlflow.tracking.MlflowClient` to ``mlflow-uri``; empty means a local
file store in ``<run dir>/mlruns/`` (``mlflow ui --backend-store-uri <run dir>/mlruns``).
MLflow 3 keeps its file store in maintenance mode behind
``MLFLOW_ALLOW_FILE_STORE``; fedshrink opts in for that default store only
(a database store such as ``sqlite:///mlflow.db`` costs seconds of schema
set-up per new file, which a run directory of its own would pay every run).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fedshrink.errors import ConfigError
from fedshrink.settings import Section, Value, accepted_by, option, satisfies

EXTRA = "pip install 'fedshrink[tracking]'"
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # tracker -> the module it needs
TENSORBOARD_DIR = "tensorboard"
MLRUNS_DIR = "mlruns"
ARTEFACTS = ("report.md", "student.onnx", "model_card.json", "summary.json", "config.json")
_WORDS = "'' (none), or 'tensorboard', 'mlflow', joined by '+' for both"


def parse_tracking(value: str) -> tuple[str, ...]:
    """The trackers a ``tracking`` value names, in order: ``"tensorboard+mlflow"`` -> both."""
    if value == "":
        return ()
    names = tuple(value.split("+"))
    if any(n not in PACKAGES for n in names) or len(set(names)) != len(names):
        raise ConfigError("tracking", value, _WORDS)
    return names


@dataclass(frozen=True)
class TrackingSettings(Section):
    title: ClassVar[str] = "tracking"

    tracking: str = option("", f"also send the run's metrics, settings and artefacts to experiment trackers "
                           f"(needs {EXTRA})", rule=accepted_by(parse_tracking, _WORDS))
    mlflow_uri: str = option("", "MLflow tracking URI (sqlite:///mlflow.db, http://127.0.0.1:5000, ...); "
                             "'' = a file store in the run directory (mlruns/)")
    mlflow_experiment: str = option("fedshrink", "the MLflow experiment runs are logged in",
                                    rule=satisfies(lambda v: v.strip() != "", "a non-empty name"))

    def trackers(self) -> tuple[str, ...]:
        return parse_tracking(self.tracking)


def require_trackers(settings: TrackingSettings) -> None:
    """Fail with one line when a tracker asked for is not installed (call before anything is written)."""
    for name in settings.trackers():
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError("tracking", settings.tracking,
                              f"trackers that are installed ({name} is not: {EXTRA})")


# -- what is sent (pure) ---------------------------------------------------------------
def scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a record, nested keys joined with ``/``; strings and lists are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


def client_scalars(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``client/<partition-id>/<column>`` for every numeric cell of a round's ``clients.csv`` rows."""
    out: dict[str, float] = {}
    for row in rows:
        pid = row.get("partition-id")
        cells = {k: v for k, v in row.items() if k not in ("round", "partition-id")}
        out.update(scalars(cells, f"client/{pid}/"))
    return out


def artefacts(run_dir: Path) -> list[Path]:
    """The files a run leaves for people: :data:`ARTEFACTS` that exist, and the report's plots."""
    found = [run_dir / name for name in ARTEFACTS if (run_dir / name).is_file()]
    return found + sorted((run_dir / "plots").glob("*.png"))


# -- trackers -------------------------------------------------------------------------
class Tracker(ABC):
    """One destination of a run's records."""

    @abstractmethod
    def settings(self, values: Mapping[str, Value]) -> None: ...

    @abstractmethod
    def round(self, rnd: int, numbers: Mapping[str, float]) -> None: ...

    @abstractmethod
    def finish(self, summary: Mapping[str, float], files: Sequence[Path], *, failed: bool) -> None: ...


class TensorBoardTracker(Tracker):
    """Event files in ``<run dir>/tensorboard`` through torch's :class:`SummaryWriter`."""

    def __init__(self, run_dir: Path, settings: TrackingSettings) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def settings(self, values: Mapping[str, Value]) -> None:
        table = "\n".join(["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in sorted(values.items()))])
        self.writer.add_text("settings", table, global_step=0)

    def round(self, rnd: int, numbers: Mapping[str, float]) -> None:
        for tag, value in numbers.items():
            self.writer.add_scalar(tag, value, global_step=rnd)
        self.writer.flush()

    def finish(self, summary: Mapping[str, float], files: Sequence[Path], *, failed: bool) -> None:
        for tag, value in summary.items():
            self.writer.add_scalar(f"summary/{tag}", value, global_step=0)
        report = next((f for f in files if f.name == "report.md"), None)
        if report is not None:
            self.writer.add_text("report", report.read_text(), global_step=0)
        self.writer.close()


@contextlib.contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3's file store refuses to open unless ``MLFLOW_ALLOW_FILE_STORE`` is set (see the module doc)."""
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_ALLOW_FILE_STORE"]
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


class MlflowTracker(Tracker):
    """One MLflow run per fedshrink run, through :class:`MlflowClient` (no global active run)."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch call
    PARAMS = 100  # ... and of params

    def __init__(self, run_dir: Path, settings: TrackingSettings) -> None:
        from mlflow.tracking import MlflowClient

        uri = settings.mlflow_uri or (run_dir / MLRUNS_DIR).resolve().as_uri()
        guard = _file_store_allowed() if not settings.mlflow_uri else contextlib.nullcontext()
        with guard:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(settings.mlflow_experiment)
            exp_id = experiment.experiment_id if experiment else self.client.create_experiment(
                settings.mlflow_experiment)
            self.run_id: str = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
        self.uri = uri

    def settings(self, values: Mapping[str, Value]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in sorted(values.items())]
        for i in range(0, len(params), self.PARAMS):
            self.client.log_batch(self.run_id, params=params[i:i + self.PARAMS])

    def round(self, rnd: int, numbers: Mapping[str, float]) -> None:
        self._metrics(numbers, step=rnd)

    def _metrics(self, numbers: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numbers.items()]
        for i in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + self.BATCH])

    def finish(self, summary: Mapping[str, float], files: Sequence[Path], *, failed: bool) -> None:
        self._metrics({f"summary/{k}": v for k, v in summary.items()}, step=0)
        for f in files:
            self.client.log_artifact(self.run_id, str(f), artifact_path="plots" if f.suffix == ".png" else None)
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


TRACKERS: dict[str, Callable[[Path, TrackingSettings], Tracker]] = {"tensorboard": TensorBoardTracker,
                                                                     "mlflow": MlflowTracker}


class RunTrackers:
    """The trackers a run's settings ask for, fed by the recorder; with none asked for, every call does nothing."""

    def __init__(self, trackers: Sequence[Tracker], run_dir: Path) -> None:
        self.trackers = list(trackers)
        self.run_dir = run_dir

    @classmethod
    def start(cls, settings: TrackingSettings, run_dir: Path, values: Mapping[str, Value]) -> RunTrackers:
        """Open every tracker ``settings`` names and send it the resolved settings ``values``."""
        require_trackers(settings)
        trackers = [TRACKERS[name](run_dir, settings) for name in settings.trackers()]
        for t in trackers:
            t.settings(values)
        return cls(trackers, run_dir)

    def round(self, record: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]]) -> None:
        if not self.trackers:
            return
        numbers = {**scalars(record), **client_scalars(client_rows)}
        for t in self.trackers:
            t.round(int(record["round"]), numbers)

    def finish(self, summary: Mapping[str, Any], *, failed: bool = False, report: bool = False) -> None:
        """Send the summary's numbers and the artefacts, and close (a failed run is marked so in MLflow).

        ``report``: build ``report.md`` first so that it goes too (the ServerApp builds it again after the
        run, from the same files, to the same result).
        """
        if not self.trackers:
            return
        if report and not failed:
            from fedshrink.report.report import build_report

            build_report(self.run_dir)
        numbers = scalars({k: v for k, v in summary.items() if k != "resources"})
        files = artefacts(self.run_dir)
        for t in self.trackers:
            t.finish(numbers, files, failed=failed)
        self.trackers = []
