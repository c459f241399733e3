"""How far the demo's student falls below its teacher, and how much of that is chance: teachers x seeds.

The teachers are the global models of the demo_settings sweep (``simulations/sweeps/demo_settings.toml``): the
demo's fleet with the shipped settings ("shipped": the model ``make demo`` distils, on seeds 42, 1 and 2) and
fp32 FedAvg on the same seeds. Each is distilled by ``distill_and_export`` on its own run's splits (its seed's
180 proxy images, unlabelled, and 360 test images, used only to report), once per distillation seed (the
``DistillConfig.seed`` that draws the transfer set's augmentations, the batches and the initial weights), in
these configurations:

* **default**: ``DistillConfig()`` as the demo runs it (search inside 7,390 parameters and bytes, 2,000 + 1,000
  steps, Adam at 0.003, temperature 4, 50% pruning, int8);
* **Adam 0.006**: the same with ``learning_rate = 0.006``;
* **cnn x0.2**: a fixed student of 4,942 parameters (22x fewer than the teacher's 110,922: the compression
  frontier's 20x), no search, default training.

The script writes ``simulations/results/student_spread.md``: per teacher and configuration, the int8 student's
gap to its teacher on each teacher seed (mean and range over the distillation seeds), the mean and spread over
every run, how many runs end within 1.5 points, the size ratios, and the batch-64 torch speed-up (measured with
two runs on the machine at once, so noisier than ``distill.md``'s).

    fedshrink sweep simulations/sweeps/demo_settings.toml --out runs/sweeps/demo_settings
    python simulations/benchmarks/bench_student_spread.py --sweep-dir runs/sweeps/demo_settings [--workers 2]

(``make results`` runs both.) Teachers the sweep has not finished are left out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_distill import load_run_model  # noqa: E402

from fedshrink.distill import DistillConfig, distill_and_export  # noqa: E402
from fedshrink.sweep import open_sweep  # noqa: E402
from fedshrink.sweep.results import mean_sd  # noqa: E402

DEFAULT_OUT = ROOT / "simulations" / "results" / "student_spread.md"
TEACHERS = ("shipped", "fedavg")
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "Adam 0.006": {"learning_rate": 0.006},
    "cnn x0.2": {"student": "cnn:0.2", "max_params": 0, "max_bytes": 0},
}
RUN_CONFIGS = {"shipped": tuple(CONFIGS), "fedavg": ("default",)}
BOUND = 1.5  # points: the compression frontier's bound on the student's gap


@lru_cache(maxsize=8)
def _teacher(run_dir: str) -> tuple[Any, Any, Any]:
    return load_run_model(Path(run_dir))


def distil_once(job: tuple[str, str, dict[str, Any], int, str]) -> dict[str, Any]:
    """One student: ``(teacher run dir, configuration name, DistillConfig overrides, distillation seed, out dir)``."""
    run_dir, name, overrides, seed, out = job
    splits, spec, teacher = _teacher(run_dir)
    cfg = DistillConfig.from_dict({**DistillConfig().to_dict(), **overrides, "seed": seed})
    t0 = time.perf_counter()
    rep = distill_and_export(teacher, spec, splits.proxy.x, splits.test, cfg, Path(out))
    s, t = rep.student, rep.teacher
    return {
        "config": name, "seed": seed, "student": f"{rep.student_spec.name} x{rep.student_spec.width:g}",
        "params": s["params"], "bytes": s["bytes_int8_file"], "teacher_params": t["params"],
        "teacher_bytes": t["bytes_fp32"], "teacher_acc": t["test_accuracy"], "acc_int8": s["test_accuracy_int8"],
        "speedup64": t["latency_ms_batch64"] / s["latency_ms_batch64"], "seconds": time.perf_counter() - t0,
    }


def _range(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ({min(values):.2f} to {max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=ROOT / "runs" / "sweeps" / "demo_settings")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="distillation seeds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.workers < 1:
        ap.error(f"--workers {args.workers}: an integer >= 1")
    t_all = time.perf_counter()
    sweep = open_sweep(args.sweep_dir)
    teachers = {kind: sweep.of(kind) for kind in TEACHERS}  # kind -> sweep seed -> run
    if not any(teachers.values()):
        ap.error(f"{args.sweep_dir} has no finished 'shipped' or 'fedavg' run: run the demo_settings sweep first")
    work = Path(tempfile.mkdtemp(prefix="bench_student_spread_"))
    jobs, keys = [], []
    for kind, runs in teachers.items():
        for tseed, run in sorted(runs.items()):
            for name in RUN_CONFIGS[kind]:
                for seed in args.seeds:
                    keys.append((kind, tseed))
                    jobs.append((str(run.path), name, CONFIGS[name], seed, str(work / f"{len(jobs)}")))
    print(f"{len(jobs)} students on {args.workers} worker(s) ...", flush=True)
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(distil_once, jobs))
    (work / "students.json").write_text(json.dumps(results, indent=1))
    print(f"each student's files, and every figure in students.json: {work}", flush=True)
    rows: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
    for (kind, tseed), r in zip(keys, results, strict=True):
        r["gap"] = 100 * (r["teacher_acc"] - r["acc_int8"])
        print(f"{kind} seed {tseed} {r['config']} distil seed {r['seed']}: {r['student']} "
              f"{100 * r['acc_int8']:.2f}% (teacher {100 * r['teacher_acc']:.2f}%), gap {r['gap']:.2f}", flush=True)
        rows.setdefault((kind, r["config"]), {}).setdefault(tseed, []).append(r)

    tseeds = [s for s in dict.fromkeys(p.seed for p in sweep.planned) if any(s in r for r in teachers.values())]
    command = f"python simulations/benchmarks/bench_student_spread.py --sweep-dir {args.sweep_dir}" + (
        f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] else "")
    lines = [
        "# The demo's student against its teacher, over teachers and distillation seeds", "",
        f"`fedshrink sweep simulations/sweeps/demo_settings.toml --out {args.sweep_dir}`, then `{command}`. "
        f"Generated {datetime.datetime.now().isoformat(timespec='seconds')}; {len(jobs)} students on "
        f"{args.workers} worker(s), {time.perf_counter() - t_all:.0f} s.", "",
        "Teachers: the global models of the demo_settings sweep (digits, 20 clients, 20 rounds): *shipped* is the "
        "demo's fleet with the shipped settings (the model `make demo` distils), *fedavg* fp32 FedAvg, each on "
        f"seeds {', '.join(map(str, tseeds))}. Each teacher is distilled on its own run's splits (180 unlabelled "
        "proxy images; 360 test images, only to report) once per distillation seed "
        f"({', '.join(map(str, args.seeds))}). *Gap*: the teacher's test accuracy minus the int8 student's, "
        "points (one test image is 0.28). *Speed-up*: the teacher's torch ms at batch 64 over the student's, "
        "one thread, median over the runs"
        + (f" ({args.workers} runs shared the machine, so it is noisier than distill.md's)." if args.workers > 1
           else "."), "",
        "| teacher | configuration | student(s) | params fewer | bytes fewer | "
        + " | ".join(f"gap, teacher seed {s}" for s in tseeds)
        + f" | gap mean ± sd | runs within {BOUND:g} | speed-up b64 |",
        "|---|---|---|---:|---:|" + "---:|" * len(tseeds) + "---:|---:|---:|",
    ]
    for (kind, name), per_seed in rows.items():
        every = [r for rs in per_seed.values() for r in rs]
        gaps = [r["gap"] for r in every]
        students = ", ".join(sorted({r["student"] for r in every}))
        pr = [r["teacher_params"] / r["params"] for r in every]
        br = [r["teacher_bytes"] / r["bytes"] for r in every]
        cells = [_range([r["gap"] for r in per_seed[s]]) if s in per_seed else "-" for s in tseeds]
        stats = mean_sd(gaps)
        assert stats is not None  # every row holds at least one run
        mean, sd = stats
        within = sum(g <= BOUND + 1e-9 for g in gaps)
        lines.append(
            f"| {kind} | {name} | {students} | {min(pr):.1f}x | {min(br):.1f}x | " + " | ".join(cells)
            + f" | {mean:.2f} ± {sd:.2f} | {within} of {len(gaps)} | "
            f"{statistics.median(r['speedup64'] for r in every):.1f}x |")
    lines += ["", "Configurations:", ""]
    lines += [
        "- **default**: `DistillConfig()`, as `make demo` distils (the search inside 7,390 parameters and bytes, "
        "2,000 + 1,000 steps of Adam at 0.003, temperature 4, 50% magnitude pruning, int8)",
        "- **Adam 0.006**: the default with twice the learning rate (`learning_rate = 0.006`)",
        "- **cnn x0.2**: the default training of a fixed cnn x0.2 (no search; no size limits, since 4,942 "
        "parameters already fit 20x)",
        "",
        "Ranges are over the distillation seeds; *params fewer* and *bytes fewer* are the smallest ratios "
        "among the runs (the teacher's parameters, and its fp32 bytes, over the student's parameters and packed "
        "int8 file).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
