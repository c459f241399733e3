"""``fedshrink run``: one federated run on the embedded default (or any setting
given as ``--run-config "key=value ..."``, as ``flwr run`` takes them), on
either engine:

* ``--engine inprocess`` (default): the ServerApp and ClientApp in this
  process through :class:`~fedshrink.runner.InProcessGrid`; seconds, no Ray.
* ``--engine flower``: Flower's simulation engine (Ray) via ``flwr run``,
  with a SuperLink this command starts and stops; the run's status is read
  from ``flwr ls``, not from ``flwr run``'s exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedshrink.cli.common import overrides, prepare, run_config_argument
from fedshrink.errors import ConfigError

APP_DIR = Path(__file__).resolve().parents[2]


def add_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run one federated training job")
    run.add_argument("--engine", choices=("inprocess", "flower"), default="inprocess")
    run.add_argument("--num-clients", type=int, default=20, help="simulated clients (default 20)")
    run_config_argument(run)
    run.add_argument("--app-dir", type=Path, default=APP_DIR,
                     help="the Flower app directory for --engine flower (holds pyproject.toml)")
    run.add_argument("--cpus-per-client", type=int, default=1, help="Ray CPUs per client (--engine flower)")
    run.add_argument("--ray-address", default="",
                     help="host:port of a running Ray cluster to join instead of starting one (--engine flower)")
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    cfg, settings = prepare(overrides(args.run_config))
    if args.num_clients < 1:
        raise ConfigError("--num-clients", args.num_clients, "an integer >= 1")
    if args.engine == "inprocess":
        if args.ray_address:
            raise ConfigError("--ray-address", args.ray_address, "empty with --engine inprocess (no Ray there)")
        from fedshrink.runner import run_inprocess

        result = run_inprocess(settings, num_clients=args.num_clients)
        summary = result.summary
    else:
        from fedshrink.data.federated import max_clients
        from fedshrink.report import RunDirectory
        from fedshrink.runner.flower import FlowerRunError, LocalSimulation, require_ray

        require_ray("--engine", args.engine)
        pool = max_clients(cfg.split_spec(), cfg.partition_scheme())
        if args.num_clients > pool:
            raise ConfigError("--num-clients", args.num_clients, f"an integer in [1, {pool}] (the clients the data "
                              "allows)")
        with LocalSimulation(ray_address=args.ray_address) as sim:
            run = sim.run(args.app_dir.resolve(), settings, num_supernodes=args.num_clients,
                          cpus_per_client=args.cpus_per_client)
        if run.status != "finished:completed":
            raise FlowerRunError(f"run {run.run_id} ended with status {run.status!r}")
        run_dir = Path(cfg.robust.resume).expanduser() if cfg.robust.resume else RunDirectory.resolve(cfg)
        summary = RunDirectory(run_dir).read_summary()
    print(f"fedshrink: {summary['status']}, accuracy {summary['accuracy']:.4f}, run directory {summary['run-dir']}")
    return 0
