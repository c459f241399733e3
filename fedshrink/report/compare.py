"""Several runs side by side against a baseline run (``fedshrink compare RUN RUN ... [--baseline RUN]``).

Writes into the output directory:

* ``compare.md``: the runs' data sets, the settings that differ between them (from ``config.json``; a setting a
  run lacks counts as different) as columns, their headline figures, and per target accuracy each run's bytes
  and rounds to it with its savings against the baseline (:mod:`fedshrink.report.targets`: baseline bytes / run
  bytes; rounds of both);
* ``compare.json``: the same numbers (per run: its differing settings and ``summary.json``'s ``targets`` form);
* overlaid accuracy plots whose legend labels are the differing settings.

The baseline is ``--baseline`` (added to the runs if it is not one of them), else the first run; the default
target is its final accuracy minus 1 point, plus the levels given. Sweep directories are compared by
:func:`fedshrink.sweep.table.compare_entries` (``fedshrink compare`` picks it when a sweep is among the paths).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedshrink.errors import ConfigError
from fedshrink.report.console import energy_text, human_bytes
from fedshrink.report.plots import MissingData, plot_accuracy_vs_bytes, plot_accuracy_vs_round, save_figure
from fedshrink.report.report import fmt_acc, reach_rows
from fedshrink.report.rundata import RunData, load_run
from fedshrink.report.tables import markdown_table, reaches, run_targets, run_totals
from fedshrink.report.targets import DEFINITION, Reach, Target, targets_json

COMPARE_MD = "compare.md"
COMPARE_JSON = "compare.json"
# settings that name or place a run, or have a column of their own, rather than change what it does
NOT_COMPARED = frozenset({"run-name", "output-dir", "quiet", "report", "resume", "dataset"})
_ABSENT = object()


def setting_text(value: Any) -> str:
    """A setting as the run config writes it: ``''`` for the empty string, ``true`` / ``false``."""
    if value is _ABSENT:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "''" if value == "" else str(value)


def differing_settings(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys whose values are not the same in every config (absent counts as a value), in first-seen order."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if k not in NOT_COMPARED
            and len({json.dumps(c.get(k, "\0absent"), sort_keys=True) for c in configs}) > 1]


def run_labels(runs: Sequence[RunData], keys: Sequence[str]) -> list[str]:
    """Legend labels: ``"key=value, ..."`` over the differing settings; the run's name where that is not unique."""
    labels = [", ".join(f"{k}={setting_text(r.config.get(k, _ABSENT))}" for k in keys) or r.name for r in runs]
    if len(set(labels)) != len(labels):
        labels = [f"{label} ({r.name})" if label != r.name else str(r.path) for label, r in zip(labels, runs,
                                                                                             strict=True)]
    if len(set(labels)) != len(labels):  # same leaf name in different folders
        labels = [str(r.path) for r in runs]
    return labels


def compare_table(runs: Sequence[RunData], keys: Sequence[str] | None = None) -> list[dict[str, str]]:
    """One row per run: its data set, the settings that tell runs apart and its headline figures."""
    keys = differing_settings([r.config for r in runs]) if keys is None else keys
    rows = []
    for run in runs:
        t = run_totals(run)
        rows.append({
            "run": run.name, "dataset": run.data_description,
            **{k: setting_text(run.config.get(k, _ABSENT)) for k in keys},
            "rounds": str(t["rounds"]), "accuracy": fmt_acc(t["accuracy"]), "best": fmt_acc(t["best-accuracy"]),
            "bytes up": human_bytes(t["bytes-up"]),
            "up: same fragments in fp32": human_bytes(t["bytes-up-uncompressed"]),
            "up: full model in fp32": human_bytes(t["bytes-up-full-model-fp32"]),
            "bytes down": human_bytes(t["bytes-down"]),
            "energy": energy_text(t["energy-j"], t["energy-estimated"]),
            "student": t["student"],
            "seconds": f"{t['seconds']:.1f}" if isinstance(t["seconds"], int | float) else "n/a",
        })
    return rows


@dataclass(frozen=True)
class Comparison:
    path: Path  # compare.md
    plots: dict[str, Path]
    skipped: dict[str, str]
    baseline: RunData
    runs: list[RunData]  # the baseline first
    settings: list[str]  # the differing settings
    targets: list[Target]
    reaches: dict[str, list[Reach]]  # run name -> its reaches of the targets, in order


def run_names(runs: Sequence[RunData]) -> list[str]:
    """The runs' directory names, or their paths where two names are the same."""
    names = [r.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def order_runs(run_dirs: Sequence[Path | str], baseline: Path | str | None) -> list[RunData]:
    """The runs, the baseline first (``baseline`` or the first run; added if it is not among them)."""
    if not run_dirs:
        raise ConfigError("runs", [], "one or more run directories")
    for p in run_dirs:
        if (Path(p) / "plan.json").is_file():
            raise ConfigError("runs", str(p), "run directories (a sweep directory is compared by "
                              "fedshrink.sweep.table.compare_entries, as `fedshrink compare` does)")
    runs = [load_run(p) for p in run_dirs]
    if baseline is None:
        return runs
    where = [i for i, r in enumerate(runs) if r.path.resolve() == Path(baseline).resolve()]
    base = runs.pop(where[0]) if where else load_run(baseline)
    return [base, *runs]


def _draw(runs: Sequence[RunData], labels: Sequence[str], out: Path, targets: Sequence[float], draw: bool
          ) -> tuple[dict[str, Path], dict[str, str]]:
    """The overlaid plots, legend labels from the differing settings, the target accuracies as lines."""
    curves = {label: r.curve() for label, r in zip(labels, runs, strict=True)}
    makers: dict[str, Callable[[], Figure]] = {
        "compare_accuracy_vs_round": lambda: plot_accuracy_vs_round(curves, targets=targets),
        "compare_accuracy_vs_bytes": lambda: plot_accuracy_vs_bytes(curves, references=False, targets=targets),
    }
    plots: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name, make in makers.items():
        if not draw:
            skipped[name] = "not drawn (compare_runs(draw=False))"
            continue
        try:
            plots[name] = save_figure(make(), out / f"{name}.png")
        except MissingData as exc:
            skipped[name] = str(exc)
    return plots, skipped


def savings_section(runs: Sequence[RunData], names: Sequence[str], labels: Sequence[str],
                    found: Mapping[str, list[Reach]], targets: Sequence[Target]) -> list[str]:
    """Per target, a table of every run's reach and its savings against the baseline (``runs[0]``)."""
    base = runs[0]
    lines = ["## Savings to the target accuracies against the baseline", "",
             f"Baseline: `{base.name}` ({labels[0]}). Savings: baseline bytes / run bytes (above 1x: the run "
             f"needed fewer). {DEFINITION}.", ""]
    for i, target in enumerate(targets):
        rows = []
        for name, label in zip(names, labels, strict=True):
            row = reach_rows([found[name][i]], [found[names[0]][i]])[0]
            rows.append({"run": name, "settings": label, **{k: v for k, v in row.items()
                                                                if k not in ("target", "source")}})
        lines += [f"### Target {target.level:.4f} ({target.source})", "", markdown_table(rows), ""]
    return lines


def compare_runs(run_dirs: Sequence[Path | str], out_dir: Path | str, *, baseline: Path | str | None = None,
                 targets: Sequence[float] = (), draw: bool = True) -> Comparison:
    """Write ``compare.md``, ``compare.json`` and overlaid plots of the runs into ``out_dir`` (module doc);
    ``draw=False``: no plots."""
    runs = order_runs(run_dirs, baseline)
    if len({r.path.resolve() for r in runs}) != len(runs):
        raise ConfigError("runs", [str(r.path) for r in runs], "each run directory once")
    keys = differing_settings([r.config for r in runs])
    labels = run_labels(runs, keys)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = run_targets(runs[0], targets, runs[0])
    plots, skipped = _draw(runs, labels, out, [t.level for t in chosen], draw)
    names = run_names(runs)
    found = {n: reaches(r, chosen) for n, r in zip(names, runs, strict=True)}
    runs_by_key = dict(zip(names, runs, strict=True))
    lines = [f"# fedshrink: {len(runs)} runs compared", ""]
    datasets = sorted({r.dataset for r in runs})
    if len(datasets) > 1:
        lines += [f"**The runs use different data sets ({', '.join(datasets)}): their figures do not compare.**", ""]
    lines += ["Settings that differ between the runs: " + (", ".join(f"`{k}`" for k in keys) or "none") + ".", "",
              markdown_table(compare_table(runs, keys)), ""]
    lines += savings_section(runs, names, labels, found, chosen) if chosen else []
    for name, title in (("compare_accuracy_vs_round", "Accuracy against round"),
                        ("compare_accuracy_vs_bytes", "Accuracy against cumulative uplink bytes")):
        lines += [f"## {title}", "", "Dash-dotted: the target accuracies." if name in plots and chosen else ""]
        lines += [f"![{title}]({name}.png)" if name in plots else f"*Plot skipped: {skipped[name]}.*", ""]
    path = out / COMPARE_MD
    path.write_text("\n".join(lines))
    base_reaches = found[names[0]]
    (out / COMPARE_JSON).write_text(json.dumps({
        "baseline": str(runs[0].path), "settings": keys,
        "runs": {n: {"path": str(runs_by_key[n].path), "dataset": runs_by_key[n].dataset, "label": label,
                     "settings": {k: runs_by_key[n].config.get(k) for k in keys},
                     "targets": targets_json(found[n], str(runs[0].path), base_reaches)}
                 for n, label in zip(names, labels, strict=True)},
    }, indent=2, sort_keys=True) + "\n")
    return Comparison(path, plots, skipped, runs[0], runs, keys, chosen, found)
