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
    save_checkpoint(tmp_path, ServerCheckpoint(4, arrays, {"k": [1, 2]}, rng, {"rows": []}, {1001: state}))
    assert json.loads((tmp_path / "checkpoint.json").read_text())["round"] == 4
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, then replaced
    back = load_checkpoint(tmp_path)
    assert back.round == 4 and back.strategy == {"k": [1, 2]} and list(back.arrays) == ["w", "n"]
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
        "num-server-rounds": 6, "local-epochs": 1, "distill": False, "quiet": True, "seed": 5,
        "output-dir": str(tmp_path / "runs"), "run-name": name, "profile-mix": MIX,  # lossy uplinks: residuals
        "dropout-rate": 0.25, "min-train-clients": 1, "defence": "clip",
    }


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
    assert 2 <= at_kill < 6

    resumed = run_inprocess({"resume": str(run_dir), "quiet": True}, num_clients=4)
    straight = run_inprocess(_settings(tmp_path, "straight"), num_clients=4)
    assert resumed.run_dir == run_dir and resumed.summary["status"] == "completed"

    a = torch.load(run_dir / "global_model.pt", weights_only=True)
    b = torch.load(straight.run_dir / "global_model.pt", weights_only=True)
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key  # bit for bit
    ra, rb = RunDirectory(run_dir).read_rounds(), RunDirectory(straight.run_dir).read_rounds()
    assert [r["round"] for r in ra] == list(range(1, 7))  # each round once, also those re-run after the kill
    assert [r["accuracy"] for r in ra] == [r["accuracy"] for r in rb]
    assert [r["dropped"] for r in ra] == [r["dropped"] for r in rb]
    assert sum(r["clients-dropped"] for r in rb) > 0  # the dropouts were exercised


def test_checkpoint_off_writes_none(tmp_path: Path, quick: dict[str, Any]) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 1, "checkpoint": False}, num_clients=2)
    assert not (result.run_dir / CHECKPOINT).exists()
    on = run_inprocess({**quick, "num-server-rounds": 1}, num_clients=2)
    assert load_checkpoint(on.run_dir).round == 1
    again = ArrayRecord({k: torch.from_numpy(v) for k, v in load_checkpoint(on.run_dir).arrays.items()})
    final = torch.load(on.run_dir / "global_model.pt", weights_only=True)
    assert all(torch.equal(torch.from_numpy(again[k].numpy()), final[k]) for k in final)
