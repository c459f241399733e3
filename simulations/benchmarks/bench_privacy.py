"""Client-level differential privacy: accuracy against epsilon, full-width FedAvg and the default profile mix.

    python simulations/benchmarks/bench_privacy.py [--dataset digits] [--seeds 0 1 2] [--rounds 20]
                                                   [--eps inf 8 4 1] [--mixes full mix] [--clip-only]
                                                   [--distributed 8] [--cache DIR] [--report-only]

digits (1,257 training samples; 1 or 2 per client) or glyphs (the generated second set, 17,600 training
samples; 17 or 18 per client) split iid over 1,000 clients, 100 clients sampled per round without
replacement (every device available, so every sampled client replies), the default CNN, distillation and
checkpoints off. Each epsilon is a central DP-FedAvg run (``dp-mode = central``) whose noise multiplier is
calibrated so that its rounds spend exactly that epsilon at delta = 1 / 1,000 (sampling without
replacement, replace-one), with adaptive clipping (quantile 0.5, from 0.3: the median update norm of a
client at initialisation, measured on digits); ``inf`` is the run without DP. ``full`` trains the whole
model with raw uplinks; ``mix`` is ``fedshrink.devices.profiles.DEFAULT_MIX`` (fragments, pruning, top-k + quantized
uplinks with error feedback), with ``pruned-as-zero = false`` in every row (DP requires it). ``--clip-only``
adds the DP runs with no noise (clipping and uniform weights alone); ``--distributed 8`` adds runs in
distributed mode (clients add the noise before compression) whose z is calibrated as central mode's, so the
aggregate's epsilon is 8 for lossless uplinks (the run reports each client's local epsilon when they are lossy).

Every run is cached as JSON under ``--cache`` (an interrupted benchmark continues; parts can run in
parallel); the results file is written from the cache (``--report-only`` writes only it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedshrink.devices.profiles import DEFAULT_MIX
from fedshrink.privacy.accountant import RoundEvent, calibrate, epsilon_of, poisson_epsilon
from fedshrink.report import RunDirectory
from fedshrink.runner import run_inprocess

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, PER_ROUND, CLIP0 = 1000, 100, 0.3
MIXES = {"full": {"profile-mix": ""}, "mix": {"profile-mix": DEFAULT_MIX, "pruned-as-zero": False}}
CLIP_ONLY = "clip"
SPLIT = {"digits": "1-2 of the 1,257 training samples each: the largest fleet digits allows",
         "glyphs": "17-18 of the 17,600 generated training samples each"}
DISTRIBUTED = "dist-"  # a row "dist-8": distributed mode calibrated to epsilon 8 for the aggregate


def settings(dataset: str, mix: str, eps: str, seed: int, rounds: int, out: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {"dataset": dataset, "seed": seed, "num-server-rounds": rounds, "partitioner": "iid",
                           "clients-per-round": PER_ROUND, "device-availability": False, "distill": False,
                           "checkpoint": False, "quiet": True, "report": False, "output-dir": out, **MIXES[mix]}
    if eps == "inf":
        return cfg
    dp = {"dp-mode": "central", "dp-clip": CLIP0, "dp-clip-quantile": 0.5, "dp-reproducible-noise": True}
    if eps == CLIP_ONLY:
        return {**cfg, **dp, "dp-noise-multiplier": 0.0}
    if eps.startswith(DISTRIBUTED):  # clients add the noise; z calibrated as for the aggregate of central mode
        return {**cfg, **dp, "dp-mode": "distributed", "dp-noise-multiplier": 0.0,
                "dp-target-epsilon": float(eps.removeprefix(DISTRIBUTED))}
    return {**cfg, **dp, "dp-noise-multiplier": 0.0, "dp-target-epsilon": float(eps)}


def one_run(dataset: str, mix: str, eps: str, seed: int, rounds: int) -> dict[str, Any]:
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_inprocess(settings(dataset, mix, eps, seed, rounds, tmp), num_clients=CLIENTS)
        history = RunDirectory(result.run_dir).read_rounds()
    s = result.summary
    acc = [float(r["accuracy"]) for r in history]
    clips = [r["stages"]["privacy"]["clip"] for r in history if "privacy" in r.get("stages", {})]
    return {"final": acc[-1], "last5": statistics.mean(acc[-5:]), "best": max(acc), "curve": acc,
            "epsilon": s.get("epsilon"), "delta": s.get("delta"), "z": s.get("noise-multiplier"),
            "epsilon-aggregate": s.get("epsilon-aggregate"), "epsilon-local": s.get("epsilon-local"),
            "clips": clips, "bytes-up": s["bytes-up"], "bytes-down": s["bytes-down"], "rounds": len(history),
            "seconds": time.time() - t0, "command": " ".join(["python", *sys.argv])}


def rows_of(args: argparse.Namespace) -> list[str]:
    """The rows asked for: the epsilons, clipping only, distributed mode at some epsilons."""
    return [*args.eps, *([CLIP_ONLY] if args.clip_only else []), *(DISTRIBUTED + e for e in args.distributed)]


def key(mix: str, eps: str, seed: int, rounds: int) -> str:
    return f"mix={mix} eps={eps} seed={seed} rounds={rounds}"


def fmt(vals: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not vals:
        return "n/a"
    m = statistics.mean(vals) * scale
    if len(vals) == 1:
        return f"{m:.{digits}f} (1 seed)"
    return f"{m:.{digits}f} ± {statistics.stdev(vals) * scale:.{digits}f}"


def cross_check(rounds: int) -> list[str]:
    """The accountant against a published figure, and what other conventions would claim for these runs."""
    abadi = poisson_epsilon(0.01, 4.0, 10_000, 1e-5)
    delta = 1 / CLIENTS
    lines = ["## The accountant's cross-check", "",
             f"- Abadi et al. (CCS 2016): q = 0.01, sigma = 4, 10,000 steps, delta = 1e-5: epsilon 1.26 with the "
             f"moments accountant; this accountant's Renyi path (Poisson sampling, as in the paper): **{abadi:.3f}** "
             "(a tighter analysis of the same mechanism, so at most 1.26).", "",
             f"- The noise multipliers these runs used ({rounds} rounds, {PER_ROUND} of {CLIENTS} clients per "
             f"round, delta = {delta:g}), and what the same z would be claimed to give under other conventions:", "",
             "| target epsilon | z (calibrated) | fedshrink: without replacement, replace-one (z / 2) | "
             "same event with z (Flower 1.42's RdpAccountant, without-replacement) | Poisson q = 0.1, add-or-remove |",
             "|---:|---:|---:|---:|---:|"]
    for target in (8.0, 4.0, 1.0):
        z = calibrate(CLIENTS, PER_ROUND, rounds, target, delta)
        ours = epsilon_of({RoundEvent(CLIENTS, PER_ROUND, z): rounds}, delta)
        flower = epsilon_of({RoundEvent(CLIENTS, PER_ROUND, 2 * z): rounds}, delta)
        poisson = poisson_epsilon(PER_ROUND / CLIENTS, z, rounds, delta)
        lines.append(f"| {target:g} | {z:.3f} | {ours:.3f} | {flower:.3f} | {poisson:.3f} |")
    return [*lines, ""]


def reading(cache: dict[str, dict[str, Any]], args: argparse.Namespace, rows: list[str]) -> list[str]:
    """What the table says, computed from it: each row's cost against no DP, and the bytes of the two settings."""

    def cost(mix: str, eps: str) -> str | None:
        """Mean final accuracy of a row minus that of no DP, over the seeds both have."""
        seeds = [s for s in args.seeds if all(key(mix, e, s, args.rounds) in cache for e in (eps, "inf"))]
        if not seeds:
            return None
        runs = [(cache[key(mix, eps, s, args.rounds)], cache[key(mix, "inf", s, args.rounds)]) for s in seeds]
        diff = statistics.mean(dp["final"] - plain["final"] for dp, plain in runs)
        name = "clipping alone" if eps == CLIP_ONLY else f"epsilon {eps}".replace(f" {DISTRIBUTED}",
                                                                                   " (distributed) ")
        return f"{name}: {100 * diff:+.1f} points ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"

    out = ["## Reading", ""]
    for mix in args.mixes:
        costs = [c for e in rows if e != "inf" and (c := cost(mix, e)) is not None]
        if costs:
            out.append(f"- `{mix}`, final accuracy against no DP on the same seeds: " + "; ".join(costs)
                       + ". Chance is 10%.")
    up = {m: [v["bytes-up"] for k, v in cache.items() if k.startswith(f"mix={m} ") and f"rounds={args.rounds}" in k]
          for m in args.mixes}
    if all(up.values()) and len(up) == 2:
        full, mix = (statistics.mean(up[m]) for m in ("full", "mix"))
        out.append(f"- Bytes up per run: `full` {full / 1e6:.1f} MB, `mix` {mix / 1e6:.2f} MB ({full / mix:.0f}x "
                   "less); DP changes neither (the same chains carry clipped updates; central noise is added on "
                   "the server).")
    return [*out, ""]


def write_report(cache: dict[str, dict[str, Any]], args: argparse.Namespace, out: Path) -> None:
    rows = rows_of(args)
    runs = [v for k, v in cache.items() if f"rounds={args.rounds}" in k]
    commands = sorted({str(v["command"]) for v in runs})
    covered = sum(key(m, e, sd, args.rounds) in cache for m in args.mixes for e in rows for sd in args.seeds)
    lines = ["# Client-level differential privacy: accuracy against epsilon", "",
             f"Generated {time.strftime('%Y-%m-%dT%H:%M:%S')} by `python simulations/benchmarks/bench_privacy.py "
             f"--report-only` from {len(runs)} cached runs ({sum(v['seconds'] for v in runs):.0f} s of wall time in "
             "all, in-process engine, 2-core CPU shared with other jobs), made by:", "",
             *[f"    {c}" for c in commands], "",
             f"Coverage: {covered} of the {len(args.mixes) * len(rows) * len(args.seeds)} (setting, epsilon, seed) "
             "runs asked for; "
             "rows marked `not run` were not run.", "",
             f"{args.dataset}, iid over {CLIENTS} clients ({SPLIT[args.dataset]}), {PER_ROUND} clients per round "
             f"sampled without replacement (`device-availability = false`: every sampled client replies), "
             f"{args.rounds} rounds, default CNN, 2 local epochs, seeds {args.seeds}. Rows with an "
             "epsilon: central DP-FedAvg, z calibrated so the run's rounds spend that epsilon at delta = 1/1000, "
             f"adaptive clipping (quantile 0.5, eta 0.2, from C = {CLIP0}: the median update norm at "
             "initialisation), equal weights. `inf`: no DP. `clip`: DP's clipping and weights without noise. "
             "`dist-8`: distributed mode, each client adds its share of the noise before compression, z calibrated "
             "as for central epsilon 8; the epsilon shown is the run's headline (each client's local epsilon when "
             "uplinks are lossy), the aggregate's in brackets. "
             f"`full`: whole model, raw uplinks. `mix`: `{DEFAULT_MIX}` (fragments, pruning, top-k + quantized "
             "uplinks with error feedback), `pruned-as-zero = false` in every row.", "",
             "Accuracy: test accuracy of the global model in %, mean ± sd over seeds; final round and the mean of "
             "the last 5 rounds. Epsilon: as the run's accountant reported it at the end. Bytes: all replies, "
             "serialized, per run (mean over seeds).", "",
             "| setting | epsilon target | final accuracy % | last-5 mean % | epsilon spent | z | final clip | "
             "bytes up per run | seeds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mix in args.mixes:
        for eps in rows:
            got = [cache[k] for s in args.seeds if (k := key(mix, eps, s, args.rounds)) in cache]
            if not got:
                lines.append(f"| {mix} | {eps} | not run | | | | | | 0 |")
                continue
            spent = [g["epsilon"] for g in got if g["epsilon"] is not None]
            aggregate = [g["epsilon-aggregate"] for g in got if g.get("epsilon-aggregate") is not None]
            z = got[0]["z"]
            clip = [g["clips"][-1] for g in got if g["clips"]]
            lines.append(
                f"| {mix} | {eps} | {fmt([g['final'] for g in got])} | {fmt([g['last5'] for g in got])} | "
                f"{f'{statistics.mean(spent):.3g}' if spent else ('inf' if eps != 'inf' else '-')}"
                f"{f' (aggregate {statistics.mean(aggregate):.3g})' if aggregate else ''} | "
                f"{f'{z:.3f}' if z is not None else '-'} | {f'{statistics.mean(clip):.3g}' if clip else '-'} | "
                f"{statistics.mean(g['bytes-up'] for g in got) / 1e6:.1f} MB | {len(got)} |")
    lines += ["", *reading(cache, args, rows), *cross_check(args.rounds)]
    curves = sorted(k for k in cache if f"seed={args.seeds[0]} rounds={args.rounds}" in k)
    if curves:
        marks = [r for r in (1, 5, 10, 15, 20, 25, 30, 40) if r <= args.rounds]
        lines += [f"## Accuracy per round (seed {args.seeds[0]}, %)", "",
                  "| run | " + " | ".join(f"r{r}" for r in marks) + " | seconds |",
                  "|---|" + "---:|" * (len(marks) + 1)]
        for k in curves:
            c = cache[k]["curve"]
            lines.append(f"| {k.rsplit(' seed=', 1)[0]} | " + " | ".join(f"{100 * c[r - 1]:.1f}" for r in marks
                                                                      if r <= len(c))
                         + f" | {cache[k]['seconds']:.0f} |")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="digits", choices=list(SPLIT))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--eps", nargs="+", default=["inf", "8", "4", "1"])
    ap.add_argument("--mixes", nargs="+", default=list(MIXES), choices=list(MIXES))
    ap.add_argument("--clip-only", action="store_true", help="also the DP runs without noise")
    ap.add_argument("--distributed", nargs="*", default=[], help="also distributed-mode runs at these epsilons")
    ap.add_argument("--cache", type=Path, default=None, help="default: <tmp>/fedshrink-bench-privacy/<dataset>")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: simulations/results/privacy.md (digits), privacy-<dataset>.md (others)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    args.cache = args.cache or Path(tempfile.gettempdir()) / "fedshrink-bench-privacy" / args.dataset
    name = "privacy.md" if args.dataset == "digits" else f"privacy-{args.dataset}.md"
    args.out = args.out or ROOT / "simulations" / "results" / name
    args.cache.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        todo = [(m, e, s) for s in args.seeds for m in args.mixes
                for e in rows_of(args)]
        for mix, eps, seed in todo:
            path = args.cache / (key(mix, eps, seed, args.rounds).replace(" ", "_") + ".json")
            if path.exists():
                continue
            record = one_run(args.dataset, mix, eps, seed, args.rounds)
            path.write_text(json.dumps(record))
            print(f"{key(mix, eps, seed, args.rounds)}: final {100 * record['final']:.1f}% epsilon "
                  f"{record['epsilon']} in {record['seconds']:.0f} s", flush=True)
    cache = {p.stem.replace("_", " "): json.loads(p.read_text()) for p in sorted(args.cache.glob("*.json"))}
    write_report(cache, args, args.out)


if __name__ == "__main__":
    main()
