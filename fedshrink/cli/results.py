"""``fedshrink report`` (one run's report.md and plots) and ``fedshrink compare`` (runs or sweeps side by side)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedshrink.cli.common import check_run_dirs, target_arguments
from fedshrink.errors import ConfigError


def add_parsers(sub: Any) -> None:
    rep = sub.add_parser("report", help="(re)build report.md and its plots from a run directory")
    rep.add_argument("run_dir", type=Path)
    target_arguments(rep, "a run directory (e.g. FedAvg's) whose final accuracy minus 1 point is a target, "
                          "and against which the savings are given")
    rep.set_defaults(handler=cmd_report)
    cmp = sub.add_parser("compare", help="put several runs side by side against a baseline, or sweeps' "
                         "configurations as mean +/- sd over seeds (compare.md + plots)")
    cmp.add_argument("run_dirs", type=Path, nargs="+")
    cmp.add_argument("--out", type=Path, default=Path("runs") / "compare", help="output directory")
    target_arguments(cmp, "the run the others are measured against (default: the first; run directories only); "
                          "its final accuracy minus 1 point is a target")
    cmp.set_defaults(handler=cmd_compare)


def cmd_report(args: argparse.Namespace) -> int:
    from fedshrink.report import build_report, human_bytes
    from fedshrink.report.targets import check_levels

    check_levels(args.targets)
    check_run_dirs([args.run_dir] + ([args.baseline] if args.baseline else []))
    report = build_report(args.run_dir, targets=args.targets, baseline=args.baseline)
    print(f"wrote {report.path} and {len(report.plots)} plots" +
          (f"; skipped: {', '.join(report.skipped)}" if report.skipped else ""))
    for r in report.reaches:
        where = f"round {r.round}, {human_bytes(r.bytes_up)} up" if r.reached else "never"
        print(f"  target {r.target.level:.4f} ({r.target.source}): {where}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedshrink.report import compare_runs
    from fedshrink.report.targets import check_levels
    from fedshrink.sweep.layout import SweepDirectory
    from fedshrink.sweep.table import compare_entries

    check_levels(args.targets)
    check_run_dirs(args.run_dirs + ([args.baseline] if args.baseline else []))
    if any(SweepDirectory.is_sweep(p) for p in args.run_dirs):
        if args.baseline is not None:
            raise ConfigError("--baseline", str(args.baseline), "no baseline when a sweep directory is compared "
                              "(its configurations are compared as mean +/- sd over seeds)")
        path, plots = compare_entries(args.run_dirs, args.out, targets=args.targets)
        print(f"wrote {path} and {len(plots)} plots")
        return 0
    comparison = compare_runs(args.run_dirs, args.out, baseline=args.baseline, targets=args.targets)
    print(f"wrote {comparison.path} and {len(comparison.plots)} plots (baseline {comparison.baseline.name}; "
          f"settings that differ: {', '.join(comparison.settings) or 'none'})")
    return 0
