"""Run directories, reports (report.md + PNG plots), run comparison and the console."""

from fedshrink.report.compare import compare_runs
from fedshrink.report.console import RunConsole, human_bytes
from fedshrink.report.report import build_report
from fedshrink.report.rundata import RunData, load_run
from fedshrink.report.rundir import RunDirectory, default_run_name

__all__ = [
    "RunConsole",
    "RunData",
    "RunDirectory",
    "build_report",
    "compare_runs",
    "default_run_name",
    "human_bytes",
    "load_run",
]
