"""Heavy mixes against full-width FedAvg: the analysis of the heavy_mix sweep.

The runs come from ``simulations/sweeps/heavy_mix.toml``: digits, 20 clients, Dirichlet 0.5, 50 rounds, every
client every round (as in the fragments sweep), the shipped fragment settings (the final model fused), seeds 1-3;
fp32 FedAvg (``profile-mix = ''``) against fleets with 70% and 80% of their clients at width 0.5 or less. The
script writes ``simulations/results/heavy_mix.md``: per fleet, the final global accuracy per seed, its mean and
spread, the gap to FedAvg's mean and seed by seed, the server's step, the narrow sub-models' accuracy, and the
bytes each way.

    fedshrink sweep simulations/sweeps/heavy_mix.toml --out runs/sweeps/heavy_mix
    python simulations/benchmarks/bench_heavy_mix.py --sweep-dir runs/sweeps/heavy_mix [--out FILE]

(``make results`` runs both.) Runs the sweep has not finished are left out.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from fedshrink.config import RunConfig
from fedshrink.report import human_bytes
from fedshrink.sweep import open_sweep
from fedshrink.sweep.results import accuracy_columns, final_accuracies, mean_final, narrow_widths, seed_gaps_cell

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "simulations" / "results" / "heavy_mix.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=ROOT / "runs" / "sweeps" / "heavy_mix")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    sweep = open_sweep(args.sweep_dir)
    seeds = list(dict.fromkeys(p.seed for p in sweep.planned))
    runs = {c: sweep.rounds(c) for c in sweep.configs()}
    mixes = {c: next(iter(sweep.of(c).values())).config.get("profile-mix", "") for c in runs if sweep.of(c)}
    fedavg = runs.get("fedavg", {})
    command = f"python simulations/benchmarks/bench_heavy_mix.py --sweep-dir {args.sweep_dir}"
    lines = [
        "# Heavy mixes against full-width FedAvg", "",
        f"`fedshrink sweep simulations/sweeps/heavy_mix.toml --out {args.sweep_dir}`, then `{command}`.", "",
        "digits, 20 clients, Dirichlet 0.5, cnn x1, 50 rounds, every client every round (no device availability, "
        "as in the fragments sweep), the same local training for every run (2 epochs, batch 16, SGD lr 0.01, "
        "momentum 0.9), the shipped fragment settings (the final model fused, docs/devices.md#fusion; reuse of "
        "absent updates has nothing to reuse here: nobody is absent), "
        f"seeds {', '.join(map(str, seeds))}. Accuracy: the global model on the test split (measured), %. "
        "*Gap*: FedAvg's mean final accuracy minus the fleet's; *per seed*: FedAvg's final accuracy minus the "
        "fleet's on the same seed. *Step*: the server's step (`server-lr` resolved: the shipped auto step is 2 "
        "on a fleet training fragments, 1 for FedAvg). *Narrow sub-models*: final "
        "accuracy of the width-0.25 and width-0.5 prefixes, mean over seeds. Bytes: whole run, mean over seeds, "
        "exact serialized messages.", "",
        "| fleet | profile mix | " + " | ".join(f"seed {s}" for s in seeds)
        + " | mean ± sd | gap to FedAvg | gap per seed | step | narrow sub-models 0.25 / 0.5 | uplink | downlink |",
        "|---|---|" + "---:|" * len(seeds) + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    ref, ref_finals = mean_final(fedavg), final_accuracies(fedavg)
    for config, per_seed in runs.items():
        if not per_seed:
            continue
        accuracy = " | ".join(accuracy_columns(per_seed, seeds, ref, reference=config == "fedavg"))
        up = statistics.mean(sum(int(x.get("bytes-up", 0)) for x in r) for r in per_seed.values())
        down = statistics.mean(sum(int(x.get("bytes-down", 0)) for x in r) for r in per_seed.values())
        mix = mixes.get(config) or "''"
        gaps = "" if config == "fedavg" else seed_gaps_cell(ref_finals, final_accuracies(per_seed), seeds)
        step = RunConfig.from_mapping(next(iter(sweep.of(config).values())).config).server_step
        lines.append(f"| {config} | `{mix}` | {accuracy} | {gaps} | {step:g} | {narrow_widths(per_seed)} | "
                     f"{human_bytes(up)} | {human_bytes(down)} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
