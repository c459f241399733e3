"""Heterogeneous fragments against full-width FedAvg on digits (issue 4).

Same data (20 clients, Dirichlet 0.5), same seeds, same model (CNN with
static BatchNorm, the run default), same local training; the mixed runs use
the shipped profile mix (``fedshrink.profiles.DEFAULT_MIX``: 40% of clients at
width 0.5, pruned, fake-quantized, every uplink compressed) and the shipped
fragment settings (nested initialisation, fusion on the server, self-distillation
across widths, pruned weights aggregated as zeros, masks derived on the
server). With ``--ablations`` (default on) the static policy is also run, on
the first seed, with each of those settings switched back, to measure what
each one contributes.
For every seed, the target is FedAvg's final accuracy minus 1.5 points; the
figure of merit is FedAvg's cumulative uplink bytes to first reach the target
divided by the mixed run's. Writes ``simulations/results/fragments.md``.

    python simulations/benchmarks/bench_fragments.py [--seeds 1 2 3] [--rounds 50] [--no-ablations]
        [--cache DIR] [--part all|main|ablations]

``--part`` runs only the main runs or only the ablations (two processes can
share the work through ``--cache``); the report is written by ``all``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedshrink.profiles import DEFAULT_MIX, get_profile, parse_mix
from fedshrink.report import RunDirectory, human_bytes
from fedshrink.runner import run_inprocess

ROOT = Path(__file__).resolve().parents[2]
MIX = DEFAULT_MIX
POLICIES = ("static", "rolling", "random")
# static policy with one shipped setting switched back (first seed only)
ABLATIONS = {
    "static, no fusion": {"fusion-steps": 0},
    "static, random init": {"fragment-init": "random"},
    "static, no fusion, random init": {"fusion-steps": 0, "fragment-init": "random"},
    "static, no self-distillation": {"nested-distill": False},
    "static, masks sent": {"derive-masks": False},
    "static, layer norm": {"model-norm": "layer"},
}


def run(seed: int, rounds: int, clients: int, out: Path, cache: Path | None = None,
        **extra: Any) -> list[dict[str, Any]]:
    """One run's per-round metrics; with ``cache``, reused from (and saved to) a JSON file keyed by its settings."""
    cfg = {"seed": seed, "num-server-rounds": rounds, "distill": False, "quiet": True, "output-dir": str(out), **extra}
    key = hashlib.sha256(json.dumps({**cfg, "output-dir": "", "clients": clients}, sort_keys=True).encode()).hexdigest()
    path = cache / f"{key[:16]}.json" if cache is not None else None
    if path is not None and path.is_file():
        REUSED.append(path.name)
        return list(json.loads(path.read_text())["rounds"])
    result = run_inprocess(cfg, num_clients=clients)
    rows = RunDirectory(result.run_dir).read_rounds()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"config": {**cfg, "output-dir": ""}, "clients": clients, "rounds": rows}))
    return rows


THRESHOLDS = (80, 85, 90, 95)
REUSED: list[str] = []  # runs read back from --cache


def profiles_text() -> str:
    parts = []
    for name in parse_mix(MIX):
        p = get_profile(name)
        prune = f"{p.sparsity:.0%} {p.prune} pruning" if p.prune != "none" else "no pruning"
        bits = f"{p.weight_bits}-bit fake-quant" if p.weight_bits < 32 else "fp32"
        parts.append(f"{name}: width {p.width:g}, {prune}, {bits}, uplink `{p.uplink}`, downlink `{p.downlink}`")
    return "; ".join(parts)


def bytes_to_reach(rounds: list[dict[str, Any]], target: float) -> int | None:
    total = 0
    for r in rounds:
        total += int(r["bytes-up"])
        if r["accuracy"] >= target:
            return total
    return None


def mean_sd(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "simulations" / "results" / "fragments.md")
    ap.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--cache", type=Path, default=None,
                    help="reuse finished runs from this folder (resume an interrupted benchmark)")
    ap.add_argument("--part", choices=("all", "main", "ablations"), default="all",
                    help="main runs only, ablations only (no report), or everything and the report")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {"fedavg": {}, **{p: {} for p in POLICIES}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (args.seeds if args.part != "ablations" else []):
            runs["fedavg"][seed] = run(seed, args.rounds, args.clients, Path(tmp), args.cache)
            print(f"seed {seed} fedavg {runs['fedavg'][seed][-1]['accuracy']:.4f}", flush=True)
            for policy in POLICIES:
                runs[policy][seed] = run(seed, args.rounds, args.clients, Path(tmp), args.cache, **{
                    "profile-mix": MIX, "fragment-policy": policy})
                print(f"seed {seed} {policy} {runs[policy][seed][-1]['accuracy']:.4f}", flush=True)
        ablations: dict[str, list[dict[str, Any]]] = {}
        for name, change in (ABLATIONS.items() if args.ablations and args.part != "main" else []):
            seed = args.seeds[0]
            ablations[name] = run(seed, args.rounds, args.clients, Path(tmp), args.cache, **{
                "profile-mix": MIX, "fragment-policy": "static", **change})
            print(f"seed {seed} {name} {ablations[name][-1]['accuracy']:.4f}", flush=True)
    if args.part != "all":
        return

    lines = [
        "# Heterogeneous fragments against full-width FedAvg (issue 4)", "",
        f"Generated {time.strftime('%Y-%m-%dT%H:%M:%S')} by `python simulations/benchmarks/bench_fragments.py "
        f"--seeds {' '.join(map(str, args.seeds))} --rounds {args.rounds}` in {time.time() - t0:.0f} s "
        "(2-core CPU, torch 1 thread, in-process engine"
        + (f"; {len(REUSED)} runs read back from `--cache {args.cache}`, where earlier invocations with the same "
           "settings left them" if REUSED else "") + ").", "",
        f"digits, {args.clients} clients, Dirichlet alpha 0.5, default CNN, {args.rounds} rounds, seeds "
        f"{args.seeds}. Both use the same CNN with static BatchNorm (`model-norm = batch`; evaluation freezes "
        "its statistics on the server's unlabelled proxy inputs) and do the same local training (2 epochs, "
        "batch 16, SGD lr 0.01, momentum 0.9). FedAvg: every client at width 1, fp32, raw chains. Mixed: "
        f"profile mix `{MIX}` ({profiles_text()}); nested initialisation (weights reading channels outside the "
        "width-0.5 prefix start at zero), fusion (20 Adam steps per round distilling the width-0.5 sub-model "
        "into the outer coordinates on the proxy inputs, T = 2), self-distillation across widths on the "
        "clients, pruned weights aggregated as zeros, prune masks derived on the server (a 48-bit digest "
        "travels instead). Bytes are exact serialized Flower Messages.", "",
        "Target per seed: FedAvg's final accuracy minus 1.5 points. *Bytes to target*: cumulative uplink bytes "
        "at the first round at or above it. *Saving*: FedAvg's bytes to target / the run's.", "",
        "## Summary (mean ± sd over seeds)", "",
        "| run | final accuracy % | best accuracy % | reached target (seeds) | uplink bytes to target | "
        "saving vs FedAvg | total uplink | total downlink |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, per_seed in runs.items():
        finals, bests, savings, to_target, ups, downs = [], [], [], [], [], []
        reached = 0
        for seed, rounds in per_seed.items():
            target = runs["fedavg"][seed][-1]["accuracy"] - 0.015
            finals.append(100 * rounds[-1]["accuracy"])
            bests.append(100 * max(r["accuracy"] for r in rounds))
            ups.append(sum(r["bytes-up"] for r in rounds))
            downs.append(sum(r["bytes-down"] for r in rounds))
            b = bytes_to_reach(rounds, target)
            fb = bytes_to_reach(runs["fedavg"][seed], target)
            if b is not None and fb is not None:
                reached += 1
                to_target.append(b)
                savings.append(fb / b)
        lines.append(
            f"| {name} | {mean_sd(finals)} | {mean_sd(bests)} | {reached}/{len(per_seed)} | "
            f"{human_bytes(statistics.mean(to_target)) if to_target else 'never'} | "
            f"{mean_sd(savings) + 'x' if savings else 'n/a'} | {human_bytes(statistics.mean(ups))} | "
            f"{human_bytes(statistics.mean(downs))} |")
    lines += ["", "## Per seed", "", "| run | seed | FedAvg final % | target % | FedAvg bytes to target | "
              "run's round / bytes to target | saving |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, per_seed in runs.items():
        if name == "fedavg":
            continue
        for seed, rounds in per_seed.items():
            target = runs["fedavg"][seed][-1]["accuracy"] - 0.015
            fb = bytes_to_reach(runs["fedavg"][seed], target)
            b = bytes_to_reach(rounds, target)
            hit = next((r["round"] for r in rounds if r["accuracy"] >= target), None)
            lines.append(f"| {name} | {seed} | {100 * runs['fedavg'][seed][-1]['accuracy']:.2f} | {100 * target:.2f} | "
                         f"{human_bytes(fb) if fb is not None else 'never'} | "
                         + (f"r{hit} / {human_bytes(b)}" if b is not None else "never") + " | "
                         + (f"{fb / b:.1f}x" if b is not None and fb is not None else "n/a") + " |")
    lines += ["", "## Accuracy per round (mean over seeds, %)", ""]
    marks = sorted({1, *range(5, args.rounds + 1, 5), args.rounds})
    lines += ["| run | " + " | ".join(f"r{m}" for m in marks) + " |", "|---|" + "---:|" * len(marks)]
    for name, per_seed in runs.items():
        cells = [f"{100 * statistics.mean(r[m - 1]['accuracy'] for r in per_seed.values()):.1f}" for m in marks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Cumulative uplink / downlink bytes (mean over seeds)", ""]
    lines += ["| run | " + " | ".join(f"r{m}" for m in marks) + " |", "|---|" + "---:|" * len(marks)]
    for name, per_seed in runs.items():
        cells = []
        for m in marks:
            up = statistics.mean(sum(x["bytes-up"] for x in r[:m]) for r in per_seed.values())
            down = statistics.mean(sum(x["bytes-down"] for x in r[:m]) for r in per_seed.values())
            cells.append(f"{human_bytes(up)} / {human_bytes(down)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    widths = sorted({k for name in POLICIES for r in runs[name].values() for k in r[-1].get("accuracy-width", {})},
                    key=float)
    lines += ["", "## Final accuracy of every width's sub-model (static prefix, mean ± sd, %)", "",
              "| run | " + " | ".join(f"width {w}" for w in widths) + " | global (width 1) |",
              "|---|" + "---:|" * (len(widths) + 1)]
    for name in POLICIES:
        per_seed = runs[name]
        w = {k: [100 * r[-1]["accuracy-width"][k] for r in per_seed.values()] for k in widths}
        g = [100 * r[-1]["accuracy"] for r in per_seed.values()]
        lines.append(f"| {name} | " + " | ".join(mean_sd(w[k]) for k in widths) + f" | {mean_sd(g)} |")
    if ablations:
        seed = args.seeds[0]
        target = runs["fedavg"][seed][-1]["accuracy"] - 0.015
        lines += ["", f"## Ablations (static policy, seed {seed})", "",
                  "| run | final accuracy % | best accuracy % | uplink bytes to target | total uplink |",
                  "|---|---:|---:|---:|---:|"]
        for name, rounds in {"static (shipped settings)": runs["static"][seed], **ablations}.items():
            b = bytes_to_reach(rounds, target)
            lines.append(f"| {name} | {100 * rounds[-1]['accuracy']:.2f} | "
                         f"{100 * max(r['accuracy'] for r in rounds):.2f} | "
                         f"{human_bytes(b) if b is not None else 'never'} | "
                         f"{human_bytes(sum(r['bytes-up'] for r in rounds))} |")
    lines += ["", "## Bytes to lower thresholds (mean over seeds that reached it)", "",
              "Cumulative uplink bytes to first reach each accuracy; in brackets, FedAvg's bytes to the same "
              "accuracy divided by the run's (the saving).", "",
              "| run | " + " | ".join(f"{t}%" for t in THRESHOLDS) + " |", "|---|" + "---:|" * len(THRESHOLDS)]
    for name, per_seed in runs.items():
        cells = []
        for t in THRESHOLDS:
            pairs = [(bytes_to_reach(r, t / 100), bytes_to_reach(runs["fedavg"][seed], t / 100))
                     for seed, r in per_seed.items()]
            ok = [(b, f) for b, f in pairs if b is not None and f is not None]
            if not ok:
                cells.append("never")
                continue
            cells.append(f"{human_bytes(statistics.mean(b for b, _ in ok))} "
                         f"({statistics.mean(f / b for b, f in ok):.1f}x, {len(ok)}/{len(pairs)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
