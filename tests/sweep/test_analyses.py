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
    assert {f.stem for f in files} >= {"fragments", "robustness", "devices", "privacy"}
    for f in files:
        spec = load_sweep(f)
        assert spec.name == f.stem and (BENCH / f"bench_{f.stem}.py").is_file()
    assert len(load_sweep(SWEEPS / "fragments.toml").runs) == 18
    assert len(load_sweep(SWEEPS / "robustness.toml").runs) == 49
    assert len(load_sweep(SWEEPS / "privacy.toml").runs) == 48


def tiny(name: str, keep: Callable[[dict[str, Any]], dict[str, Any] | None], **base: Any) -> SweepSpec:
    path = SWEEPS / f"{name}.toml"
    data = tomllib.loads(path.read_text())
    data.update({"num-clients": 4, "seeds": [1], "workers": 1})  # one worker: in this process, no pool to start
    data["base"] = {**data["base"], "num-server-rounds": 2, "local-epochs": 1, "model": "mlp", **base}
    data["runs"] = [r for r in (keep({k: v for k, v in run.items() if k != "seeds"}) for run in data["runs"]) if r]
    return SweepSpec.from_mapping(data, name=name, source=str(path.relative_to(ROOT)))


def load_script(script: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location(script, BENCH / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, script, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def analyse(script: str, sweep_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> str:
    module = load_script(script, monkeypatch)
    monkeypatch.setattr(sys, "argv", [script, "--sweep-dir", str(sweep_dir), "--out", str(out), *extra])
    module.main()
    return out.read_text()


@pytest.fixture(scope="module")
def fragments_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fragments sweep: FedAvg, the static policy and one ablation."""
    path = tmp_path_factory.mktemp("fragments") / "sweep"
    spec = tiny("fragments", lambda r: r if r["name"] in ("fedavg", "static", "static, no fusion") else None)
    run_sweep(spec, path, say=lambda _: None)
    return path


def test_fragments_analysis(fragments_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = analyse("bench_fragments", fragments_sweep, tmp_path / "fragments.md", monkeypatch)
    sweep = open_sweep(fragments_sweep)
    assert text.startswith("# Heterogeneous fragments against full-width FedAvg\n")
    assert "from the sweep `simulations/sweeps/fragments.toml`" in text and "bench_fragments.py --sweep-dir" in text
    fedavg = next(iter(sweep.of("fedavg").values())).summary["accuracy"]
    assert f"| fedavg | {100 * fedavg:.2f} ± 0.00 |" in text
    for section in ("## Summary (mean ± sd over seeds)", "## Per seed", "## Accuracy per round",
                    "## Ablations (static policy, seed 1)", "| static, no fusion |", "## Bytes to lower thresholds"):
        assert section in text


def test_fragments_glyphs_analysis(fragments_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_fragments_glyphs.py rewrites fragments.md: the digits tables, then the glyphs sweep's."""
    assert tomllib.loads((SWEEPS / "fragments_glyphs.toml").read_text())["base"]["dataset"] == "glyphs"
    glyphs = tiny("fragments_glyphs", lambda r: r, dataset="digits")  # digits stands in: glyphs take minutes to make
    assert glyphs.configs == ["fedavg", "static"]
    run_sweep(glyphs, tmp_path / "glyphs", say=lambda _: None)
    text = analyse("bench_fragments_glyphs", tmp_path / "glyphs", tmp_path / "fragments.md", monkeypatch,
                   "--digits-sweep-dir", str(fragments_sweep))
    head, _, tail = text.partition("\n## On digits\n")
    assert head.startswith("# Heterogeneous fragments against full-width FedAvg\n") and "## Per seed" in head
    assert "bench_fragments_glyphs.py --sweep-dir" in head and "(the same digits tables as `python" in head
    assert "from `simulations/sweeps/fragments_glyphs.toml`" in tail
    fedavg = next(iter(open_sweep(tmp_path / "glyphs").of("fedavg").values())).summary["accuracy"]
    assert f"| fedavg | {100 * fedavg:.2f} ± 0.00 |" in tail
    for section in ("### Summary", "### Per seed", "### Accuracy per round", "| 60% | 70% | 80% | 90% |"):
        assert section in tail
    assert "## Ablations (static policy, seed 1)" in head and "## Ablations" not in tail
    monkeypatch.setattr(sys, "argv", ["bench_fragments_glyphs", "--sweep-dir", str(tmp_path / "none")])
    with pytest.raises(SystemExit):  # no sweep there: a usage error naming the sweep to run
        load_script("bench_fragments_glyphs", monkeypatch).main()


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


def test_privacy_analysis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tomllib.loads((SWEEPS / "privacy.toml").read_text())
    data.update({"num-clients": 4, "seeds": [1], "workers": 1})
    data["base"] = {**data["base"], "num-server-rounds": 2, "local-epochs": 1, "model": "mlp",
                    "clients-per-round": 4, "dp-count-noise": 1.0}
    data["grid"] = {**data["grid"], "dataset": ["digits"], "epsilon": data["grid"]["epsilon"][:2]}  # inf, 8
    run_sweep(SweepSpec.from_mapping(data, name="privacy"), tmp_path / "sweep", say=lambda _: None)
    text = analyse("bench_privacy", tmp_path / "sweep", tmp_path / "privacy.md", monkeypatch, "--dataset", "digits")
    sweep = open_sweep(tmp_path / "sweep")
    assert text.startswith("# Client-level differential privacy: accuracy against epsilon\n")
    assert "`fedshrink sweep simulations/sweeps/privacy.toml --out " in text
    assert "Coverage: 4 of the 4 (setting, epsilon, seed) runs the sweep plans" in text
    for p in sweep.planned:
        run = sweep.runs[p.key]
        row = f"| {p.axes['setting']} | {p.axes['epsilon']} | {100 * run.summary['accuracy']:.1f} (1 seed) |"
        assert row in text
        if p.axes["epsilon"] == "8":
            assert 7.5 < run.summary["epsilon"] <= 8.0  # calibrated to spend the target, not more
    with pytest.raises(SystemExit, match="is not a sweep directory"):
        analyse("bench_privacy", tmp_path, tmp_path / "x.md", monkeypatch, "--dataset", "digits")


def test_devices_sweep_plans_every_run_its_analysis_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run the fleet and demo parts ask for (by the hash of its settings) is one devices.toml plans."""
    bench = load_script("bench_devices", monkeypatch)
    planned = {p.key for p in load_sweep(SWEEPS / "devices.toml").runs}
    asked: list[str] = []

    class Planned(bench.FleetRuns):  # type: ignore[name-defined,misc]  # the script's class, loaded above
        def __init__(self, sweep_dir: Path) -> None:
            self.sweep_dir, self.clients = sweep_dir, 20
            self.sweep = type("Sweep", (), {"runs": {k: self.fake(k) for k in planned}})()

        @staticmethod
        def fake(key: str) -> Any:  # a run that reaches 95% in round 2
            rounds = [{"round": r, "accuracy": 0.5 if r == 1 else 0.96, "device-time-s": 1.0, "device-energy-j": 2.0,
                       "bytes-up": 1000} for r in range(1, 21)]
            return type("Run", (), {"rounds": rounds, "summary": {"seconds": 1.0}})()

        def get(self, dataset: str, seed: int, rounds: int, **extra: Any) -> dict[str, Any]:
            record: dict[str, Any] = super().get(dataset, seed, rounds, **extra)
            asked.append(dataset)
            return record

    monkeypatch.setattr(bench, "open_fleet", Planned)
    monkeypatch.setattr(bench, "_budget_plans", lambda dataset: [f"plans for {dataset}"])  # no glyphs data made
    fleet = "\n".join(bench.part_fleet(Path("unused")))
    demo = "\n".join(bench.part_demo(Path("unused")))
    assert asked.count("glyphs") == 2 and len(asked) > 25
    assert "### Round deadline and over-selection" in fleet and "Target: within 1.5 points" in demo
    with pytest.raises(SystemExit, match=r"has no finished run with .*'profile-mix': 'laptop:1.0'"):
        Planned(Path("unused")).get("digits", 1, 20, **{"profile-mix": "laptop:1.0"})


def test_final_fusion_analysis_fuses_as_the_server_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    spec = tiny("final_fusion", lambda r: r if r["name"] in ("digits", "digits, fused by the server") else None)
    run_sweep(spec, tmp_path / "sweep", say=lambda _: None)
    text = analyse("bench_final_fusion", tmp_path / "sweep", tmp_path / "final_fusion.md", monkeypatch)
    sweep = open_sweep(tmp_path / "sweep")
    unfused, server = sweep.of("digits")[1], sweep.of("digits, fused by the server")[1]
    before, after = unfused.rounds[-1]["accuracy"], server.rounds[-1]["accuracy"]
    assert f"| digits | 1 | {100 * before:.2f} | {100 * after:.2f} | {100 * (after - before):+.2f} | " \
           f"{unfused.rounds[-1]['loss']:.3f} / {server.rounds[-1]['loss']:.3f} |" in text
    assert "Checked: on seed(s) 1 the script's fusion gives the server's fused final model bit for bit" in text
    state = torch.load(server.path / "global_model.pt", weights_only=True)
    plain = torch.load(unfused.path / "global_model.pt", weights_only=True)
    assert any(not torch.equal(state[k], plain[k]) for k in state)  # the server's fusion did move the model
    # a fused model the script's fusion does not give
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1e-3
    torch.save(state, server.path / "global_model.pt")
    with pytest.raises(SystemExit, match="not the server's"):
        analyse("bench_final_fusion", tmp_path / "sweep", tmp_path / "again.md", monkeypatch)


@pytest.mark.slow  # two runs
def test_frontier_analysis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tiny("frontier", lambda r: r if r["name"] in ("fedavg", "compressed FedAvg, downlink deltas") else None)
    run_sweep(spec, tmp_path / "sweep", say=lambda _: None)
    text = analyse("bench_frontier", tmp_path / "sweep", tmp_path / "frontier.md", monkeypatch)
    sweep = open_sweep(tmp_path / "sweep")
    fedavg = next(iter(sweep.of("fedavg").values()))
    assert text.startswith("# The compression frontier") and "bench_frontier.py --sweep-dir" in text
    assert f"| fedavg | profile-mix `''` | {100 * fedavg.summary['accuracy']:.2f} |" in text
    deltas = next(iter(sweep.of("compressed FedAvg, downlink deltas").values()))
    down = [int(r["bytes-down"]) for r in deltas.rounds]
    assert down[1] < down[0] / 2  # round 2 sends deltas, round 1 the whole model
    assert "downlink-delta `topk:0.02|q4|zstd`" in text and "## Against the targets" in text
    assert "| `topk:0.01|int8|zstd` |" in text  # the wire-format floor of the chains the runs use


@pytest.mark.slow  # three runs
def test_frontier_flat_analysis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_frontier_flat.py rewrites frontier.md: the frontier sweep's tables, then the flat sweep's section,
    whose seeded first send costs a fraction of a sent model."""
    frontier = tiny("frontier", lambda r: r if r["name"] == "fedavg" else None)
    run_sweep(frontier, tmp_path / "frontier", say=lambda _: None)
    flat = tiny("frontier_flat", lambda r: r if r["name"] in ("fedavg", "compressed FedAvg, flat, downlink deltas")
                else None)
    run_sweep(flat, tmp_path / "flat", say=lambda _: None)
    text = analyse("bench_frontier_flat", tmp_path / "flat", tmp_path / "frontier.md", monkeypatch,
                   "--frontier-sweep-dir", str(tmp_path / "frontier"))
    assert text.startswith("# The compression frontier") and "## Flat updates, Rice-coded indices" in text
    assert "bench_frontier_flat.py --sweep-dir runs/sweeps/frontier_flat" in text
    sweep = open_sweep(tmp_path / "flat")
    seeded = next(iter(sweep.of("compressed FedAvg, flat, downlink deltas").values())).rounds
    sent = next(iter(sweep.of("fedavg").values())).rounds
    assert int(seeded[0]["bytes-down"]) < int(sent[0]["bytes-down"]) / 5  # round 1: the seed, not the model
    assert "first send: the seed (downlink-start `seed`)" in text and "* flat: compressed FedAvg, flat" in text
    assert "| `flat|topk:0.004|int8|zstd` |" in text  # the wire-format floor of the flat chain
    with pytest.raises(SystemExit):
        analyse("bench_frontier_flat", tmp_path / "missing", tmp_path / "again.md", monkeypatch)


def test_frontier_table_finds_each_seeds_target_and_the_savings_each_way(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_script("bench_frontier", monkeypatch)

    def rounds(accuracies: list[float], up: int, down: int) -> list[dict[str, Any]]:
        return [{"round": i + 1, "accuracy": a, "bytes-up": up, "bytes-down": down} for i, a in enumerate(accuracies)]

    runs = {"glyphs: fedavg": {1: rounds([0.5, 0.9, 0.95], 100, 100)},  # target 0.94, reached in round 3
            "glyphs: small": {1: rounds([0.5, 0.6, 0.94], 2, 10)},
            "glyphs: never": {1: rounds([0.5, 0.6, 0.7], 1, 1)}}
    settings = {k: {"profile-mix": "", "uplink-chain": "raw"} for k in runs}
    settings["glyphs: small"] = {"profile-mix": "", "uplink-chain": "topk:0.01|int8|zstd",
                                 "downlink-delta": "topk:0.02|q4|zstd", "downlink-chain": "int8|zstd"}
    rows, verdicts, fed_hits = bench.table(runs, settings, [1], "glyphs: fedavg")
    assert fed_hits == {1: (3, 300, 300)}
    small = next(r for r in rows if r.startswith("| small |"))
    assert "first send `int8|zstd`" in small and "| r3 |" in small
    assert "| 50.0 ± 0.0x | 16.7 ± 0.0x |" in small  # 300 / 6 up, 600 / 36 total
    assert any(r.startswith("| never |") and "| never |" in r for r in rows)
    assert verdicts == ["* glyphs: small: uplink 50.0x, total 16.7x over the 1 seed(s) of 1 that reached the target; "
                        "100x uplink not met, 50x total not met.",
                        "* glyphs: never: reached the target on none of its 1 seed(s); 100x uplink and 50x total "
                        "not met."]


def test_server_step_table_and_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_script("bench_server_step", monkeypatch)

    def rounds(*accuracies: float) -> list[dict[str, Any]]:
        return [{"round": i + 1, "accuracy": a} for i, a in enumerate(accuracies)]

    runs = {"fedavg": {1: rounds(0.9, 0.98), 2: rounds(0.9, 0.96)},
            "shipped": {1: rounds(0.9, 0.97), 2: rounds(0.95, 0.93)}}
    rows = bench.table(runs, [1, 2], "fedavg")
    shipped = next(r for r in rows if r.startswith("| shipped |"))
    # seeds, mean ± sd, gap on the mean (97 - 95), gap per seed, worst fall (mean of 0 and 2 points)
    assert "| 97.00 | 93.00 | 95.00 ± 2.83 | 2.00 | 1.00 / 3.00 | 1.00 |" in shipped
    assert "not met" in "".join(bench.verdict({1: 0.97, 2: 0.93}, {1: 0.98, 2: 0.96}))
    met = "".join(bench.verdict({1: 0.975, 2: 0.95}, {1: 0.98, 2: 0.96}))
    assert "0.75 points below on the mean over 2 seeds (met)" in met and "at most 1.00 points (within" in met
    assert bench.verdict({1: 0.97}, {1: 0.98, 2: 0.96}) == []  # not every seed finished
    glyph_rows = bench.table({"glyphs: shipped": {1: rounds(0.5, 0.9)}}, [1], None, {1: 95.0})
    assert "| 90.00 | 90.00 ± 0.00 | 5.00 | 5.00 |" in glyph_rows[-1]
