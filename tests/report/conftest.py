"""Run directories for the report tests: a synthetic one with every file, and a real in-process run."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import shrink_distillation

from fedshrink.config import RunConfig
from fedshrink.report import RunDirectory
from fedshrink.resources import ResourceLedger, ResourceRecord
from fedshrink.resources.energy import METHOD_ESTIMATED


def candidate_rows() -> list[dict[str, Any]]:
    """Student-search candidates as the search writes them: 2 rungs (100, then 300 more steps), 2 over budget."""
    rows = []
    for w in (0.25, 0.5, 0.75, 1.0):
        for b in (4, 8):
            params = int(40_000 * w**2)
            over = w == 1.0
            rung0 = round(0.88 - 0.1 / w**0.5 - (0.02 if b == 4 else 0), 4)
            finalist = (w, b) in ((0.5, 8), (0.75, 8))
            rows.append({
                "candidate": f"cnn:{w}-{b}", "name": f"w{w}-{b}bit", "params": params,
                "bytes": int(40_000 * w**2 * b / 8) + 500, "macs": params * 6, "latency_ms": 0.2 * w,
                "in_budget": not over, "why_out": f"params {params:,} > 30,000" if over else "",
                "rung0_agreement": None if over else rung0, "rung0_steps": None if over else 100,
                "last_agreement": None if over else rung0 + (0.05 if finalist else 0),
                "rungs_reached": 0 if over else (2 if finalist else 1),
                "steps": 0 if over else (400 if finalist else 100),
                "test_accuracy": 0.7 + 0.1 * w if finalist else None,
                "accuracy": None if over else rung0, "chosen": (w, b) == (0.5, 8),
            })
    rows.append({"name": "dominated", "params": 9_000, "bytes": 10_000, "in_budget": True, "rung0_agreement": 0.5,
                 "rung0_steps": 100, "last_agreement": 0.5, "rungs_reached": 1, "steps": 100})
    return rows


def write_synthetic_run(path: Path, *, rounds: int = 6, clients: int = 5, dataset: str = "") -> Path:
    """A run directory as a fully wired ServerApp would write it (numbers made up, consistent).

    ``dataset`` renames the configured data set (a user's own data set runs under its own name).
    """
    path.mkdir(parents=True)
    cfg = RunConfig.from_mapping({"num-server-rounds": rounds, "run-name": path.name})
    config = {**cfg.to_mapping(), **({"dataset": dataset} if dataset else {})}
    (path / "config.json").write_text(json.dumps(config))
    rundir, ledger = RunDirectory(path), ResourceLedger()
    profiles = ["phone", "laptop"]
    for rnd in range(1, rounds + 1):
        for pid in range(clients):
            profile = profiles[pid % 2]
            width = 0.5 if profile == "phone" else 1.0
            params = int(110_000 * width**2)
            rec = ResourceRecord(
                wall_seconds=0.4 / width + 0.01 * pid, cpu_seconds=0.7 / width, peak_rss_bytes=int(3e8 * width),
                rss_start_bytes=int(2.5e8), gpu_peak_bytes=0, bytes_received=4 * params + 300,
                bytes_sent=params + 200, bytes_sent_fp32=4 * params + 250, parameters=params,
                macs_per_sample=int(625_920 * width**2), samples=300,
                train_flops=6.0 * 625_920 * width**2 * 300, energy_joules=12.0 * 0.7 / width,
                energy_method=METHOD_ESTIMATED)
            ledger.add(rnd, pid, rec, profile=profile, node_id=1001 + pid)
        ledger.add_server(rnd, aggregation_seconds=0.05, bytes_down=sum(
            r.resources.bytes_received for r in ledger.in_round(rnd)))
        record = {"round": rnd, "accuracy": 0.9 - 0.6 * math.exp(-rnd / 2), "loss": 2.0 / rnd,
                  "seconds": 2.5, "clients-sent": clients, "clients-good": clients, "skipped": False,
                  "fusion-seconds": 0.25 * rnd, "device-time-s": 1.5 + 0.1 * rnd, "device-energy-j": 4.0,
                  **ledger.round_record(rnd)}
        record["bytes-up-received"] = record["bytes-up"]
        rundir.append_round(record)
    ledger.write_csv(path)
    rundir.write_summary({"status": "completed", "accuracy": record["accuracy"], "best-accuracy":
                          record["accuracy"], "rounds": rounds, "clients": clients, "seconds": 15.0,
                          "model-parameters": 110_000, "distillation-seconds": 125.25,
                          "student-params": 12_000, "student-bytes": 13_500, "resources": ledger.summary()})
    (path / "pareto.json").write_text(json.dumps({"candidates": candidate_rows()}))
    return path


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Path:
    return write_synthetic_run(tmp_path / "synthetic")


@pytest.fixture
def make_synthetic_run(tmp_path: Path) -> Callable[..., Path]:
    """``make_synthetic_run(name, **kwargs)``: :func:`write_synthetic_run` under ``tmp_path / name``."""
    return lambda name, **kwargs: write_synthetic_run(tmp_path / name, **kwargs)


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (short) run through the ServerApp and ClientApp, as they are today."""
    from fedshrink.runner import run_inprocess

    out = tmp_path_factory.mktemp("real")
    result = run_inprocess({"num-server-rounds": 2, "local-epochs": 1, "model": "mlp", "quiet": True,
                            "distill": False, "report": False, "checkpoint": False, "output-dir": str(out),
                            "run-name": "real"}, num_clients=2)
    return result.run_dir


@pytest.fixture(scope="session")
def distilled_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run that distils at the end; the student budget leaves some search candidates over it."""
    from fedshrink.runner import run_inprocess

    out = tmp_path_factory.mktemp("distilled")
    with pytest.MonkeyPatch.context() as mp:
        shrink_distillation(mp)
        result = run_inprocess({"num-server-rounds": 2, "local-epochs": 1, "quiet": True, "output-dir": str(out),
                                "run-name": "distilled", "distill": True, "distill-steps": 50,
                                "distill-finetune-steps": 20, "student-max-params": 2200, "student-max-bytes": 2200,
                                "checkpoint": False, "report": False},
                               num_clients=4)
    return result.run_dir
