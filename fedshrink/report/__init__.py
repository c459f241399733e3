"""Run directories and, later, reports built from them."""

from fedshrink.report.rundir import RunDirectory, default_run_name

__all__ = ["RunDirectory", "default_run_name"]
