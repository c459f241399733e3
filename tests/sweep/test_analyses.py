"""The sweep files under simulations/sweeps/ plan what their analyses read, and the analyses write their
results files from a tiny version of each sweep (2 rounds, 4 clients, 1 seed, a few configurations)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedshrink.sweep import SweepSpec, load_sweep, open_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ROOT / "simulations" / "sweeps"
BENCH = ROOT / "simulations" / "benchmarks"


def test_every_sweep_file_is_valid_and_has_an_analysis() -> None:
    files = sorted(SWEEPS.glob("*.toml"))
    assert {f.stem for f in files} >= {"fragments", "robustness"}
    for f in files:
        spec = load_sweep(f)
        assert spec.name == f.stem and (BENCH / f"bench_{f.stem}.py").is_file()
    assert len(load_sweep(SWEEPS / "fragments.toml").runs) == 18
    assert len(load_sweep(SWEEPS / "robustness.toml").runs) == 49


def tiny(name: str, keep: Callable[[dict[str, Any]], dict[str, Any] | None]) -> SweepSpec:
    path = SWEEPS / f"{name}.toml"
    data = tomllib.loads(path.read_text())
    data.update({"num-clients": 4, "seeds": [1], "workers": 1})  # one worker: in this process, no pool to start
    data["base"] = {**data["base"], "num-server-rounds": 2, "local-epochs": 1, "model": "mlp"}
    data["runs"] = [r for r in (keep({k: v for k, v in run.items() if k != "seeds"}) for run in data["runs"]) if r]
    return SweepSpec.from_mapping(data, name=name, source=str(path.relative_to(ROOT)))


def analyse(script: str, sweep_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    spec = importlib.util.spec_from_file_location(script, BENCH / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, script, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script, "--sweep-dir", str(sweep_dir), "--out", str(out)])
    module.main()
    return out.read_text()


def test_fragments_analysis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tiny("fragments", lambda r: r if r["name"] in ("fedavg", "static", "static, no fusion") else None)
    run_sweep(spec, tmp_path / "sweep", say=lambda _: None)
    text = analyse("bench_fragments", tmp_path / "sweep", tmp_path / "fragments.md", monkeypatch)
    sweep = open_sweep(tmp_path / "sweep")
    assert text.startswith("# Heterogeneous fragments against full-width FedAvg\n")
    assert "from the sweep `simulations/sweeps/fragments.toml`" in text and "bench_fragments.py --sweep-dir" in text
    fedavg = next(iter(sweep.of("fedavg").values())).summary["accuracy"]
    assert f"| fedavg | {100 * fedavg:.2f} ± 0.00 |" in text
    for section in ("## Summary (mean ± sd over seeds)", "## Per seed", "## Accuracy per round",
                    "## Ablations (static policy, seed 1)", "| static, no fusion |", "## Bytes to lower thresholds"):
        assert section in text


def test_robustness_analysis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def keep(run: dict[str, Any]) -> dict[str, Any] | None:
        if run["name"] in ("clean", "dropout"):
            return run
        if run["name"] == "attacked":
            defences = [d for d in run["grid"]["defence"] if d["name"] in ("none", "guard", "median")]
            return {**run, "grid": {"attack": ["sign-flip"], "defence": defences}}
        return None

    run_sweep(tiny("robustness", keep), tmp_path / "sweep", say=lambda _: None)
    text = analyse("bench_robustness", tmp_path / "sweep", tmp_path / "robustness.md", monkeypatch)
    clean = next(iter(open_sweep(tmp_path / "sweep").of("clean").values())).summary["accuracy"]
    assert text.startswith("# Robust aggregation under attack, and dropouts, on fragments\n")
    assert "from the sweep `simulations/sweeps/robustness.toml`" in text
    assert f"Clean run (no attack, no defence): **{100 * clean:.2f}**" in text
    assert "| attack | FedAvg | guard | median | best defence | best - clean |" in text and "| sign-flip | " in text
    median = next(r for r in open_sweep(tmp_path / "sweep").runs.values() if r.config["defence"] == "median")
    rules = [line for line in text.splitlines() if line.startswith("| sign-flip | median | ")]
    assert len(rules) == 1 and f"| 1: {100 * median.summary['accuracy']:.2f} |" in rules[0]
    for section in ("## Dropout", "## Targets", "## The coordinate-wise rules, every seed",
                    "- sign-flip, `median`: ", "- sign-flip: best defence `",
                    "## Accuracy per round (seed 1, %)"):
        assert section in text
