"""Several runs side by side: a table and overlaid accuracy plots (``fedshrink compare RUN RUN...``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshrink.errors import ConfigError
from fedshrink.report.console import energy_text, human_bytes
from fedshrink.report.plots import MissingData, plot_accuracy_vs_bytes, plot_accuracy_vs_round, save_figure
from fedshrink.report.report import RunData, load_run, markdown_table, run_totals

COMPARE_MD = "compare.md"


def _acc(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, int | float) else "n/a"


def compare_table(runs: Sequence[RunData]) -> list[dict[str, str]]:
    """One row per run: settings that tell runs apart and their headline figures."""
    rows = []
    for run in runs:
        t = run_totals(run)
        cfg = run.config
        rows.append({
            "run": run.name,
            "dataset": str(cfg.get("dataset", "?")),
            "model": f"{cfg.get('model', '?')} x{cfg.get('model-width', '?')}",
            "rounds": str(t["rounds"]),
            "accuracy": _acc(t["accuracy"]),
            "best": _acc(t["best-accuracy"]),
            "bytes up": human_bytes(t["bytes-up"]),
            "bytes up (fp32 eq.)": human_bytes(t["bytes-up-uncompressed"]),
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


def compare_runs(run_dirs: Sequence[Path | str], out_dir: Path | str) -> Comparison:
    """Write ``compare.md`` and overlaid plots of ``run_dirs`` into ``out_dir``.

    A sweep directory among them contributes its configurations, mean +/- sd over seeds
    (:func:`fedshrink.sweep.table.compare_entries`).
    """
    if not run_dirs:
        raise ConfigError("runs", [], "one or more run directories")
    if any((Path(p) / "plan.json").is_file() for p in run_dirs):
        from fedshrink.sweep.table import compare_entries

        md, sweep_plots = compare_entries(run_dirs, out_dir)
        return Comparison(md, sweep_plots, {})
    runs = [load_run(p) for p in run_dirs]
    labels = [r.name for r in runs]
    if len(set(labels)) != len(labels):  # same leaf name in different folders
        labels = [str(r.path) for r in runs]
    curves = {label: r.curve() for label, r in zip(labels, runs, strict=True)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name, make in (("compare_accuracy_vs_round", plot_accuracy_vs_round),
                       ("compare_accuracy_vs_bytes", plot_accuracy_vs_bytes)):
        try:
            plots[name] = save_figure(make(curves), out / f"{name}.png")
        except MissingData as exc:
            skipped[name] = str(exc)
    lines = [f"# fedshrink: {len(runs)} runs compared", "", markdown_table(compare_table(runs)), ""]
    for name, title in (("compare_accuracy_vs_round", "Accuracy against round"),
                        ("compare_accuracy_vs_bytes", "Accuracy against cumulative uplink bytes")):
        lines += [f"## {title}", ""]
        lines += [f"![{title}]({name}.png)" if name in plots else f"*Plot skipped: {skipped[name]}.*", ""]
    path = out / COMPARE_MD
    path.write_text("\n".join(lines))
    return Comparison(path, plots, skipped)
