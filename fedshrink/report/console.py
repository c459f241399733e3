"""Console output of a run: a rich progress bar over rounds and a final summary table.

Interface for the ServerApp::

    console = RunConsole(quiet=cfg.output.quiet)
    console.start(cfg.federation.num_server_rounds, title="digits / cnn")
    for each round: console.round(record)        # the metrics.jsonl record of the round
    console.finish(summary)                       # the summary.json dict

The bar shows the round, live accuracy and the cumulative bytes up and down
(from the records' ``bytes-up`` / ``bytes-down`` keys when present). The
table lists accuracy, bytes up and down, energy (with its method: measured or
estimated) and the student's size when the summary has it. ``quiet=True``
prints nothing (CI); without a terminal rich prints no live bar, only the
final table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

_UNITS = ("B", "kB", "MB", "GB", "TB")


def human_bytes(n: float | None) -> str:
    """``1234567`` -> ``'1.23 MB'`` (SI units, 1 kB = 1000 B); None -> ``'n/a'``."""
    if n is None:
        return "n/a"
    value, unit = float(n), 0
    while abs(value) >= 1000 and unit < len(_UNITS) - 1:
        value /= 1000
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:.3g} {_UNITS[unit]}"


def energy_text(joules: float | None, estimated: bool | None, method: str | None = None) -> str:
    """``'12.3 J (estimated: cpu-time x W/core)'``; a measured figure names its source."""
    if joules is None:
        return "n/a"
    text = f"{joules:.4g} J"
    if method:
        return f"{text} ({method})"
    if estimated:
        return f"{text} (estimated: cpu-time x W/core)"
    return f"{text} (measured)" if estimated is not None else text


def student_size_text(summary: Mapping[str, Any]) -> str:
    """The student's size from a summary (``student-params`` / ``student-bytes``), or 'n/a'."""
    params, nbytes = summary.get("student-params"), summary.get("student-bytes")
    student = summary.get("student")
    if isinstance(student, Mapping):
        params = params if params is not None else student.get("params")
        nbytes = nbytes if nbytes is not None else student.get("bytes")
    parts = []
    if params is not None:
        parts.append(f"{int(params):,} params")
    if nbytes is not None:
        parts.append(human_bytes(nbytes))
    return ", ".join(parts) if parts else "n/a"


class RunConsole:
    """Progress bar over rounds plus a final table; silent when ``quiet``."""

    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.energy_j = 0.0
        self.energy_estimated: bool | None = None
        self.have_bytes = False
        self.have_energy = False
        self.last_accuracy: float | None = None

    def start(self, total_rounds: int, *, title: str = "rounds") -> None:
        self.bytes_up = self.bytes_down = 0
        self.energy_j, self.energy_estimated = 0.0, None
        self.have_bytes = self.have_energy = False
        if self.quiet:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("up {task.fields[up]}  down {task.fields[down]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(title, total=total_rounds, acc="-", up="-", down="-")

    def say(self, line: str) -> None:
        """A plain line (printed above the live bar when there is one); nothing when quiet."""
        if not self.quiet:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def round(self, record: Mapping[str, Any]) -> None:
        """Advance by one round; ``record`` is the round's metrics.jsonl record."""
        if "bytes-up" in record:
            self.have_bytes = True
            self.bytes_up += int(record["bytes-up"])
            self.bytes_down += int(record.get("bytes-down", 0))
        if "energy-j" in record:
            self.have_energy = True
            self.energy_j += float(record["energy-j"])
            est = bool(record.get("energy-estimated", True))
            self.energy_estimated = est or bool(self.energy_estimated)
        if "accuracy" in record:
            self.last_accuracy = float(record["accuracy"])
        if self._progress is None or self._task is None:
            return
        acc = f"{self.last_accuracy:.4f}" if self.last_accuracy is not None else "-"
        up = human_bytes(self.bytes_up) if self.have_bytes else "-"
        down = human_bytes(self.bytes_down) if self.have_bytes else "-"
        self._progress.update(self._task, advance=1, acc=acc, up=up, down=down)

    def summary_table(self, summary: Mapping[str, Any]) -> Table:
        table = Table(title="fedshrink run summary", show_header=True)
        table.add_column("figure")
        table.add_column("value", justify="right")
        acc = summary.get("accuracy", self.last_accuracy)
        table.add_row("accuracy (final)", f"{acc:.4f}" if isinstance(acc, int | float) else "n/a")
        best = summary.get("best-accuracy")
        if isinstance(best, int | float):
            table.add_row("accuracy (best)", f"{best:.4f}")
        res = summary.get("resources")
        up = summary.get("bytes-up", self.bytes_up if self.have_bytes else None)
        down = summary.get("bytes-down", self.bytes_down if self.have_bytes else None)
        table.add_row("bytes up", human_bytes(up))
        table.add_row("bytes down", human_bytes(down))
        energy = summary.get("energy-j", self.energy_j if self.have_energy else None)
        est = summary.get("energy-estimated", self.energy_estimated)
        method = None
        if isinstance(res, Mapping) and res.get("energy-methods"):
            method = " + ".join(res["energy-methods"])
        table.add_row("energy", energy_text(energy, est, method))
        table.add_row("student size", student_size_text(summary))
        if isinstance(summary.get("seconds"), int | float):
            table.add_row("wall time", f"{summary['seconds']:.1f} s")
        if summary.get("run-dir"):
            table.add_row("run directory", str(summary["run-dir"]))
        return table

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Stop the bar and print the summary table (nothing when quiet)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.quiet:
            return
        self.console.print(self.summary_table(summary))
