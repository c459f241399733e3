"""Run directories for the report tests: a synthetic one with every file, and a real in-process run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedshrink.config import RunConfig
from fedshrink.report import RunDirectory
from fedshrink.resources import ResourceLedger, ResourceRecord
from fedshrink.resources.energy import METHOD_ESTIMATED


def write_synthetic_run(path: Path, *, rounds: int = 6, clients: int = 5) -> Path:
    """A run directory as a fully wired ServerApp would write it (numbers made up, consistent)."""
    path.mkdir(parents=True)
    cfg = RunConfig.from_mapping({"num-server-rounds": rounds, "run-name": path.name})
    (path / "config.json").write_text(json.dumps(cfg.to_mapping()))
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
                  **ledger.round_record(rnd)}
        rundir.append_round(record)
    ledger.write_csv(path)
    rundir.write_summary({"status": "completed", "accuracy": record["accuracy"], "best-accuracy":
                          record["accuracy"], "rounds": rounds, "clients": clients, "seconds": 15.0,
                          "student-params": 12_000, "student-bytes": 13_500, "resources": ledger.summary()})
    candidates = [
        {"name": f"w{w}-{b}bit", "params": int(40_000 * w**2), "bytes": int(40_000 * w**2 * b / 8) + 500,
         "latency_ms": 0.2 * w, "accuracy": round(0.88 - 0.1 / w**0.5 - (0.02 if b == 4 else 0), 4),
         "chosen": (w, b) == (0.5, 8)}
        for w in (0.25, 0.5, 0.75, 1.0) for b in (4, 8)
    ]
    candidates.append({"name": "dominated", "params": 40_000, "bytes": 50_000, "accuracy": 0.5})
    (path / "pareto.json").write_text(json.dumps({"candidates": candidates}))
    return path


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Path:
    return write_synthetic_run(tmp_path / "synthetic")


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (short) run through the ServerApp and ClientApp, as they are today."""
    from fedshrink.runner import run_inprocess

    out = tmp_path_factory.mktemp("real")
    result = run_inprocess({"num-server-rounds": 2, "local-epochs": 1, "model": "mlp", "quiet": True,
                            "output-dir": str(out), "run-name": "real"}, num_clients=2)
    return result.run_dir
