"""Settings of a run's outputs: where its directory goes, its name, the console."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.settings import Section, option, satisfies


def _run_name_ok(v: str) -> bool:
    return v == "" or (all(c.isalnum() or c in "-_." for c in v) and not v.startswith("."))


@dataclass(frozen=True)
class OutputSettings(Section):
    title: ClassVar[str] = "outputs"

    output_dir: str = option("runs", "where run directories go (relative to the directory the run started from)",
                             rule=satisfies(lambda v: v != "", "a non-empty directory path"))
    run_name: str = option("", "the run directory's name; empty = timestamped",
                           rule=satisfies(_run_name_ok, "'' (a timestamped name) or letters, digits, '-', '_', '.'"))
    quiet: bool = option(False, "no per-round console lines")
    report: bool = option(True, "build report.md and its plots from the run directory when the run ends")
