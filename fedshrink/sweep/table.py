"""A sweep's summary: one row per configuration, mean +/- sd over its seeds, and comparison plots.

``summary.md`` (with the sweep file and command at the top), ``summary.json``
(every figure of every run, and each configuration's mean and sd) and
``plots/`` (accuracy against round and against uplink bytes, mean over
seeds; final accuracy with sd). Figures per run (:func:`~fedshrink.sweep.results.run_figures`):
final and best test accuracy (from ``summary.json``), uplink bytes to each
target accuracy (exact serialized messages), total uplink and downlink,
modelled device time and energy (summed over rounds, where the runs model
devices) and the host wall time the run measured.

:func:`compare_entries` does the same for ``fedshrink compare``, where each
sweep contributes its configurations and each plain run directory is a
configuration of one seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedshrink.report.plots import MissingData, plot_accuracy_vs_bytes, plot_accuracy_vs_round, save_figure
from fedshrink.report.rundata import RunData
from fedshrink.report.rundir import write_json_atomic
from fedshrink.report.tables import markdown_table
from fedshrink.sweep.plots import mean_curve, plot_final_accuracy
from fedshrink.sweep.results import DEVICE_KEYS, mean_sd, open_sweep, run_figures

SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
PLOTS_DIR = "plots"
STATS = ("accuracy", "best-accuracy", "bytes-up", "bytes-down", *DEVICE_KEYS, "host-seconds")


@dataclass(frozen=True)
class Entry:
    """A configuration to summarise: its label, its finished runs by seed, and how many were planned."""

    label: str
    runs: Mapping[int, RunData]
    planned: int
    axes: Mapping[str, str]


def entry_stats(entry: Entry, targets: Sequence[float]) -> dict[str, Any]:
    """Per-run figures and their mean/sd over seeds (``reached`` counts the seeds that reached a target)."""
    per_run = [{"seed": seed, "run": run.name, **run_figures(run, targets)} for seed, run in entry.runs.items()]
    out: dict[str, Any] = {"config": entry.label, "axes": dict(entry.axes), "planned": entry.planned,
                           "done": len(per_run), "runs": per_run}
    for key in STATS:
        values = [float(r[key]) for r in per_run if r.get(key) is not None]
        ms = mean_sd(values)
        out[key] = None if ms is None else {"mean": ms[0], "sd": ms[1], "n": len(values)}
    out["bytes-to-target"] = {}
    for t in targets:
        hits = [float(r["bytes-to-target"][f"{t:g}"]) for r in per_run if r["bytes-to-target"][f"{t:g}"] is not None]
        ms = mean_sd(hits)
        out["bytes-to-target"][f"{t:g}"] = {"reached": len(hits), "of": len(per_run),
                                             **({"mean": ms[0], "sd": ms[1]} if ms else {})}
    return out


def _pm(stat: Mapping[str, float] | None, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    if stat is None:
        return "n/a"
    return f"{fmt.format(scale * stat['mean'])} ± {fmt.format(scale * stat['sd'])}"


def _bytes_pm(stat: Mapping[str, float] | None) -> str:
    from fedshrink.report.console import human_bytes

    if stat is None or "mean" not in stat:
        return "n/a"
    return f"{human_bytes(stat['mean'])} ± {human_bytes(stat['sd'])}"


def table_rows(stats: Sequence[Mapping[str, Any]], targets: Sequence[float]) -> list[dict[str, str]]:
    """The markdown table's rows; device columns only when some run modelled devices."""
    devices = any((s.get(k) or {}).get("mean", 0) for s in stats for k in DEVICE_KEYS)
    rows = []
    for s in stats:
        row = {"configuration": s["config"], "runs": f"{s['done']}/{s['planned']}",
               "final accuracy %": _pm(s["accuracy"], 100), "best accuracy %": _pm(s["best-accuracy"], 100)}
        for t in targets:
            hit = s["bytes-to-target"][f"{t:g}"]
            row[f"uplink to {100 * t:g}%"] = (f"{_bytes_pm(hit)} ({hit['reached']}/{hit['of']})" if hit["reached"]
                                             else f"never (0/{hit['of']})")
        row["uplink total"] = _bytes_pm(s["bytes-up"])
        row["downlink total"] = _bytes_pm(s["bytes-down"])
        if devices:
            row["device time s (modelled)"] = _pm(s["device-time-s"], fmt="{:.3g}")
            row["device energy J (modelled)"] = _pm(s["device-energy-j"], fmt="{:.3g}")
        row["host s (measured)"] = _pm(s["host-seconds"], fmt="{:.1f}")
        rows.append(row)
    return rows


def write_plots(entries: Sequence[Entry], stats: Sequence[Mapping[str, Any]], out: Path) -> tuple[dict[str, Path],
                                                                                                  dict[str, str]]:
    """Mean accuracy against round and against uplink bytes, and final accuracy with sd, into ``out/plots``."""
    curves = {e.label: mean_curve(list(e.runs.values())) for e in entries if e.runs}
    done = [s for s in stats if s["accuracy"] is not None]
    makers: dict[str, Callable[[], Figure]] = {
        "accuracy_vs_round": lambda: plot_accuracy_vs_round(curves),
        "accuracy_vs_bytes": lambda: plot_accuracy_vs_bytes(curves),
        "final_accuracy": lambda: plot_final_accuracy([s["config"] for s in done],
                                                      [s["accuracy"]["mean"] for s in done],
                                                      [s["accuracy"]["sd"] for s in done],
                                                      [s["accuracy"]["n"] for s in done]),
    }
    plots: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name, make in makers.items():
        try:
            plots[name] = save_figure(make(), out / PLOTS_DIR / f"{name}.png")
        except MissingData as exc:
            skipped[name] = str(exc)
    return plots, skipped


def write_summary(sweep_path: Path | str) -> Path:
    """``summary.md``, ``summary.json`` and ``plots/`` of a sweep directory; returns summary.md's path."""
    sweep = open_sweep(sweep_path)
    entries = [Entry(c, sweep.of(c), len(sweep.planned_of(c)), sweep.planned_of(c)[0].axes) for c in sweep.configs()]
    plan = sweep.plan
    head = [f"Sweep file `{plan.get('source', '')}`, made by `{plan.get('command', '')}`"
            f" ({plan.get('num-clients')} clients, engine {plan.get('engine')}).", ""]
    if plan.get("description"):
        head += [str(plan["description"]), ""]
    md, stats = _write(f"sweep `{sweep.name}`", head, entries, sweep.targets, sweep.path, SUMMARY_MD)
    write_json_atomic(sweep.path / SUMMARY_JSON, {"name": sweep.name, "source": plan.get("source"),
                                                  "command": plan.get("command"), "targets": sweep.targets,
                                                  "configs": stats})
    return md


def _write(title: str, head: Sequence[str], entries: Sequence[Entry], targets: Sequence[float], out: Path,
           name: str) -> tuple[Path, list[dict[str, Any]]]:
    stats = [entry_stats(e, targets) for e in entries]
    plots, skipped = write_plots(entries, stats, out)
    lines = [f"# {title}", "", *head,
             "Mean ± sample sd over seeds. Accuracy: the global model's final test accuracy. Uplink/downlink: "
             "exact serialized Flower messages, all clients; *uplink to X%*: cumulative uplink bytes at the first "
             "round at or above X% (mean over the seeds that reached it). Device figures are modelled from the "
             "device profiles; host seconds are measured on the machine that ran the sweep.", "",
             markdown_table(table_rows(stats, targets)), ""]
    for plot, caption in (("final_accuracy", "Final accuracy by configuration"),
                          ("accuracy_vs_round", "Accuracy against round (mean over seeds)"),
                          ("accuracy_vs_bytes", "Accuracy against cumulative uplink bytes (mean over seeds)")):
        lines += [f"## {caption}", "",
                  f"![{caption}]({PLOTS_DIR}/{plot}.png)" if plot in plots else f"*Plot skipped: {skipped[plot]}.*",
                  ""]
    path = out / name
    path.write_text("\n".join(lines))
    return path, stats


def compare_entries(paths: Sequence[Path | str], out_dir: Path | str, targets: Sequence[float] = ()
                    ) -> tuple[Path, dict[str, Path]]:
    """``compare.md`` and plots for sweep directories (their configurations) and run directories (one each);
    the target accuracies are ``targets`` and the sweeps' own."""
    from fedshrink.report.rundata import load_run
    from fedshrink.sweep.layout import SweepDirectory

    entries: list[Entry] = []
    levels: list[float] = list(dict.fromkeys(targets))
    for p in paths:
        if SweepDirectory.is_sweep(p):
            sweep = open_sweep(p)
            levels += [t for t in sweep.targets if t not in levels]
            many = sum(SweepDirectory.is_sweep(q) for q in paths) > 1
            entries += [Entry(f"{sweep.name}: {c}" if many else c, sweep.of(c), len(sweep.planned_of(c)),
                              sweep.planned_of(c)[0].axes) for c in sweep.configs()]
        else:
            run = load_run(p)
            entries.append(Entry(run.name, {int(run.config.get("seed", 0)): run}, 1, {}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, _ = _write(f"fedshrink: {len(entries)} configurations compared", [], entries, levels, out, "compare.md")
    return path, {p.stem: p for p in (out / PLOTS_DIR).glob("*.png")}
