"""The fedshrink command line: run, report, compare, sweep and deploy.

Each command lives in its own module of this package, which adds its parser
and its handler. Settings are validated before anything starts; a bad one
prints one line naming it and its allowed values, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from fedshrink.cli import deploy, results, run, sweep
from fedshrink.errors import ConfigError, FedShrinkError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedshrink", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run.add_parser(sub)
    results.add_parsers(sub)
    sweep.add_parser(sub)
    deploy.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"fedshrink: {exc}", file=sys.stderr)
        return 2
    except FedShrinkError as exc:
        print(f"fedshrink: error: {exc}", file=sys.stderr)
        return 1
