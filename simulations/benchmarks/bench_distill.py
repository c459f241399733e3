"""Benchmark server-side distillation: teacher vs students, size, MACs, latency, accuracy, per data set.

Usage::

    python simulations/benchmarks/bench_distill.py [--dataset digits|glyphs] [--rounds N] [--teacher-run RUN_DIR]
        [--out simulations/results/distill.md]

Without ``--teacher-run`` it first trains a full-width FedAvg global model
(``run_inprocess({"profile-mix": "", "num-server-rounds": N})``: cnn x1.0, full width, ``--rounds`` rounds (40 by
default), 20 clients, ``--dataset`` (digits by default; ``glyphs`` is the generated 28x28 set, never used to tune
the defaults), seed 42); with
it, it loads ``RUN_DIR/global_model.pt`` from such a run, built from that run's own model settings (model,
width, norm) and evaluated as the server evaluates it (static batch statistics frozen on the proxy). Then, on the
teacher run's own splits (its data set and seed: for digits 180 proxy images and 360 test, for glyphs 2,400 and
4,000; the federated baseline below is trained on the same seed's clients):

* **KD (searched)**: ``distill_and_export`` with the default ``DistillConfig``:
  student search, distillation from the unlabeled proxy images only, pruning, int8.
* **KD, no augmentation**: the searched architecture, same settings, augmentation off
  (the transfer set is the proxy images only).
* **relative budget**: ``distill_and_export`` with ``max_gap = 1.5`` and no size limits: the smallest
  candidate whose disagreement with the teacher on the held-out proxy images is at most 1.5 points.
* **proxy + labels**: the searched architecture trained on the proxy images *with
  their labels* (``alpha = 1``: cross-entropy only, no teacher), same augmentation,
  steps, pruning and int8: what the server could do if it had labels.
* **federated, no KD**: the searched architecture trained federatedly from scratch
  on the clients' data with the teacher's settings (``run_inprocess`` with that model
  and width; ``--fl-rounds`` rounds, by default as many as the teacher's), then pruned and
  int8-quantized with the same code but no fine-tuning (fine-tuning would need
  either labels or a teacher on the server).

Every figure is measured by this script: MACs per sample (Conv2d + Linear),
bytes on disk of the int8 packed file (``.fsq``) for students and of fp32
parameters (4 bytes each) for the teacher, accuracy on the 360 test images,
latency as the median ms of one forward pass on one thread (batch 1 and 64;
torch, and onnxruntime for the fp32 ONNX export).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedshrink.config import RunConfig  # noqa: E402
from fedshrink.data import make_splits  # noqa: E402
from fedshrink.distill import DistillConfig, distill_and_export  # noqa: E402
from fedshrink.distill.compress import finalize_pruning, pack_int8, prune_student, quantize_int8  # noqa: E402
from fedshrink.distill.export import export_onnx, measure_latency_ms, onnx_latency_ms  # noqa: E402
from fedshrink.distill.macs import count_macs  # noqa: E402
from fedshrink.models import ModelSpec, build_model, count_parameters  # noqa: E402
from fedshrink.server.evaluation import for_evaluation  # noqa: E402
from fedshrink.training import evaluate  # noqa: E402

RELATIVE_GAP = 1.5  # points: the relative budget's row (the compression frontier's bound on the student's gap)


def train_federated(overrides: dict[str, Any], base: Path, rounds: int = 40) -> Path:
    from fedshrink.runner.inprocess import run_inprocess

    res = run_inprocess({"output-dir": str(base), "quiet": True, "profile-mix": "", "num-server-rounds": rounds,
                         **overrides})  # the teacher these results were measured with: full-width FedAvg
    return res.run_dir


def run_config(run_dir: Path) -> RunConfig:
    """A run directory's settings (its config.json)."""
    return RunConfig.from_json((run_dir / "config.json").read_text())


def run_splits(run_dir: Path) -> tuple[RunConfig, Any]:
    """A run directory's settings and the splits it was trained and evaluated on.

    The test and proxy splits follow the run's seed, so a teacher from a run with another seed than 42 is only
    measured on its own test split (another seed's test images may be among its clients' training images)."""
    cfg = run_config(run_dir)
    return cfg, make_splits(cfg.split_spec())


def load_run_model(run_dir: Path) -> tuple[Any, ModelSpec, torch.nn.Module]:
    """A run directory's own splits (:func:`run_splits`) and its global model, built from the run's own settings
    (model, width, norm) and made ready for evaluation as the server evaluates it (static batch statistics frozen
    on the proxy inputs). The model always comes with the splits it was trained beside, never another seed's."""
    cfg, splits = run_splits(run_dir)
    spec = ModelSpec(cfg.model.model, splits.input_shape, splits.num_classes, cfg.model.model_width,
                     cfg.model.model_norm)
    model = build_model(spec)
    model.load_state_dict(torch.load(run_dir / "global_model.pt", weights_only=True))
    return splits, spec, for_evaluation(model, splits)


def row_from_card(label: str, card: dict[str, Any]) -> dict[str, Any]:
    s = card["student"]
    spec = s["spec"]
    return {
        "model": f"{spec['name']} x{spec['width']:g}", "how": label, "params": s["params"],
        "nonzeros": s["nonzero_weights"], "macs": s["macs"], "bytes": s["bytes_int8_file"],
        "acc_fp32": s["test_accuracy_fp32"], "acc_int8": s["test_accuracy_int8"],
        "lat1": s["latency_ms_batch1"], "lat64": s["latency_ms_batch64"], "ort1": s["onnx_latency_ms_batch1"],
        "ort64": s["onnx_latency_ms_batch64"], "seconds": card["seconds"]["total"],
    }


def ort_latencies(model: torch.nn.Module, shape: tuple[int, int, int], path: Path, repeats: int) -> tuple[float, float]:
    """onnxruntime ms at batch 1 and 64 (one thread) of ``model`` exported to ``path`` as the library exports."""
    export_onnx(model, shape, path)
    return onnx_latency_ms(path, shape, 1, repeats=repeats), onnx_latency_ms(path, shape, 64, repeats=repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("digits", "glyphs"), default="digits")
    ap.add_argument("--rounds", type=int, default=40, help="rounds of the teacher's full-width FedAvg")
    ap.add_argument("--teacher-run", type=Path, default=None)
    ap.add_argument("--fl-rounds", type=int, default=0,
                    help="rounds of the federated no-KD baseline (0 = as many as the teacher's)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default simulations/results/distill.md, or distill_<dataset>.md for another data set")
    args = ap.parse_args()
    if args.out is None:
        name = "distill.md" if args.dataset == "digits" else f"distill_{args.dataset}.md"
        args.out = ROOT / "simulations" / "results" / name
    fl_rounds = args.fl_rounds or args.rounds
    work = Path(tempfile.mkdtemp(prefix="bench_distill_"))
    t_all = time.perf_counter()

    teacher_run = args.teacher_run
    if teacher_run is None:
        print(f"training the teacher (full-width FedAvg, {args.rounds} rounds) ...", flush=True)
        teacher_run = train_federated({"dataset": args.dataset}, work / "runs", args.rounds)
    teacher_cfg = run_config(teacher_run)  # its settings only: load_run_model makes its splits
    dataset, seed = teacher_cfg.data.dataset, teacher_cfg.federation.seed
    if dataset != args.dataset:
        ap.error(f"--teacher-run {teacher_run} was trained on {dataset!r}, not on --dataset {args.dataset!r}")
    splits, tspec, teacher = load_run_model(teacher_run)

    cfg = DistillConfig()
    print("KD with search ...", flush=True)
    kd = distill_and_export(teacher, tspec, splits.proxy.x, splits.test, cfg, work / "kd", log=print)
    card = kd.card
    student_name = f"{kd.student_spec.name}:{kd.student_spec.width:g}"
    fixed = {**cfg.to_dict(), "student": student_name}
    fixed.pop("augment")

    print("KD without augmentation ...", flush=True)
    no_aug = {"max_shift": 0, "max_rotate_deg": 0, "max_scale": 0, "noise_std": 0, "mixup_fraction": 0,
              "mixup_alpha": 0}
    noaug = distill_and_export(teacher, tspec, splits.proxy.x, splits.test,
                               DistillConfig.from_dict({**fixed, "augment": no_aug}), work / "noaug")
    print("KD with a budget relative to the teacher ...", flush=True)
    relative = distill_and_export(teacher, tspec, splits.proxy.x, splits.test,
                                  DistillConfig(max_gap=RELATIVE_GAP, max_params=0, max_bytes=0), work / "relative")
    print("proxy with labels ...", flush=True)
    labels = distill_and_export(teacher, tspec, splits.proxy.x, splits.test,
                                DistillConfig.from_dict({**fixed, "alpha": 1.0}), work / "labels",
                                proxy_y=splits.proxy.y)

    print(f"federated {student_name} without distillation ...", flush=True)
    t0 = time.perf_counter()
    fl_run = train_federated({"dataset": args.dataset, "seed": seed, "model": kd.student_spec.name,
                              "model-width": kd.student_spec.width}, work / "runs", fl_rounds)
    _, _, fl = load_run_model(fl_run)  # the same seed's splits as the teacher's
    fl_acc = evaluate(fl, splits.test).accuracy
    prune_student(fl, cfg.prune_amount)
    finalize_pruning(fl)
    px = torch.from_numpy(splits.proxy.x)
    fl_q = quantize_int8(fl, px)
    shape = splits.input_shape
    torch.set_num_threads(1)
    fl_row = {
        "model": f"{kd.student_spec.name} x{kd.student_spec.width:g}",
        "how": f"federated on client data, {fl_rounds} rounds, no KD (pruned + int8, no fine-tuning)",
        "params": count_parameters(fl),
        "nonzeros": int(sum(int((m.weight != 0).sum()) for m in fl.modules()
                            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))),
        "macs": count_macs(fl, shape), "bytes": len(pack_int8(fl_q)),
        "acc_fp32": evaluate(fl, splits.test).accuracy, "acc_int8": evaluate(fl_q, splits.test).accuracy,
        "lat1": measure_latency_ms(fl, shape, 1, repeats=cfg.latency_repeats),
        "lat64": measure_latency_ms(fl, shape, 64, repeats=cfg.latency_repeats),
        **dict(zip(("ort1", "ort64"), ort_latencies(fl, shape, work / "fl.onnx", cfg.latency_repeats), strict=True)),
        "seconds": time.perf_counter() - t0,
    }
    teacher_ort1, teacher_ort64 = ort_latencies(teacher, shape, work / "teacher.onnx", cfg.latency_repeats)

    t = card["teacher"]
    rows = [
        {"model": f"{tspec.name} x{tspec.width:g}", "how": "teacher: federated global model (fp32)",
         "params": t["params"],
         "nonzeros": None, "macs": t["macs"], "bytes": t["bytes_fp32"], "acc_fp32": t["test_accuracy"],
         "acc_int8": None, "lat1": t["latency_ms_batch1"], "lat64": t["latency_ms_batch64"], "ort1": teacher_ort1,
         "ort64": teacher_ort64, "seconds": None},
        row_from_card("KD from unlabeled proxy, searched (default)", card),
        row_from_card("KD from unlabeled proxy, no augmentation", noaug.card),
        row_from_card("proxy with labels (CE, no teacher)", labels.card),
        row_from_card(f"KD, relative budget (student-max-gap {RELATIVE_GAP:g}, no size limits)", relative.card),
        fl_row,
    ]

    def f(v: Any, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    lines = [
        f"# Server-side distillation on {args.dataset}",
        "",
        f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} by "
        "`python simulations/benchmarks/bench_distill.py"
        + (f" --teacher-run {args.teacher_run}" if args.teacher_run else "")
        + (f" --dataset {args.dataset}" if args.dataset != "digits" else "")
        + (f" --rounds {args.rounds}" if args.rounds != 40 else "")
        + (f" --fl-rounds {args.fl_rounds}" if args.fl_rounds else "")
        + "`"
        + f" on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s) for latency; total {time.perf_counter() - t_all:.0f}s.",
        "",
        f"Teacher: the global model of `{teacher_run.name}` ({tspec.name} x{tspec.width:g}, {tspec.norm} norm; "
        f"full-width FedAvg, {args.rounds} rounds, 20 clients, unless --teacher-run names another run). "
        f"Proxy: {len(splits.proxy)} images "
        f"({args.dataset}, proxy-fraction 0.1), used **without labels** except in the 'proxy with labels' row. "
        f"Test: {len(splits.test)} images, used only for these figures.",
        "",
        "| model | how trained | params | nonzero weights | MACs / sample | bytes on disk | test acc fp32 "
        "| test acc int8 | torch ms b1 | torch ms b64 | ORT ms b1 | ORT ms b64 | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['how']} | {r['params']:,} | {f(r['nonzeros'], ',')} | {r['macs']:,} | "
            f"{r['bytes']:,} | {100 * r['acc_fp32']:.2f} | "
            f"{'—' if r['acc_int8'] is None else format(100 * r['acc_int8'], '.2f')} | {r['lat1']:.3f} | "
            f"{r['lat64']:.3f} | {f(r['ort1'], '.3f')} | {f(r['ort64'], '.3f')} | {f(r['seconds'], '.1f')} |"
        )
    s = card["student"]
    ratios = card["ratios"]
    gap = card["accuracy_gap_points"]
    lines += [
        "",
        "## Targets (default demo settings)",
        "",
        f"* parameters: {t['params']:,} / {s['params']:,} = **{ratios['params']:.1f}x** fewer (target >= 15x; "
        "the compression frontier's: >= 20x)",
        f"* bytes on disk: {t['bytes_fp32']:,} (teacher fp32 parameters; its .pt file is "
        f"{t['bytes_state_dict_file']:,}) / {s['bytes_int8_file']:,} (student_int8.fsq) = "
        f"**{ratios['bytes']:.1f}x** smaller (target >= 60x; the compression frontier's: >= 80x)",
        f"* test accuracy: teacher {100 * t['test_accuracy']:.2f}%, student fp32 "
        f"{100 * s['test_accuracy_fp32']:.2f}% (gap **{gap['fp32']:.2f}** points), int8 "
        f"{100 * s['test_accuracy_int8']:.2f}% (gap **{gap['int8']:.2f}** points) (target: within 1.5)",
        f"* speed-up at batch 64, teacher / default student in the same runtime, one thread: torch "
        f"{t['latency_ms_batch64']:.3f} / {s['latency_ms_batch64']:.3f} ms = "
        f"**{t['latency_ms_batch64'] / s['latency_ms_batch64']:.1f}x**; onnxruntime (both exported to ONNX fp32 "
        f"as the library exports the student) {teacher_ort64:.3f} / {s['onnx_latency_ms_batch64']:.3f} ms = "
        f"**{teacher_ort64 / s['onnx_latency_ms_batch64']:.1f}x** (target: >= 5x)",
        f"* ONNX (fp32) vs torch: max |diff| {s['onnx_max_abs_diff']:.2e} over 320 images (target <= 1e-4); "
        f"ONNX test accuracy {100 * s['test_accuracy_onnx']:.2f}%",
        f"* distill_and_export wall time: {card['seconds']['total']:.1f}s "
        f"(search {card['seconds']['search']:.1f}s, training {card['seconds']['train']:.1f}s)",
        f"* selection: {card['selection']}",
        f"* relative budget (`student-max-gap = {RELATIVE_GAP:g}`, `student-max-params = 0`, "
        f"`student-max-bytes = 0`): {relative.card['selection']}; test accuracy fp32 "
        f"{100 * relative.card['student']['test_accuracy_fp32']:.2f}% (gap "
        f"**{relative.card['accuracy_gap_points']['fp32']:.2f}** points), {relative.card['ratios']['params']:.1f}x "
        f"fewer parameters, {relative.card['ratios']['bytes']:.1f}x fewer bytes",
        "",
        "## Search (Pareto front over rung-0 teacher agreement, params, latency)",
        "",
        "| candidate | params | MACs | bytes bound | ms b1 | in budget | rung-0 agreement | last agreement "
        "| on front | picked |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    pareto = json.loads((work / "kd" / "pareto.json").read_text())
    for c in pareto["candidates"]:
        lines.append(
            f"| {c['candidate']} | {c['params']:,} | {c['macs']:,} | {c['bytes_bound']:,} | {c['latency_ms']:.3f} | "
            f"{'yes' if c['in_budget'] else 'no: ' + c['why_out']} | {f(c['rung0_agreement'], '.3f')} | "
            f"{f(c['last_agreement'], '.3f')} | {'yes' if c['on_front'] else ''} | "
            f"{'**yes**' if c['picked'] else ''} |"
        )
    lines += [
        "",
        "## Definitions",
        "",
        "* **bytes on disk** (students): size of `student_int8.fsq`, the packed int8 file: per Conv/Linear layer "
        "a bitmap of nonzero weights (1 bit each), the int8 nonzeros, fp32 per-output-channel scales, fp32 bias "
        "and the input activation's uint8 scale/zero-point; fp32 norm parameters (none in a student trained with "
        "static BatchNorm: its norms are folded into the layers before them); the ModelSpec JSON header. "
        "No general-purpose compressor. Teacher: 4 bytes per fp32 parameter.",
        "* **MACs**: multiply-accumulates per sample in Conv2d and Linear layers "
        "(`H_out W_out C_out C_in/groups k_h k_w`; `in x out`), `fedshrink/distill/macs.py`.",
        "* **latency**: median wall-clock ms of one forward call on one CPU thread after warm-up "
        "(batch 64: per batch), in torch and in onnxruntime (one intra-op thread, the fp32 ONNX export; the "
        "teacher with its static batch statistics frozen on the proxy, as the server evaluates it). The int8 "
        "student runs as a simulation (dequantize-then-compute), so no int8 "
        "latency is claimed; its accuracy is that of the packed file's model, re-read from disk.",
        "* **federated, no KD**: the same architecture trained federatedly as the teacher was (full-width FedAvg); its "
        "pruning + int8 is post-hoc without fine-tuning, since the server holds neither labels nor (in this "
        "baseline) a teacher. Its fp32 accuracy before pruning was "
        f"{100 * fl_acc:.2f}%.",
        "* Timings are on a shared 2-core machine with other jobs running; they vary by tens of percent.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
