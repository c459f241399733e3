"""What the final fusion does to the global model, on digits and on glyphs: the analysis of the final_fusion sweep.

The runs come from ``simulations/sweeps/final_fusion.toml``: the demo's fleet (the default mix, every device
modelled, availability on), 20 rounds, distillation off, seeds 1-3, on digits (where fusion's settings were
chosen) and on glyphs (never tuned on), all made with fusion off. For each run this script fuses the final
global model as the server does after its last aggregation (:class:`fedshrink.fragments.fusion.Fusion` with the
shipped fusion settings, on the run's own proxy inputs and widths) and evaluates the model before and after on
the test split. One digits run of the sweep is made with the server's own final fusion: the script checks that
its fusion of the same seed gives that run's final model bit for bit, and stops if not.

    fedshrink sweep simulations/sweeps/final_fusion.toml --out runs/sweeps/final_fusion
    python simulations/benchmarks/bench_final_fusion.py --sweep-dir runs/sweeps/final_fusion [--out FILE]

(``make results`` runs both.) Runs the sweep has not finished are left out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fedshrink.config import RunConfig
from fedshrink.data import make_splits
from fedshrink.fragments import build_graph
from fedshrink.fragments.fusion import Fusion
from fedshrink.models import ModelSpec, build_model
from fedshrink.report.rundata import RunData
from fedshrink.server.evaluation import for_evaluation
from fedshrink.sweep import open_sweep
from fedshrink.sweep.results import pct_mean_sd
from fedshrink.training import EvalResult, evaluate

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "simulations" / "results" / "final_fusion.md"
CHECK = "digits, fused by the server"


def fused_final(run: RunData) -> tuple[EvalResult, EvalResult, float, dict[str, np.ndarray]]:
    """``(test figures before, after, host seconds of the fusion, fused state)`` of an unfused run."""
    cfg = RunConfig.from_mapping(run.config)
    shipped = RunConfig.from_mapping({**run.config, "fusion-steps": RunConfig().fragments.fusion_steps})
    fusion = shipped.fragments.fusion()
    if fusion is None or cfg.fragments.fusion_steps:
        raise SystemExit(f"{run.path}: expected a run made with fusion off")
    splits = make_splits(cfg.split_spec())
    spec = ModelSpec(cfg.model.model, splits.input_shape, splits.num_classes, cfg.model.model_width,
                     cfg.model.model_norm)
    model = build_model(spec)
    model.load_state_dict(torch.load(run.path / "global_model.pt", weights_only=True))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    widths = [*sorted(float(w) for w in run.rounds[-1].get("accuracy-width", {})), 1.0]  # the widths in use
    rounds = cfg.federation.num_server_rounds
    refiner = Fusion(build_graph(build_model(spec)), spec, torch.from_numpy(splits.proxy.x), fusion,
                     scaled=cfg.fragments.fragment_scaling, rounds=rounds)
    t = time.perf_counter()
    fused = refiner.refine(rounds, state, widths)
    seconds = time.perf_counter() - t
    before = evaluate(for_evaluation(model, splits), splits.test)
    after_model = build_model(spec)
    after_model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fused.items()})
    after = evaluate(for_evaluation(after_model, splits), splits.test)
    return before, after, seconds, fused


def check_against_server(sweep_runs: dict[int, RunData], server_runs: dict[int, RunData],
                         fused: dict[int, dict[str, np.ndarray]], after: dict[int, float]) -> str:
    """A line saying the script's fusion equals the server's (same seed), or SystemExit naming the difference."""
    seeds = sorted(set(server_runs) & set(fused))
    if not seeds:
        return "The check against the server's own final fusion was not made (its run is missing)."
    for seed in seeds:
        server = server_runs[seed]
        state = torch.load(server.path / "global_model.pt", weights_only=True)
        differ = [k for k, v in state.items() if not np.array_equal(v.numpy(), fused[seed][k])]
        recorded = float(server.rounds[-1]["accuracy"])
        if differ or recorded != after[seed]:
            raise SystemExit(f"seed {seed}: the script's fusion is not the server's ({len(differ)} tensors differ; "
                             f"accuracy {100 * after[seed]:.2f} against the server's {100 * recorded:.2f})")
        before = [r["accuracy"] for r in sweep_runs[seed].rounds[:-1]]
        if before != [r["accuracy"] for r in server.rounds[:-1]]:
            raise SystemExit(f"seed {seed}: the runs with and without fusion differ before the last round")
    return (f"Checked: on seed(s) {', '.join(map(str, seeds))} the script's fusion gives the server's fused final "
            f"model bit for bit (run `{CHECK}`), and both runs agree in every round before the last.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=ROOT / "runs" / "sweeps" / "final_fusion")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the sweep's runs
    sweep = open_sweep(args.sweep_dir)
    command = f"python simulations/benchmarks/bench_final_fusion.py --sweep-dir {args.sweep_dir}"
    shipped = RunConfig().fragments
    lines = [
        "# The final fusion, before and after", "",
        f"`fedshrink sweep simulations/sweeps/final_fusion.toml --out {args.sweep_dir}`, then `{command}`.", "",
        "The demo's fleet (20 clients, Dirichlet 0.5, the default mix `iot:0.2,phone:0.4,laptop:0.4`, every device "
        "modelled, availability on, offline devices' latest updates reused), cnn x1, 20 rounds, distillation off, "
        "runs made with fusion off. *Before*: the run's final global model; *after*: the same model fused as the "
        f"server does after its last aggregation (shipped settings: `fusion-teacher = {shipped.fusion_teacher}`, "
        f"{shipped.fusion_steps} Adam steps at lr {shipped.fusion_lr:g}, temperature "
        f"{shipped.fusion_temperature:g}, at most {shipped.fusion_batch} proxy images a step, the outer coordinates "
        "only; the final model's output layer then rescaled to its unfused mean prediction entropy on the proxy, "
        "which changes no prediction). Accuracy and loss (cross-entropy): test split (measured). *Sub-models*: "
        "the final width-0.25 / 0.5 prefixes (fusion "
        "leaves them as they are). *Fusion time*: host wall seconds of the fusion here, one torch thread "
        "(measured). Fusion's settings were chosen on digits; glyphs was never tuned on.", "",
        "| data set | seed | before % | after % | change (points) | loss before / after | sub-models 0.25 / 0.5 | "
        "fusion time (host s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary, check = [], ""
    for config in sweep.configs():
        if config == CHECK:
            continue
        runs = sweep.of(config)
        if not runs:
            continue
        before, after, fused_states = {}, {}, {}
        for seed, run in sorted(runs.items()):
            b, a, seconds, fused = fused_final(run)
            before[seed], after[seed], fused_states[seed] = b.accuracy, a.accuracy, fused
            widths = run.rounds[-1].get("accuracy-width", {})
            subs = " / ".join(f"{100 * widths[w]:.1f}" for w in ("0.25", "0.5") if w in widths) or "-"
            lines.append(f"| {config} | {seed} | {100 * b.accuracy:.2f} | {100 * a.accuracy:.2f} | "
                         f"{100 * (a.accuracy - b.accuracy):+.2f} | {b.loss:.3f} / {a.loss:.3f} | {subs} | "
                         f"{seconds:.2f} |")
        changes = [100 * (after[s] - before[s]) for s in before]
        summary.append(f"- **{config}**: {pct_mean_sd(list(before.values()))}% before, "
                       f"{pct_mean_sd(list(after.values()))}% after; change per seed "
                       f"{' / '.join(f'{c:+.2f}' for c in changes)} points, mean {statistics.mean(changes):+.2f}.")
        if config == "digits":
            check = check_against_server(runs, sweep.of(CHECK), fused_states, after)
    lines += ["", *summary, "", check or "The check against the server's own final fusion was not made.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
