"""Robust aggregation against simulated attacks, and dropouts, on fragments: the analysis of the robustness sweep.

The runs come from the sweep file ``simulations/sweeps/robustness.toml``
(digits, 20 clients, Dirichlet 0.5, the shipped device-profile mix: clients
train fragments). For each attack (20% malicious clients, chosen from the
seed) FedAvg (no defence) and defences; plus the clean run (no attack, no
defence) and a run with 30% random dropout per round. Targets: for sign-flip
and Gaussian the best defence ends within 2 points of the clean run while
FedAvg fails; 30% dropout ends within 1 point of the clean run. This script
reads the sweep's directory and writes ``simulations/results/robustness.md``.

    fedshrink sweep simulations/sweeps/robustness.toml --out runs/sweeps/robustness
    python simulations/benchmarks/bench_robustness.py --sweep-dir runs/sweeps/robustness [--out FILE]

(``make results`` runs both.) A cell the sweep ran on only some seeds shows
their mean, marked with the seeds; runs not finished are left out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshrink.config import RunConfig
from fedshrink.report.rundata import RunData
from fedshrink.robust.attacks import alie_z, malicious_partitions
from fedshrink.sweep import SweepRuns, open_sweep

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILE = "simulations/sweeps/robustness.toml"
TARGET_ATTACKS = ("sign-flip", "gaussian")
RULES = ("median", "trimmed-mean", "bulyan")  # each must end within 2 points of the clean run under both attacks


def defence_name(cfg: dict[str, Any]) -> str:
    """``guard`` for the norm guard alone, ``guard+RULE`` in front of a rule, else the rule (``none`` = FedAvg)."""
    rule, guard = str(cfg.get("defence", "none")), float(cfg.get("norm-guard", 0.0)) > 0
    if not guard:
        return rule
    return "guard" if rule == "none" else f"guard+{rule}"


def label(attack: str, defence: str, dropout: float) -> str:
    return f"attack={attack} defence={defence} dropout={dropout:g}"


def run_entry(run: RunData) -> tuple[str, dict[str, Any]]:
    """The run's key (``seed=S attack=A defence=D dropout=X``) and figures, from its own files."""
    cfg = run.config
    attack = str(cfg["attack"]) if float(cfg.get("attack-fraction", 0.0)) > 0 else "none"
    key = f"seed={cfg['seed']} " + label(attack, defence_name(cfg), float(cfg.get("dropout-rate", 0.0)))
    acc = [float(r["accuracy"]) for r in run.rounds]
    return key, {"rounds": len(acc), "final": acc[-1], "last5": statistics.mean(acc[-5:]), "best": max(acc),
                 "curve": acc, "dropped": sum(int(r["clients-dropped"]) for r in run.rounds),
                 "skipped": sum(bool(r["skipped"]) for r in run.rounds),
                 "seconds": float(run.summary.get("seconds", 0.0))}


@dataclass(frozen=True)
class Layout:
    """What the sweep ran: seeds, clients, rounds, malicious fraction, attacks and defences in plan order."""

    seeds: list[int]
    clients: int
    rounds: int
    fraction: float
    attacks: list[str]
    defences: list[str]
    command: str
    sweep_command: str
    mix: str
    setting: str  # data set, partition and model in words


def layout_of(sweep: SweepRuns, command: str) -> Layout:
    cfgs = [r.config for r in sweep.runs.values()]
    attacked = [c for c in cfgs if float(c.get("attack-fraction", 0.0)) > 0]
    attacks = list(dict.fromkeys(str(c["attack"]) for c in attacked))
    defences = list(dict.fromkeys(d for d in (defence_name(c) for c in attacked) if d != "none"))
    return Layout(seeds=sorted({p.seed for p in sweep.planned}), clients=int(sweep.plan["num-clients"]),
                  rounds=int(cfgs[0]["num-server-rounds"]) if cfgs else 0,
                  fraction=float(attacked[0]["attack-fraction"]) if attacked else 0.2, attacks=attacks,
                  defences=defences, command=command, sweep_command=str(sweep.plan.get("command", "")),
                  mix=str(cfgs[0].get("profile-mix", "")) if cfgs else "",
                  setting=setting_words(cfgs[0] if cfgs else {}))


def setting_words(cfg: dict[str, Any]) -> str:
    return (f"{cfg.get('dataset')}, {cfg.get('partitioner')} (alpha {cfg.get('dirichlet-alpha')}), "
            f"{cfg.get('model')} x{cfg.get('model-width')}")


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def mean(vals: list[float]) -> float | None:
    return statistics.mean(vals) if vals else None


class Cells:
    """Reading the runs by (attack, defence, dropout): means over all seeds, or marked partial means."""

    def __init__(self, cache: dict[str, dict[str, Any]], seeds: list[int]) -> None:
        self.cache, self.seeds = cache, seeds

    def runs(self, attack: str, defence: str, dropout: float) -> dict[int, dict[str, Any]]:
        return {s: self.cache[f"seed={s} " + label(attack, defence, dropout)] for s in self.seeds
                if f"seed={s} " + label(attack, defence, dropout) in self.cache}

    def get(self, attack: str, defence: str, dropout: float, key: str = "final") -> float | None:
        runs = self.runs(attack, defence, dropout)
        return mean([v[key] for v in runs.values()]) if len(runs) == len(self.seeds) else None

    def cell(self, attack: str, defence: str, dropout: float) -> str:
        v = self.get(attack, defence, dropout)
        if v is not None:
            return f"{pct(v)} ({pct(self.get(attack, defence, dropout, 'last5'))})"
        runs = self.runs(attack, defence, dropout)
        if not runs:
            return "n/a"
        return (f"{pct(mean([v['final'] for v in runs.values()]))} "
                f"({pct(mean([v['last5'] for v in runs.values()]))}) [seed {', '.join(map(str, runs))} only]")


def header(cache: dict[str, dict[str, Any]], lay: Layout, cells: Cells) -> list[str]:
    dflt = RunConfig().robust.extras  # the attack parameters every run used (the shipped defaults)
    scale, noise_std, samples = dflt["attack-scale"], dflt["attack-noise-std"], int(dflt["attack-samples"])
    m = len(malicious_partitions(lay.clients, lay.fraction, lay.seeds[0]))
    z = alie_z(lay.clients, m)
    return [
        "# Robust aggregation under attack, and dropouts, on fragments", "",
        f"Generated {time.strftime('%Y-%m-%dT%H:%M:%S')} by `{lay.command}` from the sweep `{SWEEP_FILE}`, whose "
        f"runs were made by `{lay.sweep_command}`; the {len(cache)} runs took "
        f"{sum(v['seconds'] for v in cache.values()):.0f} s of measured host wall time, summed over runs (torch "
        "1 thread per run).", "",
        f"{lay.clients} clients, {lay.setting}, profile mix `{lay.mix}` "
        f"(clients train fragments with their profile's pruning, fake-quant and uplink chain), {lay.rounds} rounds, "
        f"seeds {lay.seeds}. Attacks: {int(100 * lay.fraction)}% of the clients malicious (chosen from the seed, "
        f"whatever their profile), applied to the update before the uplink chain: `sign-flip` sends "
        f"-{scale:g} x update, `gaussian` sends N(0, {noise_std:g}^2) noise, `label-flip` "
        f"trains on labels 9 - y, `alie` sends mean - z std (z = the paper's z_max = {z:.3f} for n = {lay.clients}, "
        f"m = {m}; mean and std estimated by each attacker from its own honest update and "
        f"{samples - 1} bootstrap retrainings). Defences (per coordinate over the clients that held it): "
        "`median`, `trimmed-mean` (20% each side; these two and `bulyan` first drop a reply whose update RMS is more "
        "than `rule-screen-z` = 5 robust z-scores above the round's, cap every update's RMS at the round's median, "
        "and vote only where a coordinate's senders outnumber twice the attackers there may be among its holders: "
        "docs/robustness.md), `clip` (adaptive: RMS per held coordinate capped at the "
        "round's median), `multi-krum` and `bulyan` (f = 20% of the round's replies, distances over shared "
        "coordinates), `fltrust` (root set: 100 labelled proxy samples on the server), `clip+median`. "
        "`guard` is the server's norm guard (`norm-guard = 5` in the sweep file: a reply whose update RMS is more "
        "than that many robust z-scores above the round's median is dropped), alone or in front of a rule "
        "(`guard+clip`). FedAvg runs have no guard (`norm-guard = 0`): plain FedAvg.", "",
        "Figures: final test accuracy of the global model in % (mean over seeds); in brackets the mean of the "
        "last 5 rounds.", "",
        f"Clean run (no attack, no defence): **{pct(cells.get('none', 'none', 0.0))}** "
        f"({pct(cells.get('none', 'none', 0.0, 'last5'))}).", "",
    ]


def attack_table(lay: Layout, cells: Cells) -> tuple[list[str], list[str]]:
    clean, clean5 = cells.get("none", "none", 0.0), cells.get("none", "none", 0.0, "last5")
    lines = ["## Final accuracy under attack", "",
             "| attack | FedAvg | " + " | ".join(lay.defences) + " | best defence | best - clean |",
             "|---|" + "---:|" * (len(lay.defences) + 3)]
    verdicts = []
    for attack in lay.attacks:
        fed = cells.get(attack, "none", 0.0)
        scored = [(d, cells.get(attack, d, 0.0)) for d in lay.defences]
        full = [(d, v) for d, v in scored if v is not None]
        best_name, best = max(full, key=lambda dv: dv[1]) if full else ("n/a", None)
        gap = f"{100 * (best - clean):+.2f}" if best is not None and clean is not None else "n/a"
        lines.append(f"| {attack} | {cells.cell(attack, 'none', 0.0)} | "
                     + " | ".join(cells.cell(attack, d, 0.0) for d in lay.defences) + f" | {best_name} | {gap} |")
        if attack in TARGET_ATTACKS and best is not None and clean is not None and fed is not None:
            verdicts.append(
                f"- {attack}: best defence `{best_name}` {pct(best)} vs clean {pct(clean)}: "
                f"{'MET' if best >= clean - 0.02 else 'NOT MET'} (target: within 2 points); FedAvg {pct(fed)}: "
                f"{'fails (more than 10 points below clean)' if fed < clean - 0.10 else 'does NOT fail clearly'}. "
                f"On the last-5-round means instead: `{best_name}` {pct(cells.get(attack, best_name, 0.0, 'last5'))} "
                f"vs clean {pct(clean5)}.")
    return lines, verdicts


def rules_table(lay: Layout, cells: Cells) -> tuple[list[str], list[str]]:
    """The coordinate-wise rules on every seed, next to the norm guard alone: mean, sd, gap and each seed."""
    clean = cells.runs("none", "none", 0.0)
    if len(clean) != len(lay.seeds):
        return [], []
    clean_mean = statistics.mean(v["final"] for v in clean.values())
    lines = ["", "## The coordinate-wise rules, every seed", "",
             "| attack | defence | final accuracy % (mean ± sd) | gap to clean (points) | within 2 points | per seed |",
             "|---|---|---:|---:|---|---|"]
    verdicts = []
    for attack in TARGET_ATTACKS:
        for defence in (*RULES, "guard"):
            runs = cells.runs(attack, defence, 0.0)
            if len(runs) != len(lay.seeds):
                continue
            acc = [100 * v["final"] for v in runs.values()]
            gap = 100 * clean_mean - statistics.mean(acc)
            ok = gap <= 2.0
            seeds = ", ".join(f"{s}: {100 * v['final']:.2f}" for s, v in sorted(runs.items()))
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            lines.append(f"| {attack} | {defence} | {statistics.mean(acc):.2f} ± {sd:.2f} | "
                         f"{gap:.2f} | {'yes' if ok else '**no**'} | {seeds} |")
            if defence in RULES:
                verdicts.append(f"- {attack}, `{defence}`: {statistics.mean(acc):.2f} vs clean {100 * clean_mean:.2f}, "
                                f"{gap:.2f} points below: {'MET' if ok else 'NOT MET'} (target: within 2 points).")
    lines.append("")
    lines.append("Clean run per seed: " + ", ".join(f"{s}: {100 * v['final']:.2f}" for s, v in sorted(clean.items()))
                 + ".")
    return lines, verdicts


def dropout_table(cells: Cells) -> tuple[list[str], list[str]]:
    drop, clean = cells.get("none", "none", 0.3), cells.get("none", "none", 0.0)
    if drop is None or clean is None:
        return [], []
    lines = ["", "## Dropout", "", "| run | final accuracy % | last-5 mean % | replies dropped |",
             "|---|---:|---:|---:|"]
    for name, dr in (("no dropout", 0.0), ("30% random dropout per round", 0.3)):
        dropped = mean([v["dropped"] for v in cells.runs("none", "none", dr).values()]) or 0
        lines.append(f"| {name} | {pct(cells.get('none', 'none', dr))} | {pct(cells.get('none', 'none', dr, 'last5'))} "
                     f"| {dropped:.0f} |")
    verdict = (f"- 30% dropout: {pct(drop)} vs {pct(clean)} without: "
               f"{'MET' if abs(drop - clean) <= 0.01 else 'NOT MET'} (target: within 1 point); last-5-round "
               f"means {pct(cells.get('none', 'none', 0.3, 'last5'))} vs "
               f"{pct(cells.get('none', 'none', 0.0, 'last5'))}.")
    return lines, [verdict]


def curves_table(cache: dict[str, dict[str, Any]], lay: Layout) -> list[str]:
    curves = sorted(k for k in cache if k.startswith(f"seed={lay.seeds[0]} "))
    if not curves:
        return []
    marks = [r for r in (1, 5, 10, 15, 20, 25, 30, 40, 50) if r <= lay.rounds]
    lines = [f"## Accuracy per round (seed {lay.seeds[0]}, %)", "",
             "| run | " + " | ".join(f"r{r}" for r in marks) + " | seconds |", "|---|" + "---:|" * (len(marks) + 1)]
    for key in curves:
        c = cache[key]["curve"]
        lines.append(f"| {key.split(' ', 1)[1]} | " + " | ".join(f"{100 * c[r - 1]:.1f}" for r in marks if r <= len(c))
                     + f" | {cache[key]['seconds']:.0f} |")
    return lines


def write_report(cache: dict[str, dict[str, Any]], lay: Layout, out: Path) -> list[str]:
    cells = Cells(cache, lay.seeds)
    attacks, verdicts = attack_table(lay, cells)
    rules, rule_verdicts = rules_table(lay, cells)
    dropout, drop_verdicts = dropout_table(cells)
    verdicts += rule_verdicts + drop_verdicts
    lines = [*header(cache, lay, cells), *attacks, *rules, *dropout, "", "## Targets", "", *verdicts, "",
             *curves_table(cache, lay)]
    out.write_text("\n".join(lines) + "\n")
    return verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=ROOT / "runs" / "sweeps" / "robustness")
    ap.add_argument("--out", type=Path, default=ROOT / "simulations" / "results" / "robustness.md")
    args = ap.parse_args()
    sweep = open_sweep(args.sweep_dir)
    if not sweep.runs:
        raise SystemExit(f"{args.sweep_dir}: no finished runs; run the sweep first")
    cache = dict(run_entry(r) for r in sweep.runs.values())
    lay = layout_of(sweep, f"python simulations/benchmarks/bench_robustness.py --sweep-dir {args.sweep_dir}")
    for v in write_report(cache, lay, args.out):
        print(v)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
