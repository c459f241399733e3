"""The compression frontier: bytes each way to reach FedAvg's final accuracy minus 1 point (frontier sweep).

The runs come from ``simulations/sweeps/frontier.toml``: digits, 20 clients, Dirichlet 0.5, cnn x1, 50 rounds,
every client every round, the same local training in every run, seeds 1-3. Per seed, the target is that seed's
fp32 FedAvg final accuracy minus 1 point. For each run the script finds the first round at or above it and the
cumulative uplink and downlink bytes (exact serialized Flower messages) up to that round; the saving is
FedAvg's bytes to its own first round at the target divided by the run's. It also measures the floor the wire
format puts under any update: the bytes of an all-zero update of the whole model and of the width-0.5 fragment
under each uplink chain the runs use (every tensor carries its own header). It writes
``simulations/results/frontier.md``.

    fedshrink sweep simulations/sweeps/frontier.toml --out runs/sweeps/frontier
    python simulations/benchmarks/bench_frontier.py --sweep-dir runs/sweeps/frontier [--out FILE]

(``make results`` runs both.) Runs the sweep has not finished are left out.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedshrink.compression import encode_state
from fedshrink.devices.profiles import get_profile
from fedshrink.models import ModelSpec, build_model
from fedshrink.report import human_bytes
from fedshrink.sweep import open_sweep
from fedshrink.sweep.results import accuracy_columns, mean_final, mean_sd, reach

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "simulations" / "results" / "frontier.md"
UPLINK_TARGET, TOTAL_TARGET = 100.0, 50.0  # the savings asked for at FedAvg's final accuracy minus 1 point
Rounds = Sequence[Mapping[str, Any]]


def _saving(mine: tuple[int, int, int] | None, fedavg: tuple[int, int, int] | None) -> tuple[float, float] | None:
    """(uplink saving, total saving) of a run that reached the target, against FedAvg's bytes to it."""
    if mine is None or fedavg is None:
        return None
    return fedavg[1] / mine[1], (fedavg[1] + fedavg[2]) / (mine[1] + mine[2])


def _span(values: Sequence[float]) -> str:
    low, high = f"{min(values):.1f}x", f"{max(values):.1f}x"
    return low if low == high else f"{low} to {high}"


def _settings(cfg: Mapping[str, Any]) -> str:
    """The settings that set a run apart: the mix, a whole-model run's uplink chain, the downlink deltas."""
    mix = str(cfg.get("profile-mix", ""))
    parts = [f"profile-mix `{mix or chr(39) * 2}`"]
    if not mix and cfg.get("uplink-chain", "raw") != "raw":
        parts.append(f"uplink-chain `{cfg['uplink-chain']}`")
    if mix and cfg.get("profile-uplink"):
        parts.append(f"profile-uplink `{cfg['profile-uplink']}`")
    if cfg.get("downlink-delta"):
        parts.append(f"downlink-delta `{cfg['downlink-delta']}`")
        if cfg.get("downlink-start", "sent") == "seed":
            parts.append("first send: the seed (downlink-start `seed`)")
        elif not mix and cfg.get("downlink-chain", "raw") != "raw":
            parts.append(f"first send `{cfg['downlink-chain']}`")
    return ", ".join(parts)


def _x(values: Sequence[float]) -> str:
    m = mean_sd(values)
    return f"{m[0]:.1f} ± {m[1]:.1f}x" if m is not None else "n/a"


def empty_update_bytes(chains: Sequence[str]) -> list[str]:
    """Table rows: the wire bytes of an all-zero update of cnn x1 and of its width-0.5 fragment per chain."""
    rows = []
    for chain in chains:
        cells = []
        for width in (1.0, 0.5):
            model = build_model(ModelSpec("cnn", (1, 8, 8), 10, width, "batch"))
            zeros = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
            _, nbytes = encode_state(zeros, chain, round=1, direction="uplink")
            cells.append(f"{nbytes:,} ({len(zeros)} tensors)")
        rows.append(f"| `{chain}` | {' | '.join(cells)} |")
    return rows


GLYPHS = "glyphs: "  # the prefix of the runs on the generated glyphs (never tuned on)


def table(runs: Mapping[str, Mapping[int, Rounds]], settings: Mapping[str, Mapping[str, Any]], seeds: Sequence[int],
          fedavg_name: str) -> tuple[list[str], list[str], dict[int, tuple[int, int, int] | None]]:
    """The table rows of one data set's runs against its FedAvg run, the verdicts against the targets, and
    FedAvg's (round, uplink, downlink) at each seed's target."""
    fedavg = runs.get(fedavg_name, {})
    targets = {s: float(r[-1]["accuracy"]) - 0.01 for s, r in fedavg.items()}
    fed_hits = {s: reach(fedavg[s], t) for s, t in targets.items()}
    ref = mean_final(fedavg)
    rows: list[str] = [
        "| run | settings | " + " | ".join(f"seed {s}" for s in seeds)
        + " | final mean ± sd | gap to FedAvg | round to target | up to target | total to target "
        "| uplink saving | total saving | whole run up / down |",
        "|---|---|" + "---:|" * len(seeds) + "---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for config, per_seed in runs.items():
        if not per_seed:
            continue
        hits = {s: reach(r, targets[s]) for s, r in per_seed.items() if s in targets}
        reached = {s: h for s, h in hits.items() if h is not None}
        savings = [sv for s, h in reached.items() if (sv := _saving(h, fed_hits.get(s))) is not None]
        rounds_cell = " / ".join(f"r{h[0]}" if h else "never" for h in (hits.get(s) for s in seeds if s in hits))
        up = statistics.mean(h[1] for h in reached.values()) if reached else None
        total = statistics.mean(h[1] + h[2] for h in reached.values()) if reached else None
        whole_up = statistics.mean(sum(int(x.get("bytes-up", 0)) for x in r) for r in per_seed.values())
        whole_down = statistics.mean(sum(int(x.get("bytes-down", 0)) for x in r) for r in per_seed.values())
        accuracy = " | ".join(accuracy_columns(per_seed, seeds, ref, reference=config == fedavg_name))
        rows.append(
            f"| {config.removeprefix(GLYPHS)} | {_settings(settings[config])} | {accuracy}"
            f" | {rounds_cell} | {human_bytes(up) if up is not None else 'n/a'} | "
            f"{human_bytes(total) if total is not None else 'n/a'} | {_x([a for a, _ in savings])} | "
            f"{_x([b for _, b in savings])} | {human_bytes(whole_up)} / {human_bytes(whole_down)} |")
        if config != fedavg_name and not savings:
            verdicts.append(f"* {config}: reached the target on none of its {len(per_seed)} seed(s); "
                            f"{UPLINK_TARGET:g}x uplink and {TOTAL_TARGET:g}x total not met.")
        elif config != fedavg_name:
            every = len(savings) == len(seeds)
            verdicts.append(
                f"* {config}: uplink {_span([a for a, _ in savings])}, total {_span([b for _, b in savings])} "
                f"over the {len(savings)} seed(s) of {len(seeds)} that reached the target; {UPLINK_TARGET:g}x uplink "
                f"{'met' if every and all(a >= UPLINK_TARGET for a, _ in savings) else 'not met'}, "
                f"{TOTAL_TARGET:g}x total "
                f"{'met' if every and all(b >= TOTAL_TARGET for _, b in savings) else 'not met'}.")
    return rows, verdicts, fed_hits


def _load(sweep_dir: Path) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A sweep, its runs' settings by configuration, and its runs' rounds split into digits and glyphs."""
    sweep = open_sweep(sweep_dir)
    runs = {c: sweep.rounds(c) for c in sweep.configs()}
    settings = {c: next(iter(sweep.of(c).values())).config for c in runs if sweep.of(c)}
    digits = {c: r for c, r in runs.items() if not c.startswith(GLYPHS)}
    glyphs = {c: r for c, r in runs.items() if c.startswith(GLYPHS)}
    return sweep, settings, digits, glyphs


def glyphs_part(sweep: Any, settings: Mapping[str, Mapping[str, Any]], glyphs: Mapping[str, Mapping[int, Rounds]],
                heading: str, what: str) -> tuple[list[str], list[str]]:
    """A sweep's glyphs runs against its glyphs FedAvg: the section's lines and verdicts (none without runs)."""
    if not any(glyphs.values()):
        return [], []
    seeds = sorted({p.seed for p in sweep.planned if p.config in glyphs})
    rows, verdicts, _ = table(glyphs, settings, seeds, f"{GLYPHS}fedavg")
    rounds = {int(c.get("num-server-rounds", 0)) for k, c in settings.items() if k in glyphs}
    return ["", heading, "", f"{what} on the generated 28x28 glyphs, {', '.join(map(str, sorted(rounds)))} rounds, "
            f"seeds {', '.join(map(str, seeds))}, with the chains chosen on digits.", "", *rows], verdicts


def message_rows(runs: Mapping[str, Mapping[int, Rounds]]) -> list[str]:
    """Per run: mean bytes of an update received, and of a client's downlink in round 1 and in later rounds."""
    rows = []
    for config, per_seed in runs.items():
        rounds = [r for seed_rounds in per_seed.values() for r in seed_rounds]
        if not rounds:
            continue
        up = sum(int(r.get("bytes-up", 0)) for r in rounds) / max(1, sum(int(r.get("clients-good", 0)) for r in rounds))
        first = _down_per_client([r for r in rounds if int(r["round"]) == 1])
        later = _down_per_client([r for r in rounds if int(r["round"]) > 1])
        rows.append(f"| {config.removeprefix(GLYPHS)} | {up:,.0f} | {first} | {later} |")
    return rows


def _down_per_client(rounds: Rounds) -> str:
    """Downlink bytes per client sent a message, over ``rounds``."""
    sent = sum(int(r.get("clients-sent", 0)) for r in rounds)
    return f"{sum(int(r.get('bytes-down', 0)) for r in rounds) / sent:,.0f}" if sent else "n/a"


def _fedavg_uplinks(settings: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The lossy uplink chains of a sweep's whole-model runs."""
    return {str(c.get("uplink-chain")) for c in settings.values() if not c.get("profile-mix")} - {"raw"}


def flat_section(sweep_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """The flat sweep's section (its own FedAvg runs set the targets), its verdicts, and its uplink chains."""
    sweep, settings, digits, glyphs = _load(sweep_dir)
    seeds = sorted({p.seed for p in sweep.planned if p.config in digits})
    rows, verdicts, _ = table(digits, settings, seeds, "fedavg")
    lines = [
        "", "## Flat updates, Rice-coded indices, compact resource records", "",
        "`fedshrink sweep simulations/sweeps/frontier_flat.toml --out runs/sweeps/frontier_flat`, then `python "
        "simulations/benchmarks/bench_frontier_flat.py --sweep-dir runs/sweeps/frontier_flat`.", "",
        "The same runs as above (digits, 20 clients, 50 rounds, every client every round, the same local training, "
        f"seeds {', '.join(map(str, seeds))}), with the wire format's three changes (docs/design.md#flat-updates): "
        "a `flat|` chain sends an update's float tensors as one vector under one header, with one top-k over the "
        "whole update; its sparse indices go in the shortest of varints, a bitmap and a Rice code; a reply's resource "
        "record travels as two lists of numbers. FedAvg is run again with this code (its own bytes change by the "
        "smaller resource record), and sets the targets. `downlink-start` `seed`: in round 1 a client builds the "
        "starting model from the run's seed instead of receiving it. *Default mix, FedAvg's codec*: the default "
        "mix with every profile's uplink chain replaced by compressed FedAvg's (`profile-uplink`).", "", *rows,
    ]
    lines += ["", "Bytes per message (mean over the seeds' rounds): an update as the server received it, and the "
              "downlink a client was sent, in round 1 and after it.", "",
              "| run | uplink per update | downlink per client, round 1 | downlink per client, later rounds |",
              "|---|---:|---:|---:|", *message_rows(digits)]
    glyph_lines, glyph_verdicts = glyphs_part(sweep, settings, glyphs, "### Flat updates on glyphs (never tuned on)",
                                              "FedAvg and the compressed FedAvg runs again")
    lines += glyph_lines
    verdicts += glyph_verdicts
    chains = sorted(_fedavg_uplinks(settings))
    return lines, [f"* flat: {v.removeprefix('* ')}" for v in verdicts], chains


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep-dir", type=Path, default=ROOT / "runs" / "sweeps" / "frontier")
    ap.add_argument("--flat-sweep-dir", type=Path, default=None,
                    help="the frontier_flat sweep, for its section (bench_frontier_flat.py passes it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    sweep, settings, digits, glyphs = _load(args.sweep_dir)
    seeds = sorted({p.seed for p in sweep.planned if p.config in digits})
    rows, verdicts, fed_hits = table(digits, settings, seeds, "fedavg")
    command = f"python simulations/benchmarks/bench_frontier.py --sweep-dir {args.sweep_dir}"
    lines = [
        "# The compression frontier: bytes to FedAvg's accuracy minus 1 point", "",
        f"`fedshrink sweep simulations/sweeps/frontier.toml --out {args.sweep_dir}`, then `{command}`.", "",
        "digits, 20 clients, Dirichlet 0.5, cnn x1, 50 rounds, every client every round (no device availability), "
        "the same local training in every run (2 epochs, batch 16, SGD lr 0.01, momentum 0.9), "
        f"seeds {', '.join(map(str, seeds))}. Target per seed: fp32 FedAvg's final accuracy minus 1 point. "
        "*Round*: the first round at or above it. *Up / total to target*: cumulative uplink, and uplink plus "
        "downlink, bytes up to that round (exact serialized Flower messages, mean over the seeds that reached it). "
        f"*Saving*: FedAvg's bytes to its own first round at the target / the run's, mean ± sd over seeds "
        f"(asked for: {UPLINK_TARGET:g}x uplink, {TOTAL_TARGET:g}x total). Downlink deltas: "
        "docs/design.md#downlink-deltas.", "", *rows,
    ]
    glyph_lines, glyph_verdicts = glyphs_part(sweep, settings, glyphs, "## On glyphs (never tuned on)",
                                              "The FedAvg runs again")
    lines += glyph_lines
    verdicts += glyph_verdicts
    chains = sorted(_fedavg_uplinks(settings) | {get_profile(p).uplink for p in ("phone", "laptop", "iot")})
    if args.flat_sweep_dir is not None:
        flat_lines, flat_verdicts, flat_chains = flat_section(args.flat_sweep_dir)
        lines += flat_lines
        verdicts += flat_verdicts
        chains += flat_chains
    lines += ["", "## Against the targets", "", *verdicts]
    budget = [h[1] / UPLINK_TARGET for h in fed_hits.values() if h is not None]
    lines += [
        "", "## What the wire format costs an update that says nothing", "",
        "Wire bytes of an all-zero update (measured: `encode_state`, the bytes the update's tensors and header "
        "take in the message). Every tensor carries its own header (name, shape, dtype, the chain's stages and "
        "their parameters), about 100 bytes, and a top-k keeps at least one element per tensor; a `flat|` chain "
        "sends one vector under one header. At 20 clients a round, this floor alone is 20 times the figure "
        "below.", "",
        "| uplink chain | cnn x1 | width-0.5 fragment |", "|---|---:|---:|", *empty_update_bytes(chains), "",
        f"FedAvg's uplink bytes to the target were {', '.join(human_bytes(b * UPLINK_TARGET) for b in budget)} "
        f"(seeds {', '.join(str(s) for s, h in fed_hits.items() if h is not None)}): a {UPLINK_TARGET:g}x saving "
        f"leaves {', '.join(human_bytes(b) for b in budget)} of uplink for the whole run up to the target.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
