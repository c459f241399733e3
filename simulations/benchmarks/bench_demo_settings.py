"""The demo's fleet under its server-side settings: the analysis of the demo_settings sweep.

The runs come from ``simulations/sweeps/demo_settings.toml``: the demo's fleet (the default mix, every device
modelled, availability on), 20 rounds, distillation off, seeds 42 (the demo's), 1 and 2, against fp32 FedAvg one
setting away (``profile-mix = ''``). Each configuration changes the shipped settings in one place:
``absent-updates`` (reuse an offline device's latest update, or drop it), fusion (into the final model only, as
shipped, or after every round), nested initialisation and self-distillation across widths. The script writes
``simulations/results/demo_settings.md``: per configuration, the final global accuracy per seed and its mean and
spread, the gap to FedAvg, the narrow sub-models' accuracy, and how far accuracy fell from one round to the next
at worst (measured on the test split each round).

    fedshrink sweep simulations/sweeps/demo_settings.toml --out runs/sweeps/demo_settings
    python simulations/benchmarks/bench_demo_settings.py --sweep-dir runs/sweeps/demo_settings [--out FILE]

(``make results`` runs both.) Runs the sweep has not finished are left out.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path
from typing import Any

from fedshrink.sweep import open_sweep
from fedshrink.sweep.results import accuracy_columns, final_accuracies, mean_final, narrow_widths, seed_gaps_cell

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "simulations" / "results" / "demo_settings.md"
WHAT = {
    "fedavg": "fp32 FedAvg, one setting away (`profile-mix=''`; no device models: every client every round)",
    "shipped": "the shipped settings: `absent-updates = auto` (reuse); the final model fused toward the mean "
               "softmax of itself and its nested sub-models (`fusion-teacher = self`, `fusion-last-rounds = 1`, "
               "50 Adam steps on the unlabelled proxy, outer coordinates only); plain initialisation; no "
               "self-distillation; the server's step `server-lr = 0` (auto: 2 on this fleet; every configuration "
               "below but FedAvg has it; the step itself: server_step.md)",
    "no final fusion": "shipped, but `fusion-steps = 0`: the same runs up to the last aggregation, not fused",
    "drop": "shipped, but `absent-updates = drop`",
    "earlier": "the earlier defaults: drop, fusion of the sub-models after every round (`fusion-steps = 20`, "
               "`fusion-teacher = sub-models`, `fusion-last-rounds = 0`), nested initialisation, self-distillation",
    "earlier, reuse": "the earlier defaults with `absent-updates = reuse`",
    "self-distillation": "shipped, with `nested-distill = true`",
    "fusion every round": "shipped, but fusing the sub-models after every round (`fusion-steps = 20`, "
                          "`fusion-teacher = sub-models`, `fusion-last-rounds = 0`)",
    "fusion 100 steps": "shipped, but the final fusion takes 100 Adam steps (`fusion-steps = 100`) instead of 50",
    "fusion lr 0.003": "shipped, but the final fusion's Adam learning rate is 0.003 (`fusion-lr`) instead of 0.001",
    "fused last 5 rounds": "shipped, but fusing after each of the last 5 aggregations (`fusion-last-rounds = 5`)",
}


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def worst_fall(rounds: list[dict[str, Any]]) -> float:
    """The largest drop of test accuracy from one round to the next (0 if it never fell)."""
    acc = [float(r["accuracy"]) for r in rounds]
    return max([a - b for a, b in itertools.pairwise(acc)] + [0.0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=ROOT / "runs" / "sweeps" / "demo_settings")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    sweep = open_sweep(args.sweep_dir)
    seeds = list(dict.fromkeys(p.seed for p in sweep.planned))  # in the sweep file's order
    runs = {c: sweep.rounds(c) for c in sweep.configs()}
    fedavg = runs.get("fedavg", {})
    first = next((run for c in runs for run in sweep.of(c).values()), None)
    num_rounds = first.config.get("num-server-rounds", "?") if first is not None else "?"
    command = f"python simulations/benchmarks/bench_demo_settings.py --sweep-dir {args.sweep_dir}"
    lines = [
        "# The demo's fleet under its server-side settings", "",
        f"`fedshrink sweep simulations/sweeps/demo_settings.toml --out {args.sweep_dir}`, then `{command}`.", "",
        f"digits, 20 clients, Dirichlet 0.5, the default mix (`iot:0.2,phone:0.4,laptop:0.4`: every client has "
        f"its profile's device model and availability: iot 0.9, phone 0.5, laptop 0.8), "
        f"{num_rounds} rounds, distillation off, seeds {', '.join(map(str, seeds))} "
        "(the first is the demo's). Accuracy: the global model on the test split (measured), %. *Gap*: FedAvg's "
        "mean final accuracy minus the run's mean; *gap per seed*: FedAvg's final accuracy minus the run's, seed "
        "by seed. *Worst fall*: the largest drop of accuracy from one round to the "
        "next, mean over seeds. *Narrow sub-models*: final accuracy of the width-0.25 and width-0.5 prefixes, "
        "mean over seeds.", "",
        "| configuration | " + " | ".join(f"seed {s}" for s in seeds)
        + " | mean ± sd | gap to FedAvg | gap per seed | worst fall | narrow sub-models 0.25 / 0.5 |",
        "|---|" + "---:|" * len(seeds) + "---:|---:|---:|---:|---:|",
    ]
    ref, ref_finals = mean_final(fedavg), final_accuracies(fedavg)
    for config, per_seed in runs.items():
        if not per_seed:
            continue
        accuracy = " | ".join(accuracy_columns(per_seed, seeds, ref, reference=config == "fedavg"))
        gaps = "" if config == "fedavg" else seed_gaps_cell(ref_finals, final_accuracies(per_seed), seeds)
        fall = f"{100 * statistics.mean(worst_fall(r) for r in per_seed.values()):.2f}"
        lines.append(f"| {config} | {accuracy} | {gaps} | {fall} | {narrow_widths(per_seed)} |")
    lines += ["", "Configurations:", ""] + [f"- **{c}**: {WHAT.get(c, c)}" for c in runs]
    reused = [r.get("stages", {}).get("absent-updates", {}) for per_seed in (runs.get("shipped") or {}).values()
              for r in per_seed]
    reused = [n for n in reused if n]
    if reused:
        absent = statistics.mean(n["absent"] for n in reused)
        lines += ["", f"With reuse (shipped), over {len(reused)} rounds: {absent:.1f} "
                  f"devices absent a round on average, {statistics.mean(n['reused'] for n in reused):.1f} updates "
                  f"reused, the oldest {max(n['max-age'] for n in reused)} rounds old, the memory at most "
                  f"{max(n['memory-bytes'] for n in reused) / 1e6:.2f} MB (the server's, for 20 clients)."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
