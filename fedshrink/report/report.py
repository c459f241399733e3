"""``runs/<run>/report.md`` and its PNG plots, built from the run directory's files only.

What is read: :mod:`fedshrink.report.rundata`; what the figures mean: :mod:`fedshrink.report.costs` (uplink
references, server time), :mod:`fedshrink.report.targets` (bytes and rounds to target accuracies) and
:mod:`fedshrink.report.pareto` (the student search). Outputs: ``report.md``, ``plots/*.png``, and the
``targets`` entry of ``summary.json`` (rewritten with the targets of this report when ``summary.json`` exists).
A plot whose data is absent is skipped, with a note saying what is missing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedshrink.report.console import energy_text, human_bytes
from fedshrink.report.costs import ServerTime, UplinkReferences, server_time, uplink_references
from fedshrink.report.pareto import pareto_rows, read_pareto, size_key
from fedshrink.report.plots import (
    MissingData,
    plot_accuracy_vs_bytes,
    plot_accuracy_vs_device,
    plot_accuracy_vs_round,
    plot_client_bars,
    plot_pareto,
    save_figure,
)
from fedshrink.report.rundata import PARETO_JSON, SUMMARY_JSON, RunData, cumulative, load_run, run_curve
from fedshrink.report.rundir import write_json_atomic
from fedshrink.report.tables import (
    client_bars,
    device_profile_table,
    dropped_table,
    energy_label,
    markdown_table,
    profile_table,
    reaches,
    run_targets,
    run_totals,
)
from fedshrink.report.targets import DEFINITION, Reach, has_device, savings, targets_json

REPORT_MD = "report.md"
PLOTS_DIR = "plots"

__all__ = [  # what the notebook and older callers import from here
    "PARETO_JSON", "REPORT_MD", "Report", "RunData", "build_report", "client_bars", "cumulative", "energy_label",
    "figures", "load_run", "markdown_table", "profile_table", "read_pareto", "run_curve", "run_totals",
]


def figures(run: RunData, targets: Sequence[float] = ()) -> dict[str, Figure | str]:
    """The report's figures by file stem (``targets``: accuracies drawn as lines); a string in place of a figure
    says why it was skipped."""
    out: dict[str, Figure | str] = {}
    makers: dict[str, Callable[[], Figure]] = {
        "accuracy_vs_round": lambda: plot_accuracy_vs_round({run.name: run.curve()}, targets=targets),
        "accuracy_vs_bytes": lambda: plot_accuracy_vs_bytes({run.name: run.curve()}, targets=targets),
        "accuracy_vs_device": lambda: plot_accuracy_vs_device(device_curves(run), targets=targets),
        "client_costs": lambda: plot_client_bars(client_bars(run.clients or []),
                                                 energy_label=energy_label(run.clients or [])),
        "pareto": lambda: plot_pareto(run.pareto or [], size_key=size_key(run.pareto or [])),
    }
    for name, make in makers.items():
        try:
            out[name] = make()
        except MissingData as exc:
            out[name] = str(exc)
    return out


@dataclass(frozen=True)
class Report:
    path: Path  # report.md
    plots: dict[str, Path]
    skipped: dict[str, str]  # plot -> reason
    reaches: list[Reach]  # what the run spent to reach each target (also in summary.json)


def fmt_acc(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, int | float) else "n/a"


def fmt_ratio(v: float | None) -> str:
    return f"{v:.2f}x" if v is not None else "n/a"


def _reference_text(refs: UplinkReferences, which: str) -> str:
    value = refs.same_fragments_fp32 if which == "same" else refs.full_model_fp32
    if value is None:
        return "n/a (not recorded)" if which == "same" else "n/a (needs clients-good and model-parameters)"
    text = f"{human_bytes(value)} ({fmt_ratio(refs.ratio(value))} what was sent)"
    if which == "full":
        text += f": {refs.replies:,} replies x 4 B x {refs.model_parameters:,} parameters"
    return text


def summary_section(run: RunData, tot: Mapping[str, Any]) -> list[str]:
    refs = uplink_references(run.rounds, run.summary)
    rows = [
        {"figure": "data set", "value": run.data_description},
        {"figure": "accuracy (final)", "value": fmt_acc(tot["accuracy"])},
        {"figure": "accuracy (best)", "value": fmt_acc(tot["best-accuracy"])},
        {"figure": "bytes up (sent)", "value": human_bytes(tot["bytes-up"])},
        {"figure": "uplink against the same fragments in fp32", "value": _reference_text(refs, "same")},
        {"figure": "uplink against the full model in fp32", "value": _reference_text(refs, "full")},
        {"figure": "bytes down", "value": human_bytes(tot["bytes-down"])},
        {"figure": "energy (clients)", "value": energy_text(tot["energy-j"], tot["energy-estimated"],
                                                             tot["energy-method"])},
        {"figure": "student size", "value": tot["student"]},
        {"figure": "wall time", "value": f"{tot['seconds']:.1f} s" if tot["seconds"] else "n/a"},
    ]
    if "server-step" in run.summary:  # runs made before the setting have none
        rows.append({"figure": "server step", "value": f"{float(run.summary['server-step']):g} x the combined update "
                                                       "(server-lr; 1 = FedAvg)"})
    for key, what, unit in (("device-time-s", "modelled device time", "s"),
                            ("device-energy-j", "modelled device energy", "J")):
        total = cumulative(run.rounds, key)
        if total:
            rows.append({"figure": f"{what} (rounds' `{key}`, summed)", "value": f"{total[-1]:.4g} {unit}"})
    return ["## Summary", "", markdown_table(rows), "",
            "*Bytes up*: the exact serialized Flower replies the server accepted. *Against the same fragments in "
            "fp32*: the same replies re-encoded with the arrays they carried (each client's fragment) as plain "
            "fp32 (`bytes-up-uncompressed`; clients.csv `bytes-up-fp32`). *Against the full model in fp32*: "
            "accepted replies (sum of `clients-good`) x 4 B x the global model's parameter count "
            "(summary.json `model-parameters`), payload only (no message envelope), so for clients that send the "
            "full model it is a little below the same-fragments figure.", ""]


def _reach_cell(value: float | None, reached: bool, fmt: Callable[[float], str]) -> str:
    if not reached:
        return "never"
    return fmt(value) if value is not None else "n/a"


def reach_rows(mine: Sequence[Reach], base: Sequence[Reach] | None = None) -> list[dict[str, str]]:
    """One row per target: round reached, bytes up, bytes up + down, modelled device figures, savings."""
    device = has_device(list(mine) + list(base or []))
    rows = []
    for i, r in enumerate(mine):
        row = {"target": f"{r.target.level:.4f}", "source": r.target.source,
               "round reached": _reach_cell(r.round, r.reached, lambda v: str(int(v))),
               "bytes up": _reach_cell(r.bytes_up, r.reached, human_bytes),
               "bytes up + down": _reach_cell(r.bytes_total, r.reached, human_bytes)}
        if device["device_time_s"]:
            row["modelled device time"] = _reach_cell(r.device_time_s, r.reached, lambda v: f"{v:.4g} s")
        if device["device_energy_j"]:
            row["modelled device energy"] = _reach_cell(r.device_energy_j, r.reached, lambda v: f"{v:.4g} J")
        if base is not None:
            s = savings([r], [base[i]])[0]
            row["baseline round"] = _reach_cell(s.baseline.round, s.baseline.reached, lambda v: str(int(v)))
            row["bytes-up saving (baseline / run)"] = fmt_ratio(s.bytes_up_ratio)
            row["total-bytes saving (baseline / run)"] = fmt_ratio(s.bytes_total_ratio)
        rows.append(row)
    return rows


def targets_section(mine: Sequence[Reach], base: Sequence[Reach] | None, baseline: RunData | None) -> list[str]:
    lines = ["## Bytes and rounds to target accuracies", ""]
    if baseline is not None:
        lines += [f"Baseline: `{baseline.path}`.", ""]
    if not mine:
        return [*lines, "*No target: no accuracy recorded.*", ""]
    return [*lines, markdown_table(reach_rows(mine, base)), "", f"Definitions: {DEFINITION}.", ""]


def server_section(run: RunData, bytes_down: float | None) -> list[str]:
    t: ServerTime = server_time(run.rounds, run.summary)
    if t.aggregation_s is None and t.final_distillation_s is None and not t.refiners_s:
        return []
    rows = [{"part": "aggregation", "seconds": f"{t.aggregation_s:.3f}" if t.aggregation_s is not None else "n/a",
             "what": "checks, decoding, aggregation stages and the weighted mean, summed over rounds "
                     "(`aggregation-s`; excludes the refiners below)"}]
    rows += [{"part": name, "seconds": f"{s:.3f}",
              "what": f"server-side {name} after aggregation, summed over rounds (`{name}-seconds`)"}
             for name, s in t.refiners_s.items()]
    if t.periodic_distillations:
        rows.append({"part": "distillation during the run", "seconds": f"{t.periodic_distillation_s:.3f}",
                     "what": f"{t.periodic_distillations} periodic distillation(s) (rounds' `distillation-s`)"})
    rows.append({"part": "distillation at the end of the run",
                 "seconds": f"{t.final_distillation_s:.3f}" if t.final_distillation_s is not None else "none",
                 "what": "student search, distillation, pruning, int8, export (summary.json `distillation-seconds`)"})
    if t.periodic_distillations and t.final_distillation_s is not None:
        rows.append({"part": "distillation in all", "seconds": f"{t.distillation_s:.3f}", "what": "the two above"})
    return ["## Server time", "", markdown_table(rows), "",
            f"Measured on the server's host. Bytes sent down: {human_bytes(bytes_down)}.", ""]


def pareto_section(run: RunData, image: str) -> list[str]:
    lines = ["## Student search", "", image, ""]
    if not run.pareto:
        return lines
    lines += [markdown_table(pareto_rows(run.pareto)), "",
              "*Teacher agreement*: the share of held-out proxy images (and augmented views) on which the candidate "
              "predicts the teacher's class, after the given short distillation steps; the server has no labels, "
              "so this is not accuracy. Candidates over the budget are never trained. *Test accuracy after its "
              "search steps*: the finalists on the labelled test set, recorded for the report and never used to "
              "choose. *Front*: no other trained candidate is as small and agrees more.", ""]
    student = run.summary.get("student")
    if isinstance(student, Mapping) and "test-accuracy-fp32" in student:
        lines += [f"The chosen student after the full distillation, pruning and fine-tuning: test accuracy "
                  f"{fmt_acc(student.get('test-accuracy-fp32'))} (fp32), {fmt_acc(student.get('test-accuracy-int8'))}"
                  " (int8).", ""]
    return lines


def device_curves(run: RunData) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Cumulative modelled fleet time and energy per round, with the accuracy (empty without device figures)."""
    rounds = [r for r in run.rounds if "device-time-s" in r and "accuracy" in r]
    if not rounds or len(rounds) != len(run.rounds):
        return {}
    secs, joules = itertools.accumulate(float(r["device-time-s"]) for r in rounds), \
        itertools.accumulate(float(r["device-energy-j"]) for r in rounds)
    return {run.name: (list(secs), list(joules), [float(r["accuracy"]) for r in rounds])}


def device_section(run: RunData, image: str) -> list[str]:
    """Per profile, the modelled device figures next to full-width fp32 FedAvg's on the same devices."""
    rows = device_profile_table(run.clients or [])
    if not rows and not device_curves(run):
        return []
    total_s = sum(float(r.get("device-time-s", 0.0)) for r in run.rounds)
    total_j = sum(float(r.get("device-energy-j", 0.0)) for r in run.rounds)
    return ["## Simulated devices (modelled)", "",
            f"Every figure here is modelled from each client's device model (`fedshrink.devices`), not measured: "
            f"the fleet's simulated time over the run is {total_s:.4g} s (each round lasts until its last accepted "
            f"device reports) and its energy {total_j:.4g} J (every device that trained, stragglers included). "
            "Per profile, per client and round, next to what full-width fp32 FedAvg would cost the same devices:",
            "", markdown_table(rows) if rows else "(no per-client device figures: clients.csv has none)", "",
            image, ""]


def other_sections(run: RunData) -> list[str]:
    """Per-profile table, dropped replies and aggregation stages, where the run has them."""
    lines = ["## Per-profile table (host measurements)", "",
             "Host figures are the simulation host's, measured while it ran each client; under the in-process "
             "engine all clients share one process, so its RSS is not a client's memory.", ""]
    if run.clients:
        lines += [markdown_table(profile_table(run.clients)), ""]
    else:
        lines += ["*Table skipped: no clients.csv (per-client resource records).*", ""]
    dropped = dropped_table(run.rounds)
    if dropped:
        total = sum(len(r.get("dropped", [])) for r in run.rounds)
        lines += ["## Dropped replies", "",
                  f"{total} replies dropped in all (no reply before the timeout, or refused by the server's checks); "
                  "by client and reason (partition `?`: the node never told its partition):", "",
                  markdown_table(dropped), ""]
    staged = [r for r in run.rounds if r.get("stages")]
    if staged:
        keys = sorted({k for r in staged for k in r["stages"]})
        lines += ["## Aggregation stages", "",
                  f"Defence `{run.config.get('defence', 'none')}`; stages with notes: {', '.join(keys)} "
                  "(per round in metrics.jsonl under `stages`).", ""]
    return lines


METHOD = [
    "## How the figures are measured", "",
    "- Bytes: exact encoded sizes of the Flower messages (protobuf `message_to_proto`), "
    "reply metadata and metrics included.",
    "- Peak memory: process RSS high-water during the client's round (kernel VmHWM reset per round "
    "where allowed, else a 10 ms sampler); GPU: torch allocator peak.",
    "- Training FLOPs = 3 x 2 x MACs/sample x samples (forward + backward ~ 3 forward passes, "
    "2 FLOPs per MAC; MACs of Conv2d and Linear layers by forward hooks).",
    "- Energy: RAPL or NVML counters where readable (`measured:`); otherwise CPU time x W per core, "
    "labelled `estimated:cpu-time x W/core`. Device time and energy (where shown) are modelled for a "
    "simulated device, not measured.", "",
]


def _head(run: RunData, tot: Mapping[str, Any]) -> list[str]:
    lines = [f"# fedshrink run `{run.name}`", ""]
    keys = ("dataset", "model", "model-width", "profile-mix", "partitioner", "num-server-rounds", "local-epochs",
            "batch-size", "seed")
    facts = {k: run.config.get(k) for k in keys if k in run.config}
    facts.setdefault("dataset", run.dataset)
    lines += [", ".join(f"{k} = {v if v != '' else repr(v)}" for k, v in facts.items()), ""]
    status = run.summary.get("status", "unknown (no summary.json)")
    clients = f", {run.summary['clients']} clients" if "clients" in run.summary else ""
    lines += [f"Status: **{status}**, {tot['rounds']} rounds recorded{clients}.", ""]
    return [*lines, f"Privacy: {run.summary['privacy']}.", ""] if "privacy" in run.summary else lines


PLOT_NAMES = ("accuracy_vs_round", "accuracy_vs_bytes", "accuracy_vs_device", "client_costs", "pareto")


def _draw(run: RunData, targets: Sequence[float], draw: bool) -> tuple[dict[str, Path], dict[str, str]]:
    plots: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    if not draw:
        return plots, dict.fromkeys(PLOT_NAMES, "not drawn (build_report(draw=False))")
    for name, fig in figures(run, targets).items():
        if isinstance(fig, str):
            skipped[name] = fig
        else:
            plots[name] = save_figure(fig, run.path / PLOTS_DIR / f"{name}.png")
    return plots, skipped


def update_summary_targets(run: RunData, entry: dict[str, Any]) -> None:
    """Rewrite ``summary.json``'s ``targets`` (atomically, every other key kept) when the file exists."""
    path = run.path / SUMMARY_JSON
    if path.is_file() and run.summary:
        run.summary["targets"] = entry
        write_json_atomic(path, run.summary)


def build_report(run_dir: Path | str, *, targets: Sequence[float] = (),
                 baseline: Path | str | RunData | None = None, draw: bool = True) -> Report:
    """Write ``report.md`` and ``plots/*.png`` into ``run_dir`` from its files; return what was written.

    ``targets``: accuracy levels in (0, 1] to report bytes and rounds to; ``baseline``: a run directory whose
    final accuracy minus 1 point is a target too, and against which the savings are given
    (:mod:`fedshrink.report.targets`). Both go into ``summary.json``'s ``targets``. ``draw=False``: the text
    only, no PNGs.
    """
    run = load_run(run_dir)
    base = baseline if isinstance(baseline, RunData) or baseline is None else load_run(baseline)
    chosen = run_targets(run, targets, base)
    plots, skipped = _draw(run, [t.level for t in chosen], draw)

    def img(name: str, caption: str) -> str:
        return f"![{caption}]({PLOTS_DIR}/{name}.png)" if name in plots else f"*Plot skipped: {skipped[name]}.*"

    mine = reaches(run, chosen)
    theirs = reaches(base, chosen) if base is not None else None
    tot = run_totals(run)
    lines = [
        *_head(run, tot), *summary_section(run, tot), *targets_section(mine, theirs, base),
        "## Accuracy against round", "", img("accuracy_vs_round", "accuracy against round"), "",
        "## Accuracy against cumulative uplink bytes", "",
        "Solid: bytes sent; dashed: the same fragments in fp32; dotted: the full model in fp32 (see the summary); "
        "dash-dotted: the target accuracies.", "",
        img("accuracy_vs_bytes", "accuracy against cumulative uplink bytes"), "",
        *device_section(run, img("accuracy_vs_device", "accuracy against simulated time and fleet energy")),
        "## Per-client costs", "", img("client_costs", "per-client time, memory, bytes and energy"), "",
        *other_sections(run), *server_section(run, tot["bytes-down"]),
        *pareto_section(run, img("pareto", "student search: Pareto front")), *METHOD,
    ]
    if run.notes or skipped:
        lines += ["## Notes", ""] + [f"- {n}" for n in run.notes] + [
            f"- plot `{k}` skipped: {v}" for k, v in skipped.items()] + [""]
    path = run.path / REPORT_MD
    path.write_text("\n".join(lines))
    update_summary_targets(run, targets_json(mine, str(base.path) if base is not None else None, theirs))
    return Report(path, plots, skipped, mine)
