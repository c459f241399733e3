#!/usr/bin/env python
"""Regenerate fedshrink's protobuf Python code with grpcio-tools.

Usage: ``python scripts/gen_proto.py [--out DIR]``

Compiles every ``proto/fedshrink/v1/*.proto`` with ``-I proto`` so the modules
land as ``fedshrink/v1/*_pb2.py`` (plus ``.pyi`` stubs) under ``--out``
(default: the repository root, i.e. inside the Python package). The staleness
test (``tests/compression/test_proto_stale.py``) calls :func:`generate` into a
temporary directory and compares the result byte for byte with the committed
files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "fedshrink" / "v1"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile the protos into ``out_dir``; return the generated files."""
    from grpc_tools import protoc  # imported here: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *files,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    gen_dir = out_dir / "fedshrink" / "v1"
    return sorted(p for p in gen_dir.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo root)")
    ns = parser.parse_args(argv)
    for path in generate(ns.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
