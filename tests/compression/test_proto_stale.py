"""The committed generated protobuf code matches what scripts/gen_proto.py produces."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = {p.name: p.read_bytes() for p in gen.generate(tmp_path)}
    committed_dir = ROOT / "fedshrink" / "v1"
    committed = {
        p.name: p.read_bytes() for p in committed_dir.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi"))
    }
    assert fresh, "no proto generated"
    assert sorted(fresh) == sorted(committed), "generated file set differs: run python scripts/gen_proto.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run python scripts/gen_proto.py"
