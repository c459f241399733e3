"""Checkpoints: atomic, pickle-free, and a server killed with SIGKILL resumes to the same model, bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedshrink.compression import ResidualStore
from fedshrink.errors import ConfigError
from fedshrink.report import RunDirectory
from fedshrink.robust.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    ServerCheckpoint,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from fedshrink.runner import run_inprocess
from fedshrink.runner.state import STATE_DIR, STORE_FILE, ClientStateStore

MIX = "iot:0.4,phone:0.4,laptop:0.2"


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    arrays = {"w": np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32), "n": np.array(7, np.int64)}
    state = RecordDict({"cfg": ConfigRecord({"a": 1, "b": "x"})})
    ResidualStore({"w": torch.arange(6, dtype=torch.float32).reshape(3, 2)}).save(state)
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    rng = capture_rng()
    want = (random.random(), np.random.random(), torch.rand(1).item())
    kept = {"memory/3/held": np.packbits(np.array([1, 0, 1], bool)), "memory/3/values": np.ones(2, np.float32)}
    save_checkpoint(tmp_path, ServerCheckpoint(4, arrays, {"k": [1, 2]}, rng, {"rows": []}, {1001: state}, kept))
    assert json.loads((tmp_path / "checkpoint.json").read_text())["round"] == 4
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, then replaced
    back = load_checkpoint(tmp_path)
    assert back.round == 4 and back.strategy == {"k": [1, 2]} and list(back.arrays) == ["w", "n"]
    assert set(back.strategy_arrays) == set(kept)
    assert all(back.strategy_arrays[k].dtype == v.dtype and np.array_equal(back.strategy_arrays[k], v)
               for k, v in kept.items())
    for k, v in arrays.items():
        assert back.arrays[k].dtype == v.dtype and np.array_equal(back.arrays[k], v)
    restore_rng(back.rng)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == want
    assert back.client_states is not None
    store = ResidualStore.load(back.client_states[1001])
    assert torch.equal(store.get("w"), torch.arange(6, dtype=torch.float32).reshape(3, 2))  # type: ignore[arg-type]
    assert back.client_states[1001].config_records["cfg"]["b"] == "x"


def test_bad_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing to resume"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, ServerCheckpoint(1, {"w": np.zeros(2, np.float32)}))
    data = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="resume"):
        run_inprocess({"resume": str(tmp_path / "nope")}, num_clients=2)


def _settings(tmp_path: Path, name: str) -> dict[str, Any]:
    return {
        "num-server-rounds": 4, "local-epochs": 1, "distill": False, "report": False, "quiet": True, "seed": 5,
        "output-dir": str(tmp_path / "runs"), "run-name": name, "profile-mix": MIX,  # lossy uplinks: residuals
        "dropout-rate": 0.25, "min-train-clients": 1,  # offline devices' updates are reused: the memory resumes
        "downlink-delta": "topk:0.1|q4|zstd",  # the references and each node's round resume too
    }


@pytest.mark.slow  # the run to kill is a process of its own
def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    killed = _settings(tmp_path, "killed")
    code = ("import json, sys, torch; torch.set_num_threads(1); from fedshrink.runner import run_inprocess; "
            "run_inprocess(json.loads(sys.argv[1]), num_clients=4)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = tmp_path / "runs" / "killed"
    marker = run_dir / "checkpoint.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if marker.exists() and json.loads(marker.read_text())["round"] >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    assert not (run_dir / "summary.json").exists() and not (run_dir / "global_model.pt").exists()
    at_kill = json.loads(marker.read_text())["round"]
    assert 2 <= at_kill < 4
    # the residuals live in the run's on-disk store (client-state = disk), not in the checkpoint
    store = ClientStateStore(run_dir / STATE_DIR / STORE_FILE)
    try:
        assert store.stats().clients > 0
    finally:
        store.close()

    resumed = run_inprocess({"resume": str(run_dir), "quiet": True}, num_clients=4)
    straight = run_inprocess(_settings(tmp_path, "straight"), num_clients=4)
    assert resumed.run_dir == run_dir and resumed.summary["status"] == "completed"

    a = torch.load(run_dir / "global_model.pt", weights_only=True)
    b = torch.load(straight.run_dir / "global_model.pt", weights_only=True)
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key  # bit for bit
    ra, rb = RunDirectory(run_dir).read_rounds(), RunDirectory(straight.run_dir).read_rounds()
    assert [r["round"] for r in ra] == list(range(1, 5))  # each round once, also those re-run after the kill
    assert [r["accuracy"] for r in ra] == [r["accuracy"] for r in rb]
    assert [r["dropped"] for r in ra] == [r["dropped"] for r in rb]
    assert sum(r["clients-dropped"] for r in rb) > 0  # the dropouts were exercised
    assert all(r["bytes-down"] == s["bytes-down"] for r, s in zip(ra, rb, strict=True))  # the same deltas sent
    assert min(r["bytes-down"] for r in rb[1:]) < rb[0]["bytes-down"] / 2  # and deltas they were (dropouts: whole)
    assert sum(r.get("stages", {}).get("absent-updates", {}).get("reused", 0) for r in rb[at_kill:]) > 0
    assert not load_checkpoint(run_dir).client_states
    assert not (run_dir / STATE_DIR).exists()  # a finished run is not resumed: its client state is deleted


def test_checkpoint_off_writes_none(tmp_path: Path, quick: dict[str, Any]) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 1, "checkpoint": False}, num_clients=2)
    assert not (result.run_dir / CHECKPOINT).exists()
    on = run_inprocess({**quick, "num-server-rounds": 1, "checkpoint": True}, num_clients=2)
    assert load_checkpoint(on.run_dir).round == 1
    again = ArrayRecord({k: torch.from_numpy(v) for k, v in load_checkpoint(on.run_dir).arrays.items()})
    final = torch.load(on.run_dir / "global_model.pt", weights_only=True)
    assert all(torch.equal(torch.from_numpy(again[k].numpy()), final[k]) for k in final)


# -- malformed checkpoints: every fault is a CheckpointError naming the field ---------------------------------
def _valid_payload(run_dir: Path) -> dict[str, Any]:
    state = RecordDict({"cfg": ConfigRecord({"a": 1})})
    arrays = {"w": np.ones((2, 2), np.float32), "b": np.zeros(3, np.int64)}
    save_checkpoint(run_dir, ServerCheckpoint(3, arrays, {"k": [1]}, capture_rng(), {"rows": []}, {7: state}))
    payload: dict[str, Any] = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    return payload


def _set(*path: str, value: Any = None, delete: bool = False) -> Any:
    def mutate(payload: dict[str, Any]) -> None:
        target = payload
        for key in path[:-1]:
            target = target[key]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


MALFORMED = [
    ("array_keys", _set("array_keys", delete=True)),
    ("array_keys", _set("array_keys", value="not json")),
    ("array_keys", _set("array_keys", value=5)),
    ("array_keys", _set("array_keys", value='{"w": 1}')),
    ("array_keys", _set("array_keys", value="[1, 2]")),
    ("array_keys", _set("array_keys", value='["w", "w", "b"]')),
    ("arrays", _set("arrays", delete=True)),
    ("arrays", _set("arrays", value=[torch.zeros(2)])),
    ("arrays", _set("arrays", "w", delete=True)),
    ("arrays", _set("arrays", "extra", value=torch.zeros(1))),
    ("arrays['w']", _set("arrays", "w", value=[1.0, 2.0])),
    ("arrays['w']", _set("arrays", "w", value=torch.zeros(2, dtype=torch.bfloat16))),
    ("round", _set("round", delete=True)),
    ("round", _set("round", value="3")),
    ("round", _set("round", value=True)),
    ("round", _set("round", value=3.0)),
    ("round", _set("round", value=-1)),
    ("strategy", _set("strategy", delete=True)),
    ("strategy", _set("strategy", value="{")),
    ("strategy", _set("strategy", value="[1]")),
    ("strategy", _set("strategy", value={"k": [1]})),
    ("ledger", _set("ledger", delete=True)),
    ("ledger", _set("ledger", value="nul")),
    ("ledger", _set("ledger", value='"rows"')),
    ("rng", _set("rng", delete=True)),
    ("rng", _set("rng", value="seed")),
    ("rng", _set("rng", "python", delete=True)),
    ("rng", _set("rng", "python", value="[]")),
    ("rng", _set("rng", "python", value="[3, [1, 2], null]")),
    ("rng", _set("rng", "numpy", value=5)),
    ("rng", _set("rng", "numpy", "keys", value=torch.zeros(5, dtype=torch.int64))),
    ("rng", _set("rng", "torch", value=torch.zeros(3, dtype=torch.uint8))),
    ("client_states", _set("client_states", value=[1])),
    ("client_states['x']", _set("client_states", value={"x": torch.zeros(0, dtype=torch.uint8)})),
    ("client_states['7']", _set("client_states", "7", value="bytes")),
    ("client_states['7']", _set("client_states", "7", value=torch.zeros(3))),
    ("client_states['7']", _set("client_states", "7", value=torch.tensor([255, 255, 255, 1], dtype=torch.uint8))),
    ("strategy_arrays", _set("strategy_arrays", value=[1])),
    ("strategy_arrays['m']", _set("strategy_arrays", value={"m": "x"})),
    ("strategy_arrays['m']", _set("strategy_arrays", value={"m": torch.zeros(2, dtype=torch.bfloat16)})),
]


@pytest.mark.parametrize(("field", "mutate"), MALFORMED)
def test_every_malformed_field_is_a_checkpoint_error_naming_it(tmp_path: Path, field: str, mutate: Any) -> None:
    payload = _valid_payload(tmp_path)
    mutate(payload)
    torch.save(payload, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    assert f"field {field!r}" in str(err.value)


def test_fuzzed_checkpoints_load_or_raise_checkpoint_error_only(tmp_path: Path) -> None:
    valid = _valid_payload(tmp_path)
    assert load_checkpoint(tmp_path).round == 3  # the unmutated payload loads
    junk: list[Any] = [None, 0, -5, 1.5, True, "", "{", "[]", "{}", '"s"', "[1, 2]", b"x", [], {}, [1, "a"],
                       {"a": 1}, {"7": 1}, torch.zeros(2), torch.zeros(0, dtype=torch.uint8), torch.ones(3, 4)]
    outcomes = {"loaded": 0, "refused": 0}
    for seed in range(60):
        rng = random.Random(seed)
        payload = {k: (dict(v) if isinstance(v, dict) else v) for k, v in valid.items()}  # nested dicts copied
        target = payload
        if rng.random() < 0.5:
            target = payload[rng.choice(["arrays", "rng", "client_states"])]
        key = rng.choice(sorted(target))
        if rng.random() < 0.3:
            del target[key]
        else:
            target[key] = rng.choice(junk)
        torch.save(payload, tmp_path / CHECKPOINT)
        try:
            load_checkpoint(tmp_path)
            outcomes["loaded"] += 1
        except CheckpointError as exc:
            assert ": field " in str(exc) or "not a fedshrink checkpoint" in str(exc), str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 40  # most mutations break the checkpoint; none escapes as another exception


def test_every_torch_load_in_the_repository_is_weights_only() -> None:
    """``torch.load`` unpickles arbitrary objects unless ``weights_only=True``; no file of ours may call it so."""
    import ast

    root = Path(__file__).resolve().parents[2]
    calls, unsafe = 0, []
    for path in sorted(root.glob("**/*.py")):
        if any(part.startswith(".") or part in ("build", "dist") for part in path.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                calls += 1
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    unsafe.append(f"{path.relative_to(root)}:{node.lineno}")
    assert calls >= 3 and unsafe == []
