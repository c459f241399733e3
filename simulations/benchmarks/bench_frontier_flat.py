"""The compression frontier with flat updates: adds the frontier_flat sweep's section to frontier.md.

The runs come from ``simulations/sweeps/frontier_flat.toml``: the frontier sweep's setup (digits, 20 clients,
50 rounds, every client every round, the same local training, seeds 1-3) with flat chains, Rice-coded indices,
the compact resource record and a seeded first send, against FedAvg run again with the same code; and the
FedAvg runs on glyphs (never tuned on). This script rewrites ``simulations/results/frontier.md`` from both
sweeps: the frontier sweep's tables, then this one's.

    fedshrink sweep simulations/sweeps/frontier_flat.toml --out runs/sweeps/frontier_flat
    python simulations/benchmarks/bench_frontier_flat.py --sweep-dir runs/sweeps/frontier_flat

(``make results`` runs both, after the frontier sweep.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_frontier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=bench_frontier.ROOT / "runs" / "sweeps" / "frontier_flat")
    ap.add_argument("--frontier-sweep-dir", type=Path, default=bench_frontier.ROOT / "runs" / "sweeps" / "frontier")
    ap.add_argument("--out", type=Path, default=bench_frontier.DEFAULT_OUT)
    args = ap.parse_args()
    for label, path, name in (("--sweep-dir", args.sweep_dir, "frontier_flat"),
                              ("--frontier-sweep-dir", args.frontier_sweep_dir, "frontier")):
        if not (path / "plan.json").is_file():
            ap.error(f"{label} {path}: no sweep there; run `fedshrink sweep simulations/sweeps/{name}.toml "
                     f"--out runs/sweeps/{name}` first")
    bench_frontier.main(["--sweep-dir", _shown(args.frontier_sweep_dir), "--flat-sweep-dir", str(args.sweep_dir),
                         "--out", str(args.out)])


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies in it (the results file names the command)."""
    return str(path.resolve().relative_to(bench_frontier.ROOT)) if path.resolve().is_relative_to(
        bench_frontier.ROOT) else str(path)


if __name__ == "__main__":
    main()
