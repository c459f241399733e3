"""Heterogeneous fragments against full-width FedAvg on digits: the analysis of the fragments sweep.

The runs come from the sweep file ``simulations/sweeps/fragments.toml`` (same
data, seeds, model and local training for every run; FedAvg and the three
fragment policies on every seed; ablations of the static policy, each with
one of the sweep's fragment settings switched back, on the first seed). This script
reads the sweep's directory and writes ``simulations/results/fragments.md``.
For every seed, the target is FedAvg's final accuracy minus 1.5 points; the
figure of merit is FedAvg's cumulative uplink bytes to first reach the target
divided by the run's.

    fedshrink sweep simulations/sweeps/fragments.toml --out runs/sweeps/fragments
    python simulations/benchmarks/bench_fragments.py --sweep-dir runs/sweeps/fragments [--out FILE]

(``make results`` runs both.) Runs the sweep has not finished are left out of the tables. With
``--glyphs-sweep-dir DIR`` (as ``bench_fragments_glyphs.py`` runs it) the same tables follow for the
``fragments_glyphs`` sweep, the second data set.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from fedshrink.devices.profiles import get_profile, parse_mix
from fedshrink.report import human_bytes
from fedshrink.sweep import SweepRuns, open_sweep
from fedshrink.sweep.results import bytes_to_reach

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILE = "simulations/sweeps/fragments.toml"
DEFAULT_OUT = ROOT / "simulations" / "results" / "fragments.md"
POLICIES = ("static", "rolling", "random")
MAIN = ("fedavg", *POLICIES)
THRESHOLDS = (80, 85, 90, 95)
MARGIN = 0.015  # target = FedAvg's final accuracy minus 1.5 points

Rounds = list[dict[str, Any]]


def profiles_text(mix: str) -> str:
    parts = []
    for name in parse_mix(mix):
        p = get_profile(name)
        prune = f"{p.sparsity:.0%} {p.prune} pruning" if p.prune != "none" else "no pruning"
        bits = f"{p.weight_bits}-bit fake-quant" if p.weight_bits < 32 else "fp32"
        parts.append(f"{name}: width {p.width:g}, {prune}, {bits}, uplink `{p.uplink}`, downlink `{p.downlink}`")
    return "; ".join(parts)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def target_of(fedavg: Rounds) -> float:
    return float(fedavg[-1]["accuracy"]) - MARGIN


def header(sweep: SweepRuns, runs: dict[str, dict[int, Rounds]], by: str) -> list[str]:
    """The file's opening: ``by`` says which command wrote it (in backticks)."""
    cfg = next(iter(sweep.of("fedavg").values())).config
    mix = next((str(r.config.get("profile-mix")) for r in sweep.runs.values() if r.config.get("profile-mix")), "")
    host = sum(float(r.summary.get("seconds", 0.0)) for r in sweep.runs.values())
    return [
        "# Heterogeneous fragments against full-width FedAvg", "",
        f"Generated {time.strftime('%Y-%m-%dT%H:%M:%S')} by {by} from the sweep "
        f"`{sweep.plan.get('source') or SWEEP_FILE}`, whose runs "
        f"were made by `{sweep.plan.get('command', '')}` ({len(sweep.runs)} runs, {host:.0f} s of measured host "
        f"wall time summed over runs; torch 1 thread per run, {sweep.plan.get('engine')} engine).", "",
        f"{cfg.get('dataset')}, {sweep.plan.get('num-clients')} clients, {cfg.get('partitioner')} "
        f"(alpha {cfg.get('dirichlet-alpha')}), {cfg.get('model')} x{cfg.get('model-width')}, "
        f"{cfg.get('num-server-rounds')} rounds, seeds {sorted(runs['fedavg'])}. Both use the same model with "
        f"`model-norm = {cfg.get('model-norm')}` (static BatchNorm: evaluation freezes its statistics on the "
        f"server's unlabelled proxy inputs) and do the same local training ({cfg.get('local-epochs')} epochs, "
        f"batch {cfg.get('batch-size')}, SGD lr {cfg.get('learning-rate')}, momentum {cfg.get('momentum')}). "
        f"FedAvg: every client at width 1, fp32, raw chains. Mixed: profile mix `{mix}` ({profiles_text(mix)}); "
        "nested initialisation (weights reading channels outside the width-0.5 prefix start at zero), fusion "
        f"({cfg.get('fusion-steps')} Adam steps per round distilling the width-0.5 sub-model into the outer "
        f"coordinates on the proxy inputs, T = {cfg.get('fusion-temperature')}), self-distillation across widths "
        "on the clients, pruned weights aggregated as zeros, prune masks derived on the server (a 48-bit digest "
        "travels instead). Bytes are exact serialized Flower Messages.", "",
        "Target per seed: FedAvg's final accuracy minus 1.5 points. *Bytes to target*: cumulative uplink bytes "
        "at the first round at or above it. *Saving*: FedAvg's bytes to target / the run's.", "",
    ]


def summary_table(runs: dict[str, dict[int, Rounds]], level: str = "##") -> list[str]:
    lines = [f"{level} Summary (mean ± sd over seeds)", "",
             "| run | final accuracy % | best accuracy % | reached target (seeds) | uplink bytes to target | "
             "saving vs FedAvg | total uplink | total downlink |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, per_seed in runs.items():
        finals, bests, savings, to_target, ups, downs = [], [], [], [], [], []
        for seed, rounds in per_seed.items():
            target = target_of(runs["fedavg"][seed])
            finals.append(100 * rounds[-1]["accuracy"])
            bests.append(100 * max(r["accuracy"] for r in rounds))
            ups.append(sum(r["bytes-up"] for r in rounds))
            downs.append(sum(r["bytes-down"] for r in rounds))
            b, fb = bytes_to_reach(rounds, target), bytes_to_reach(runs["fedavg"][seed], target)
            if b is not None and fb is not None:
                to_target.append(b)
                savings.append(fb / b)
        lines.append(
            f"| {name} | {mean_sd(finals)} | {mean_sd(bests)} | {len(to_target)}/{len(per_seed)} | "
            f"{human_bytes(statistics.mean(to_target)) if to_target else 'never'} | "
            f"{mean_sd(savings) + 'x' if savings else 'n/a'} | {human_bytes(statistics.mean(ups))} | "
            f"{human_bytes(statistics.mean(downs))} |")
    return lines


def per_seed_table(runs: dict[str, dict[int, Rounds]], level: str = "##") -> list[str]:
    lines = ["", f"{level} Per seed", "", "| run | seed | FedAvg final % | target % | FedAvg bytes to target | "
             "run's round / bytes to target | saving |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, per_seed in runs.items():
        if name == "fedavg":
            continue
        for seed, rounds in per_seed.items():
            target = target_of(runs["fedavg"][seed])
            fb = bytes_to_reach(runs["fedavg"][seed], target)
            b = bytes_to_reach(rounds, target)
            hit = next((r["round"] for r in rounds if r["accuracy"] >= target), None)
            lines.append(f"| {name} | {seed} | {100 * runs['fedavg'][seed][-1]['accuracy']:.2f} | {100 * target:.2f} | "
                         f"{human_bytes(fb) if fb is not None else 'never'} | "
                         + (f"r{hit} / {human_bytes(b)}" if b is not None else "never") + " | "
                         + (f"{fb / b:.1f}x" if b is not None and fb is not None else "n/a") + " |")
    return lines


def curves_tables(runs: dict[str, dict[int, Rounds]], num_rounds: int, level: str = "##") -> list[str]:
    marks = sorted({1, *range(5, num_rounds + 1, 5), num_rounds})
    lines = ["", f"{level} Accuracy per round (mean over seeds, %)", "",
             "| run | " + " | ".join(f"r{m}" for m in marks) + " |", "|---|" + "---:|" * len(marks)]
    for name, per_seed in runs.items():
        cells = [f"{100 * statistics.mean(r[m - 1]['accuracy'] for r in per_seed.values()):.1f}" for m in marks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"{level} Cumulative uplink / downlink bytes (mean over seeds)", "",
              "| run | " + " | ".join(f"r{m}" for m in marks) + " |", "|---|" + "---:|" * len(marks)]
    for name, per_seed in runs.items():
        cells = []
        for m in marks:
            up = statistics.mean(sum(x["bytes-up"] for x in r[:m]) for r in per_seed.values())
            down = statistics.mean(sum(x["bytes-down"] for x in r[:m]) for r in per_seed.values())
            cells.append(f"{human_bytes(up)} / {human_bytes(down)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def widths_table(runs: dict[str, dict[int, Rounds]], level: str = "##") -> list[str]:
    policies = [p for p in POLICIES if p in runs]
    widths = sorted({k for name in policies for r in runs[name].values() for k in r[-1].get("accuracy-width", {})},
                    key=float)
    lines = ["", f"{level} Final accuracy of every width's sub-model (static prefix, mean ± sd, %)", "",
             "| run | " + " | ".join(f"width {w}" for w in widths) + " | global (width 1) |",
             "|---|" + "---:|" * (len(widths) + 1)]
    for name in policies:
        per_seed = runs[name]
        w = {k: [100 * r[-1]["accuracy-width"][k] for r in per_seed.values()] for k in widths}
        g = [100 * r[-1]["accuracy"] for r in per_seed.values()]
        lines.append(f"| {name} | " + " | ".join(mean_sd(w[k]) for k in widths) + f" | {mean_sd(g)} |")
    return lines


def ablations_table(runs: dict[str, dict[int, Rounds]], ablations: dict[str, Rounds], seed: int) -> list[str]:
    target = target_of(runs["fedavg"][seed])
    lines = ["", f"## Ablations (static policy, seed {seed})", "",
             "| run | final accuracy % | best accuracy % | uplink bytes to target | total uplink |",
             "|---|---:|---:|---:|---:|"]
    shipped = {"static (the sweep's settings)": runs["static"][seed]} if seed in runs.get("static", {}) else {}
    for name, rounds in {**shipped, **ablations}.items():
        b = bytes_to_reach(rounds, target)
        lines.append(f"| {name} | {100 * rounds[-1]['accuracy']:.2f} | "
                     f"{100 * max(r['accuracy'] for r in rounds):.2f} | "
                     f"{human_bytes(b) if b is not None else 'never'} | "
                     f"{human_bytes(sum(r['bytes-up'] for r in rounds))} |")
    return lines


def thresholds_table(runs: dict[str, dict[int, Rounds]], thresholds: tuple[int, ...] = THRESHOLDS,
                     level: str = "##") -> list[str]:
    lines = ["", f"{level} Bytes to lower thresholds (mean over seeds that reached it)", "",
             "Cumulative uplink bytes to first reach each accuracy; in brackets, FedAvg's bytes to the same "
             "accuracy divided by the run's (the saving).", "",
             "| run | " + " | ".join(f"{t}%" for t in thresholds) + " |", "|---|" + "---:|" * len(thresholds)]
    for name, per_seed in runs.items():
        cells = []
        for t in thresholds:
            pairs = [(bytes_to_reach(r, t / 100), bytes_to_reach(runs["fedavg"][seed], t / 100))
                     for seed, r in per_seed.items()]
            ok = [(b, f) for b, f in pairs if b is not None and f is not None]
            if not ok:
                cells.append("never")
                continue
            cells.append(f"{human_bytes(statistics.mean(b for b, _ in ok))} "
                         f"({statistics.mean(f / b for b, f in ok):.1f}x, {len(ok)}/{len(pairs)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def collect(sweep: SweepRuns) -> tuple[dict[str, dict[int, Rounds]], dict[str, Rounds], int]:
    """The main runs by name and seed (seeds where FedAvg finished), the ablations on the first seed."""
    fedavg = sweep.rounds("fedavg")
    if not fedavg:
        raise SystemExit(f"{sweep.path}: no finished FedAvg run (configuration 'fedavg'); run the sweep first")
    runs = {name: {s: r for s, r in sweep.rounds(name).items() if s in fedavg} for name in MAIN}
    runs = {name: per_seed for name, per_seed in runs.items() if per_seed}
    seed = min(fedavg)
    ablations = {c: sweep.rounds(c)[seed] for c in sweep.configs() if c not in MAIN and seed in sweep.rounds(c)}
    return runs, ablations, seed


def glyphs_section(glyphs: SweepRuns) -> list[str]:
    """The same tables for the glyphs sweep (FedAvg and the static policy, the second data set)."""
    runs, _, _ = collect(glyphs)
    cfg = next(iter(glyphs.of("fedavg").values())).config
    host = sum(float(r.summary.get("seconds", 0.0)) for r in glyphs.runs.values())
    thresholds = tuple(round(100 * t) for t in glyphs.plan.get("targets") or ()) or THRESHOLDS
    num_rounds = min(len(r) for per_seed in runs.values() for r in per_seed.values())
    per_round = {name: statistics.mean(float(r.summary.get("seconds", 0.0)) / max(1, len(r.rounds))
                                       for r in glyphs.of(name).values()) for name in runs}
    lines = ["", f"## On {cfg.get('dataset')}", "",
             f"The second data set, the generated 28x28 glyphs, never tuned on: the same FedAvg and static-policy "
             f"runs with every setting above, on `dataset = {cfg.get('dataset')}`, {cfg.get('num-server-rounds')} "
             "rounds instead of 50 (measured host wall time per round: "
             + ", ".join(f"{name} {sec:.0f} s" for name, sec in per_round.items())
             + f"), seeds {sorted(runs['fedavg'])}. Runs made by "
             f"`{glyphs.plan.get('command', '')}` from `{glyphs.plan.get('source', '')}` ({len(glyphs.runs)} runs, "
             f"{host:.0f} s of measured host wall time summed over runs). Target per seed: "
             "FedAvg's final accuracy on glyphs minus 1.5 points.", ""]
    lines += summary_table(runs, "###") + per_seed_table(runs, "###") + curves_tables(runs, num_rounds, "###")
    lines += widths_table(runs, "###") + thresholds_table(runs, thresholds, "###")
    return lines


def build(sweep_dir: Path, glyphs_dir: Path | None, command: str, glyphs_command: str) -> list[str]:
    """fragments.md: the digits sweep's tables, then, when ``glyphs_dir`` is given, the glyphs sweep's."""
    sweep = open_sweep(sweep_dir)
    runs, ablations, seed = collect(sweep)
    num_rounds = min(len(r) for per_seed in runs.values() for r in per_seed.values())
    by = f"`{command}`" if glyphs_dir is None else f"`{glyphs_command}` (the same digits tables as `{command}`)"
    lines = [*header(sweep, runs, by), *summary_table(runs), *per_seed_table(runs),
             *curves_tables(runs, num_rounds), *widths_table(runs)]
    if ablations and "fedavg" in runs:
        lines += ablations_table(runs, ablations, seed)
    lines += thresholds_table(runs)
    if glyphs_dir is not None:
        lines += glyphs_section(open_sweep(glyphs_dir))
    return lines


def shown(path: Path) -> Path:
    """A path as the command line would give it: relative to the repository when it is inside it."""
    return path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=ROOT / "runs" / "sweeps" / "fragments")
    ap.add_argument("--glyphs-sweep-dir", type=Path, default=None,
                    help="the fragments_glyphs sweep, whose tables follow the digits ones (bench_fragments_glyphs.py "
                         "passes it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    out = "" if args.out.resolve() == DEFAULT_OUT else f" --out {shown(args.out)}"
    digits = shown(args.sweep_dir)
    command = f"python simulations/benchmarks/bench_fragments.py --sweep-dir {digits}{out}"
    glyphs_command = (f"python simulations/benchmarks/bench_fragments_glyphs.py --sweep-dir "
                      f"{shown(args.glyphs_sweep_dir or Path('runs/sweeps/fragments_glyphs'))}"
                      + ("" if digits == Path("runs/sweeps/fragments") else f" --digits-sweep-dir {digits}") + out)
    lines = build(args.sweep_dir, args.glyphs_sweep_dir, command, glyphs_command)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
