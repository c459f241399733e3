"""Run directories, reports (report.md + PNG plots), run comparison and the console."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedshrink.report.console import RunConsole, human_bytes
from fedshrink.report.rundir import RunDirectory, default_run_name

if TYPE_CHECKING:
    from fedshrink.report.compare import compare_runs
    from fedshrink.report.report import build_report
    from fedshrink.report.rundata import RunData, load_run

# imported when first used: they pull in matplotlib, which a client or a server without reports never needs
_LAZY = {"compare_runs": "fedshrink.report.compare", "build_report": "fedshrink.report.report",
         "RunData": "fedshrink.report.rundata", "load_run": "fedshrink.report.rundata"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
