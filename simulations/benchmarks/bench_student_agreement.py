"""Can the proxy's held-out agreement tell how far a student will land from its teacher?

A student budget relative to the teacher ("the smallest student within 1.5 points of the teacher") needs an
estimate of each candidate's accuracy gap from what the server has: unlabeled proxy images. The search scores
candidates by their top-1 agreement with the teacher on held-out proxy images (and augmented views of them). This
benchmark measures, for every candidate, that agreement after the search's steps (100, then 400) and after a full
distillation's 2,000 steps, on the held-out images alone and with their views, next to the test-accuracy gap the
full pipeline (``distill_and_export`` with that student fixed: distillation, pruning, fine-tuning, int8) ends
with. The test set is read for the last columns only.

    python simulations/benchmarks/bench_student_agreement.py [--dataset digits] [--out FILE]

It first trains its teacher as ``bench_distill.py`` does (full-width FedAvg, 40 rounds, 20 clients, seed 42).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_distill import load_run_model, train_federated  # noqa: E402

from fedshrink.distill import DistillConfig, distill_and_export  # noqa: E402
from fedshrink.distill.fold import freeze_on  # noqa: E402
from fedshrink.distill.kd import build_transfer_set, distill  # noqa: E402
from fedshrink.distill.search import candidate_spec, scoring_set, split_holdout, trained_params  # noqa: E402
from fedshrink.models import build_model  # noqa: E402
from fedshrink.training import evaluate  # noqa: E402

CANDIDATES = ("mlp:0.1", "mlp:0.2", "cnn:0.125", "cnn:0.1875", "cnn:0.25", "resnet:0.1875", "resnet:0.25",
              "cnn:0.375", "cnn:0.5")
STAGES = (100, 300, 1600)  # extra steps: agreement after 100, 400 (the search's two rungs) and 2,000 (a full run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=("digits", "glyphs"), default="digits")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or ROOT / "simulations" / "results" / (
        "student_agreement.md" if args.dataset == "digits" else f"student_agreement_{args.dataset}.md")
    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_agreement_"))
    print("training the teacher (full-width FedAvg, 40 rounds) ...", flush=True)
    splits, tspec, teacher = load_run_model(train_federated({"dataset": args.dataset}, work / "runs"))
    t_acc = evaluate(teacher, splits.test).accuracy
    cfg = DistillConfig()
    search = cfg.search_settings()
    px = torch.from_numpy(splits.proxy.x)
    train_idx, held_idx = split_holdout(len(px), search.holdout, cfg.seed)
    transfer = build_transfer_set(px[torch.from_numpy(train_idx)], teacher, cfg.transfer_size, cfg.augment,
                                  seed=cfg.seed)
    x_score = scoring_set(px[torch.from_numpy(held_idx)], search.views, cfg.augment, cfg.seed + 1)
    n_held = len(held_idx)
    with torch.no_grad():
        t_pred = teacher(x_score).argmax(1)
    rows = []
    for text in CANDIDATES:
        spec = candidate_spec(text, tspec)
        if trained_params(spec) >= trained_params(tspec):
            continue
        torch.manual_seed(cfg.seed)
        student = build_model(spec)
        row: dict[str, float | str] = {"candidate": text}
        done = 0
        for steps in STAGES:
            distill(student, transfer, cfg.kd_settings(steps), seed=cfg.seed + done)
            done += steps
            with torch.no_grad():
                agree = (freeze_on(student, transfer.x)(x_score).argmax(1) == t_pred).float()
            row[f"plain{done}"] = float(agree[:n_held].mean())
            row[f"views{done}"] = float(agree.mean())
        rep = distill_and_export(teacher, tspec, splits.proxy.x, splits.test,
                                 DistillConfig(max_params=0, max_bytes=0, student=text), work / text.replace(":", "_"))
        s = rep.card["student"]
        row.update(params=s["params"], fp32=s["test_accuracy_fp32"], int8=s["test_accuracy_int8"])
        rows.append(row)
        print(row, flush=True)

    lines = [
        f"# Held-out teacher agreement against the final accuracy gap ({args.dataset})", "",
        f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} by "
        "`python simulations/benchmarks/bench_student_agreement.py"
        + (f" --dataset {args.dataset}`" if args.dataset != "digits" else "`")
        + f"; total {time.perf_counter() - t_all:.0f}s.", "",
        f"Teacher: cnn x1 (static BatchNorm), full-width FedAvg, 40 rounds, 20 clients; test accuracy "
        f"{100 * t_acc:.2f}% on {len(splits.test)} images. Proxy: {len(px)} images, {len(train_idx)} for the "
        f"transfer set and **{n_held} held out** (the search's split, holdout {search.holdout:g}); each held-out "
        f"image also has {search.views} augmented views, so the 'with views' score counts "
        f"{len(x_score)} predictions. One disagreement among the held-out images alone is "
        f"**{100 / n_held:.2f} points**.", "",
        "Agreement: share of held-out predictions equal to the teacher's after 100 / 400 / 2,000 distillation steps "
        "(the first two are the search's rungs). Gap: the teacher's test accuracy minus the student's after the "
        "whole pipeline (2,000 steps, 50% pruning, 1,000 steps of fine-tuning, int8), in points.", "",
        "| candidate | params (exported) | held-out alone 100 / 400 / 2,000 | with views 100 / 400 / 2,000 "
        "| test fp32 % | gap fp32 | gap int8 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        plain = " / ".join(f"{float(r[f'plain{k}']):.3f}" for k in (100, 400, 2000))
        views = " / ".join(f"{float(r[f'views{k}']):.3f}" for k in (100, 400, 2000))
        lines.append(f"| {r['candidate']} | {int(r['params']):,} | {plain} | {views} | {100 * float(r['fp32']):.2f} "
                     f"| {100 * (t_acc - float(r['fp32'])):.2f} | {100 * (t_acc - float(r['int8'])):.2f} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
