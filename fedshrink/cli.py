"""``fedshrink`` command line.

``fedshrink run``: one federated run on the embedded default (or any setting
given as ``--run-config "key=value ..."``, as ``flwr run`` takes them), on
either engine:

* ``--engine inprocess`` (default): the ServerApp and ClientApp in this
  process through :class:`~fedshrink.runner.InProcessGrid`; seconds, no Ray.
* ``--engine flower``: Flower's simulation engine (Ray) via ``flwr run``,
  with a SuperLink this command starts and stops; the run's status is read
  from ``flwr ls``, not from ``flwr run``'s exit code.

Settings are validated before anything starts; a bad one prints one line
naming it and its allowed values, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedshrink.config import RunConfig, parse_override
from fedshrink.errors import ConfigError, FedShrinkError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedshrink", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated training job")
    run.add_argument("--engine", choices=("inprocess", "flower"), default="inprocess")
    run.add_argument("--num-clients", type=int, default=20, help="simulated clients (default 20)")
    run.add_argument("--run-config", "-c", action="append", default=[],
                     help='settings as "key=value key2=value2" (repeatable)')
    run.add_argument("--app-dir", type=Path, default=Path(__file__).resolve().parent.parent,
                     help="the Flower app directory for --engine flower (holds pyproject.toml)")
    run.add_argument("--cpus-per-client", type=int, default=1, help="Ray CPUs per client (--engine flower)")
    run.add_argument("--ray-address", default="",
                     help="host:port of a running Ray cluster to join instead of starting one (--engine flower)")
    rep = sub.add_parser("report", help="(re)build report.md and its plots from a run directory")
    rep.add_argument("run_dir", type=Path)
    _target_arguments(rep, "a run directory (e.g. FedAvg's) whose final accuracy minus 1 point is a target, "
                           "and against which the savings are given")
    cmp = sub.add_parser("compare", help="put several runs side by side against a baseline, or sweeps' "
                         "configurations as mean +/- sd over seeds (compare.md + plots)")
    cmp.add_argument("run_dirs", type=Path, nargs="+")
    cmp.add_argument("--out", type=Path, default=Path("runs") / "compare", help="output directory")
    _target_arguments(cmp, "the run the others are measured against (default: the first; run directories only); "
                           "its final accuracy minus 1 point is a target")
    swp = sub.add_parser("sweep", help="run a sweep file's runs in parallel, skip finished ones, summarise (see "
                         "docs/sweeps.md)")
    swp.add_argument("file", type=Path, help="the sweep file (.toml or .yaml)")
    swp.add_argument("--out", type=Path, default=None, help="the sweep directory (default runs/sweeps/<name>)")
    swp.add_argument("--workers", type=int, default=0, help="runs at once (default: the file's, else one per core)")
    swp.add_argument("--ray-address", default="", help="run each run as a Ray task on this cluster (auto, host:port)")
    from fedshrink.deploy.cli import add_parser as add_deploy_parser

    add_deploy_parser(sub)
    return p


def _target_arguments(p: argparse.ArgumentParser, baseline_help: str) -> None:
    p.add_argument("--targets", type=float, nargs="+", default=[], metavar="ACC",
                   help="accuracies in (0, 1] to give bytes up, bytes up + down and rounds to (e.g. 0.9 0.95)")
    p.add_argument("--baseline", type=Path, default=None, metavar="RUN", help=baseline_help)


def _overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        out.update(parse_override(item))
    return out


def _prepare(overrides: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """Validate, then pin run-name and an absolute output-dir so the run can be found."""
    cfg = RunConfig.from_mapping(overrides)
    out = Path(cfg.output.output_dir).expanduser()
    if not out.is_absolute():
        out = Path.cwd() / out
    from fedshrink.report.rundir import unique_run_name

    overrides = {**overrides, "output-dir": str(out), "run-name": unique_run_name(cfg)}
    return RunConfig.from_mapping(overrides), overrides


def cmd_run(args: argparse.Namespace) -> int:
    cfg, overrides = _prepare(_overrides(args.run_config))
    if args.num_clients < 1:
        raise ConfigError("--num-clients", args.num_clients, "an integer >= 1")
    if args.engine == "inprocess":
        if args.ray_address:
            raise ConfigError("--ray-address", args.ray_address, "empty with --engine inprocess (no Ray there)")
        from fedshrink.runner import run_inprocess

        result = run_inprocess(overrides, num_clients=args.num_clients)
        summary = result.summary
    else:
        from fedshrink.data.federated import max_clients
        from fedshrink.report import RunDirectory
        from fedshrink.runner.flower import FlowerRunError, LocalSimulation

        pool = max_clients(cfg.split_spec(), cfg.partition_scheme())
        if args.num_clients > pool:
            raise ConfigError("--num-clients", args.num_clients, f"an integer in [1, {pool}] (the clients the data "
                              "allows)")
        with LocalSimulation(ray_address=args.ray_address) as sim:
            run = sim.run(args.app_dir.resolve(), overrides, num_supernodes=args.num_clients,
                          cpus_per_client=args.cpus_per_client)
        if run.status != "finished:completed":
            raise FlowerRunError(f"run {run.run_id} ended with status {run.status!r}")
        run_dir = Path(cfg.robust.resume).expanduser() if cfg.robust.resume else RunDirectory.resolve(cfg)
        summary = RunDirectory(run_dir).read_summary()
    print(f"fedshrink: {summary['status']}, accuracy {summary['accuracy']:.4f}, run directory {summary['run-dir']}")
    return 0


def _check_run_dirs(paths: list[Path]) -> None:
    for p in paths:
        if not ((p / "metrics.jsonl").is_file() or (p / "plan.json").is_file()):
            raise ConfigError("run directory", str(p), "a directory holding metrics.jsonl (a fedshrink run) or "
                              "plan.json (a sweep)")


def cmd_report(args: argparse.Namespace) -> int:
    from fedshrink.report import build_report, human_bytes
    from fedshrink.report.targets import check_levels

    check_levels(args.targets)
    _check_run_dirs([args.run_dir] + ([args.baseline] if args.baseline else []))
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
    _check_run_dirs(args.run_dirs + ([args.baseline] if args.baseline else []))
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


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedshrink.sweep import load_sweep, run_sweep

    if args.workers < 0:
        raise ConfigError("--workers", args.workers, "an integer >= 0 (0 = the sweep file's, else one per core)")
    spec = load_sweep(args.file)
    words = [str(args.file), *(["--out", str(args.out)] if args.out else [])]
    result = run_sweep(spec, args.out, workers=args.workers, ray_address=args.ray_address,
                       command=" ".join(["fedshrink sweep", *words]))
    return 1 if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command == "deploy":
            from fedshrink.deploy.cli import cmd_deploy

            return cmd_deploy(args)
    except ConfigError as exc:
        print(f"fedshrink: {exc}", file=sys.stderr)
        return 2
    except FedShrinkError as exc:
        print(f"fedshrink: error: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
