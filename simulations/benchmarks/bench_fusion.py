"""Fusion's cost per round on the host, on digits (8x8) and on the generated 28x28 glyphs.

Fusion (``fusion-steps`` > 0, :mod:`fedshrink.fragments.fusion`) runs on the server after the aggregation of a
mixed run's final round (shipped), or of every round (``fusion-last-rounds = 0``, as the fragments, robustness
and privacy sweeps ran it). This measures one round's fusion as the server runs it: the
default CNN, the default mix's widths (0.5 and 1), the proxy split the run would hold
(``proxy-fraction`` of the data set), the every-round fusion those sweeps used (20 Adam steps, the sub-models'
teacher, the shipped ``fusion-batch`` 256; the shipped final fusion takes 50 steps: final_fusion.md),
and for comparison every step on the whole proxy (``fusion-batch`` = the proxy's size, as
fusion ran before the cap). Host measurements: median of ``--repeats`` rounds, one torch thread.

    python simulations/benchmarks/bench_fusion.py --out simulations/results/fusion.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from fedshrink.config import RunConfig
from fedshrink.data import make_splits
from fedshrink.fragments import build_graph
from fedshrink.fragments.fusion import FusionConfig, fuse
from fedshrink.models import ModelSpec, build_model

ROOT = Path(__file__).resolve().parents[2]


def measure(dataset: str, batch: int | None, repeats: int) -> tuple[int, float]:
    cfg = RunConfig.from_mapping({"dataset": dataset})
    splits = make_splits(cfg.split_spec())
    spec = ModelSpec("cnn", splits.input_shape, splits.num_classes)
    torch.manual_seed(0)
    model = build_model(spec)
    graph = build_graph(model)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    x = torch.from_numpy(splits.proxy.x)
    config = FusionConfig(batch=batch if batch is not None else max(1, len(x)))
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fuse(state, graph, spec, [0.5, 1.0], x, config, seed=r)
        times.append(time.perf_counter() - t0)
    return len(x), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["digits", "glyphs"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "simulations" / "results" / "fusion.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for dataset in args.datasets:
        for label, batch in (("shipped (fusion-batch 256)", 256), ("whole proxy every step", None)):
            n, seconds = measure(dataset, batch, args.repeats)
            rows.append(f"| {dataset} | {n} | {label} | {seconds:.2f} |")
            print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    lines = ["# Fusion's cost per round (host measurements)", "",
             f"Command: `python simulations/benchmarks/bench_fusion.py {' '.join(sys.argv[1:])}`", "",
             f"Host: {os.cpu_count()} logical CPUs, one torch thread, load average {load:.1f} when it ran. "
             "One round's fusion of the default CNN for the default mix's widths (0.5, 1): 20 Adam steps on the "
             f"server's proxy split, median of {args.repeats} rounds.", "",
             "| data set | proxy images | steps use | seconds per round |", "|---|---:|---|---:|", *rows, ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
