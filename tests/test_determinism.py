"""Same settings and seed, same records: across two runs, and across the in-process and Ray engines.

Host-measured fields (time, energy from CPU time, memory) are left out of
the comparison: :mod:`fedshrink.report.determinism` names them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from fedshrink.config import RunConfig
from fedshrink.report import RunDirectory
from fedshrink.report.determinism import determinism_note, measured_on_host, reproducible_view
from fedshrink.report.recorder import RunRecorder
from fedshrink.runner import run_inprocess

TINY = {"num-server-rounds": 2, "local-epochs": 1, "distill": False, "quiet": True, "report": False,
        "checkpoint": False}


def rounds(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def client_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "clients.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if not measured_on_host(k)} for row in csv.DictReader(fh)]


def test_host_fields_are_named() -> None:
    record = {"round": 1, "seconds": 2.0, "aggregation-s": 0.1, "fusion-seconds": 0.3, "energy-j": 5.0,
              "client-peak-rss-bytes-max": 9, "device-time-s": 0.2, "bytes-up": 10, "train": {"train-seconds": 1}}
    assert reproducible_view(record) == {"round": 1, "device-time-s": 0.2, "bytes-up": 10, "train": {}}


def test_two_inprocess_runs_give_the_same_records(tmp_path: Path) -> None:
    cfg = {**TINY, "model": "mlp", "profile-mix": "phone:0.5,laptop:0.5", "output-dir": str(tmp_path),
           "fusion-last-rounds": 0, "nested-distill": True}  # fusion every round and self-distillation take part
    a, b = (run_inprocess({**cfg, "run-name": name}, num_clients=4).run_dir for name in ("a", "b"))
    c = run_inprocess({**cfg, "run-name": "c", "seed": 7}, num_clients=4).run_dir
    ra, rb, rc = rounds(a), rounds(b), rounds(c)
    assert [reproducible_view(r) for r in ra] == [reproducible_view(r) for r in rb]
    assert client_rows(a) == client_rows(b)
    assert [r["seconds"] for r in ra] != [r["seconds"] for r in rb]  # what was left out did change
    assert [reproducible_view(r) for r in ra] != [reproducible_view(r) for r in rc]  # another seed: not vacuous
    assert "determinism" not in json.loads((a / "summary.json").read_text())


def test_several_threads_are_noted(tmp_path: Path) -> None:
    assert determinism_note(RunConfig()) == {}
    note = determinism_note(RunConfig.from_mapping({"client-threads": 2}))["determinism"]
    assert "client-threads = 2" in note
    # no rounds played and no grid: no client state on disk to look for either
    cfg = RunConfig.from_mapping({"client-threads": 2, "quiet": True, "client-state": "memory"})
    recorder = RunRecorder(cfg, RunDirectory(tmp_path), grid=None)  # type: ignore[arg-type]
    recorder.finish({"status": "completed"}, torch.nn.Linear(1, 1))
    assert "client-threads = 2" in RunDirectory(tmp_path).read_summary()["determinism"]


# -- the Ray engine (tests/test_flwr_e2e.py compares one Ray run with the in-process engine) ------------
ENVELOPE = ("bytes-up", "bytes-down", "bytes-up-received", "bytes-up-uncompressed")
MAX_ENVELOPE_BYTES = 96  # per message: node and run ids of other widths, a delivery timestamp (58 B measured)


def engine_view(record: dict[str, Any]) -> dict[str, Any]:
    """What the engines must agree on exactly: no host fields, no envelope sizes, no modelled device
    figures (they inherit the envelope sizes through transfer times), lists of nodes by partition, not node id."""
    out = {k: v for k, v in reproducible_view(record).items()
           if k not in ENVELOPE and not k.startswith("device-")}
    for key in ("dropped", "unreached"):
        if key in out:
            out[key] = sorted(({k: v for k, v in d.items() if k != "node-id"} for d in out[key]),
                              key=lambda d: d["partition-id"])
    return out
