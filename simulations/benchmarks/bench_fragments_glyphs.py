"""Heterogeneous fragments against full-width FedAvg on glyphs: adds the glyphs sweep's tables to fragments.md.

The runs come from ``simulations/sweeps/fragments_glyphs.toml``: the fragments
sweep's FedAvg and static-policy configurations with the same settings on the
generated 28x28 glyphs (the second data set, never tuned on), 20 rounds. This
script rewrites ``simulations/results/fragments.md`` from both sweeps: the
digits tables of ``bench_fragments.py``, then the same tables on glyphs.

    fedshrink sweep simulations/sweeps/fragments_glyphs.toml --out runs/sweeps/fragments_glyphs
    python simulations/benchmarks/bench_fragments_glyphs.py --sweep-dir runs/sweeps/fragments_glyphs

(``make results`` runs both, after the fragments sweep.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fragments


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=bench_fragments.ROOT / "runs" / "sweeps" / "fragments_glyphs")
    ap.add_argument("--digits-sweep-dir", type=Path, default=bench_fragments.ROOT / "runs" / "sweeps" / "fragments")
    ap.add_argument("--out", type=Path, default=bench_fragments.DEFAULT_OUT)
    args = ap.parse_args()
    if not (args.sweep_dir / "plan.json").is_file():
        ap.error(f"--sweep-dir {args.sweep_dir}: no sweep there; run "
                 "`fedshrink sweep simulations/sweeps/fragments_glyphs.toml --out runs/sweeps/fragments_glyphs` first")
    bench_fragments.main(["--sweep-dir", str(args.digits_sweep_dir), "--glyphs-sweep-dir", str(args.sweep_dir),
                          "--out", str(args.out)])


if __name__ == "__main__":
    main()
