"""Client-level differential privacy: accuracy against epsilon, full-width FedAvg and the default profile mix.

The analysis of the privacy sweep::

    fedshrink sweep simulations/sweeps/privacy.toml --out runs/sweeps/privacy
    python simulations/benchmarks/bench_privacy.py --sweep-dir runs/sweeps/privacy [--dataset digits]

digits (1,257 training samples; 1 or 2 per client) or glyphs (the generated second set, 17,600 training
samples; 17 or 18 per client) split iid over 1,000 clients, 100 clients sampled per round without
replacement (every device available, so every sampled client replies), the default CNN, distillation and
checkpoints off. Each epsilon is a central DP-FedAvg run (``dp-mode = central``) whose noise multiplier is
calibrated so that its rounds spend exactly that epsilon at delta = 1 / 1,000 (sampling without
replacement, replace-one), with adaptive clipping (quantile 0.5, from 0.3: the median update norm of a
client at initialisation, measured on digits); ``inf`` is the run without DP. ``full`` trains the whole
model with raw uplinks; ``mix`` is ``fedshrink.devices.profiles.DEFAULT_MIX`` (fragments, pruning, top-k + quantized
uplinks with error feedback), with ``pruned-as-zero = false`` in every row (DP requires it). A sweep may add
the rows ``clip`` (DP's clipping and weights, no noise) and ``dist-8`` (distributed mode, clients add the noise
before compression, z calibrated as central mode's) to its epsilon axis.

This script trains nothing: it reads the sweep's finished runs (the axes ``dataset``, ``setting`` and
``epsilon`` of ``simulations/sweeps/privacy.toml``) and writes ``simulations/results/privacy.md`` for digits
and ``privacy-<dataset>.md`` for another data set, for each data set the sweep has finished runs of.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from fedshrink.devices.profiles import DEFAULT_MIX
from fedshrink.privacy.accountant import RoundEvent, calibrate, epsilon_of, poisson_epsilon
from fedshrink.sweep import open_sweep

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, CLIP0 = 1000, 0.3  # the fleet the split descriptions below are of; the initial clip
SWEEP_FILE = "simulations/sweeps/privacy.toml"
CLIP_ONLY = "clip"
SPLIT = {"digits": "1-2 of the 1,257 training samples each: the largest fleet digits allows",
         "glyphs": "17-18 of the 17,600 generated training samples each"}
DISTRIBUTED = "dist-"  # a row "dist-8": distributed mode calibrated to epsilon 8 for the aggregate


def record(run: Any) -> dict[str, Any]:
    """What the tables read from one finished run of the sweep (:class:`fedshrink.report.rundata.RunData`)."""
    s, history = run.summary, run.rounds
    acc = [float(r["accuracy"]) for r in history]
    clips = [r["stages"]["privacy"]["clip"] for r in history if "privacy" in r.get("stages", {})]
    return {"final": acc[-1], "last5": statistics.mean(acc[-5:]), "best": max(acc), "curve": acc,
            "epsilon": s.get("epsilon"), "delta": s.get("delta"), "z": s.get("noise-multiplier"),
            "epsilon-aggregate": s.get("epsilon-aggregate"), "epsilon-local": s.get("epsilon-local"),
            "clips": clips, "bytes-up": s["bytes-up"], "bytes-down": s["bytes-down"], "rounds": len(history),
            "seconds": float(s.get("seconds", 0.0))}


def key(mix: str, eps: str, seed: int, rounds: int) -> str:
    return f"mix={mix} eps={eps} seed={seed} rounds={rounds}"


def fmt(vals: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not vals:
        return "n/a"
    m = statistics.mean(vals) * scale
    if len(vals) == 1:
        return f"{m:.{digits}f} (1 seed)"
    return f"{m:.{digits}f} ± {statistics.stdev(vals) * scale:.{digits}f}"


def cross_check(rounds: int, clients: int = 1000, per_round: int = 100) -> list[str]:
    """The accountant against a published figure, and what other conventions would claim for these runs."""
    abadi = poisson_epsilon(0.01, 4.0, 10_000, 1e-5)
    delta = 1 / clients
    lines = ["## The accountant's cross-check", "",
             f"- Abadi et al. (CCS 2016): q = 0.01, sigma = 4, 10,000 steps, delta = 1e-5: epsilon 1.26 with the "
             f"moments accountant; this accountant's Renyi path (Poisson sampling, as in the paper): **{abadi:.3f}** "
             "(a tighter analysis of the same mechanism, so at most 1.26).", "",
             f"- The noise multipliers these runs used ({rounds} rounds, {per_round} of {clients} clients per "
             f"round, delta = {delta:g}), and what the same z would be claimed to give under other conventions:", "",
             "| target epsilon | z (calibrated) | fedshrink: without replacement, replace-one (z / 2) | "
             "same event with z (Flower 1.42's RdpAccountant, without-replacement) | Poisson q = 0.1, add-or-remove |",
             "|---:|---:|---:|---:|---:|"]
    for target in (8.0, 4.0, 1.0):
        z = calibrate(clients, per_round, rounds, target, delta)
        ours = epsilon_of({RoundEvent(clients, per_round, z): rounds}, delta)
        flower = epsilon_of({RoundEvent(clients, per_round, 2 * z): rounds}, delta)
        poisson = poisson_epsilon(per_round / clients, z, rounds, delta)
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
    rows = args.rows
    runs = list(cache.values())
    covered = sum(key(m, e, sd, args.rounds) in cache for m in args.mixes for e in rows for sd in args.seeds)
    lines = ["# Client-level differential privacy: accuracy against epsilon", "",
             f"Generated {time.strftime('%Y-%m-%dT%H:%M:%S')} by `fedshrink sweep {SWEEP_FILE} --out "
             f"{args.sweep_shown}`, then `python simulations/benchmarks/bench_privacy.py --sweep-dir "
             f"{args.sweep_shown}`, from the sweep's {len(runs)} finished {args.dataset} runs "
             f"({sum(v['seconds'] for v in runs):.0f} s of host wall time in all, summed over runs; in-process "
             "engine, 2 runs at once on a 2-core CPU).", "",
             f"Coverage: {covered} of the {len(args.mixes) * len(rows) * len(args.seeds)} (setting, epsilon, seed) "
             "runs the sweep plans; rows marked `not run` were not run.", "",
             f"{args.dataset}, iid over {args.clients} clients"
             f"{f' ({SPLIT[args.dataset]})' if args.clients == CLIENTS else ''}, {args.per_round} clients per round "
             f"sampled without replacement (`device-availability = false`: every sampled client replies), "
             f"{args.rounds} rounds, model `{args.model}`, {args.epochs} local epochs, seeds {args.seeds}. "
             "Rows with an epsilon: central DP-FedAvg, z calibrated so the run's rounds spend that epsilon at delta = "
             f"1/{args.clients}, "
             f"adaptive clipping (quantile 0.5, eta 0.2, from C = {CLIP0}: the median update norm at "
             "initialisation), equal weights. `inf`: no DP. `clip`: DP's clipping and weights without noise. "
             "`dist-8`: distributed mode, each client adds its share of the noise before compression, z calibrated "
             "as for central epsilon 8; the epsilon shown is the run's headline (each client's local epsilon when "
             "uplinks are lossy), the aggregate's in brackets. "
             f"`full`: whole model, raw uplinks. `mix`: `{args.mix_text}` (fragments, pruning, top-k + quantized "
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
    lines += ["", *reading(cache, args, rows), *cross_check(args.rounds, args.clients, args.per_round)]
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


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=ROOT / "runs" / "sweeps" / "privacy",
                    help=f"the directory `fedshrink sweep {SWEEP_FILE}` wrote")
    ap.add_argument("--dataset", action="append", choices=list(SPLIT), help="only these data sets (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="with one data set: the results file to write")
    args = ap.parse_args()
    if not (args.sweep_dir / "plan.json").is_file():
        raise SystemExit(f"bench_privacy: {args.sweep_dir} is not a sweep directory; run "
                         f"`fedshrink sweep {SWEEP_FILE} --out {args.sweep_dir}` first")
    sweep = open_sweep(args.sweep_dir)
    wanted = args.dataset or list(SPLIT)
    if args.out is not None and len(wanted) != 1:
        raise SystemExit("bench_privacy: --out needs exactly one --dataset")
    for dataset in wanted:
        planned = [p for p in sweep.planned if p.axes.get("dataset", "digits") == dataset]
        done = [p for p in planned if p.key in sweep.runs]
        if not done:
            print(f"{dataset}: no finished runs in {args.sweep_dir}; its results file is left as it is")
            continue
        ns = argparse.Namespace(
            dataset=dataset, sweep_shown=_shown(args.sweep_dir),
            seeds=sorted({p.seed for p in planned}),
            rounds=int(sweep.runs[done[0].key].config["num-server-rounds"]),
            clients=int(sweep.plan.get("num-clients", CLIENTS)),
            per_round=int(sweep.runs[done[0].key].config["clients-per-round"]),
            model=str(sweep.runs[done[0].key].config["model"]),
            epochs=int(sweep.runs[done[0].key].config["local-epochs"]),
            mixes=list(dict.fromkeys(p.axes["setting"] for p in planned)),
            rows=list(dict.fromkeys(p.axes["epsilon"] for p in planned)))  # the epsilon axis, in plan order
        ns.mix_text = next((str(sweep.runs[p.key].config["profile-mix"]) for p in done
                            if p.axes["setting"] == "mix"), DEFAULT_MIX)
        cache = {key(p.axes["setting"], p.axes["epsilon"], p.seed, ns.rounds): record(sweep.runs[p.key])
                 for p in done}
        name = "privacy.md" if dataset == "digits" else f"privacy-{dataset}.md"
        write_report(cache, ns, args.out or ROOT / "simulations" / "results" / name)


if __name__ == "__main__":
    main()
