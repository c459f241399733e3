"""``fedshrink sweep FILE``: a sweep file's runs in parallel, finished ones skipped, then the summary."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedshrink.errors import ConfigError


def add_parser(sub: Any) -> None:
    swp = sub.add_parser("sweep", help="run a sweep file's runs in parallel, skip finished ones, summarise (see "
                         "docs/sweeps.md)")
    swp.add_argument("file", type=Path, help="the sweep file (.toml or .yaml)")
    swp.add_argument("--out", type=Path, default=None, help="the sweep directory (default runs/sweeps/<name>)")
    swp.add_argument("--workers", type=int, default=0, help="runs at once (default: the file's, else one per core)")
    swp.add_argument("--ray-address", default="", help="run each run as a Ray task on this cluster (auto, host:port)")
    swp.set_defaults(handler=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedshrink.sweep import load_sweep, run_sweep

    if args.workers < 0:
        raise ConfigError("--workers", args.workers, "an integer >= 0 (0 = the sweep file's, else one per core)")
    spec = load_sweep(args.file)
    words = [str(args.file), *(["--out", str(args.out)] if args.out else [])]
    result = run_sweep(spec, args.out, workers=args.workers, ray_address=args.ray_address,
                       command=" ".join(["fedshrink sweep", *words]))
    return 1 if result.failed else 0
