"""What the commands share: settings from ``--run-config``, run-directory checks and target arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedshrink.config import RunConfig, parse_override
from fedshrink.errors import ConfigError


def target_arguments(p: argparse.ArgumentParser, baseline_help: str) -> None:
    p.add_argument("--targets", type=float, nargs="+", default=[], metavar="ACC",
                   help="accuracies in (0, 1] to give bytes up, bytes up + down and rounds to (e.g. 0.9 0.95)")
    p.add_argument("--baseline", type=Path, default=None, metavar="RUN", help=baseline_help)


def run_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-config", "-c", action="append", default=[],
                   help='settings as "key=value key2=value2" (repeatable)')


def overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1 b='x'", "c=2"]`` -> ``{"a": 1, "b": "x", "c": 2}`` (the syntax of ``flwr run --run-config``)."""
    out: dict[str, Any] = {}
    for item in items:
        out.update(parse_override(item))
    return out


def prepare(settings: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """Validate, then pin run-name and an absolute output-dir so the run can be found."""
    cfg = RunConfig.from_mapping(settings)
    out = Path(cfg.output.output_dir).expanduser()
    if not out.is_absolute():
        out = Path.cwd() / out
    from fedshrink.report.rundir import unique_run_name

    settings = {**settings, "output-dir": str(out), "run-name": unique_run_name(cfg)}
    return RunConfig.from_mapping(settings), settings


def check_run_dirs(paths: list[Path]) -> None:
    for p in paths:
        if not ((p / "metrics.jsonl").is_file() or (p / "plan.json").is_file()):
            raise ConfigError("run directory", str(p), "a directory holding metrics.jsonl (a fedshrink run) or "
                              "plan.json (a sweep)")
