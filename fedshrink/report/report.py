"""``runs/<run>/report.md`` and its PNG plots, built from the run directory's files only.

Inputs (all in the run directory; only ``metrics.jsonl`` is required):

* ``config.json``, ``summary.json``, ``metrics.jsonl`` (see :mod:`fedshrink.report.rundir`);
  round records may carry ``bytes-up``, ``bytes-down``, ``bytes-up-uncompressed``
  (what the same uplink would have cost as fp32 full-size arrays) and ``energy-j``
  (+ ``energy-estimated``);
* ``clients.csv`` (:class:`~fedshrink.resources.ledger.ResourceLedger`): per-client
  per-round resource records;
* ``pareto.json`` (optional), the student search's candidates: a JSON list, or an
  object ``{"candidates": [...]}``, of ``{"params": int, "accuracy": float in [0, 1],
  "name": str, "bytes": int, "macs": int, "latency_ms": float, "chosen": bool}``
  (only ``params`` and ``accuracy`` required). The front is computed here.

Outputs: ``report.md`` and ``plots/*.png``. A plot whose data is absent is
skipped, with a note saying what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedshrink.errors import ConfigError
from fedshrink.report.console import energy_text, human_bytes, student_size_text
from fedshrink.report.plots import (
    ClientBar,
    Curve,
    MissingData,
    ParetoPoint,
    pareto_front,
    plot_accuracy_vs_bytes,
    plot_accuracy_vs_round,
    plot_client_bars,
    plot_pareto,
    save_figure,
)
from fedshrink.resources.ledger import CLIENTS_CSV, ClientRound, ResourceLedger, Totals, totals

REPORT_MD = "report.md"
PARETO_JSON = "pareto.json"
PLOTS_DIR = "plots"


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]
    clients: list[ClientRound] | None
    pareto: list[ParetoPoint] | None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def curve(self) -> Curve:
        return run_curve(self)


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.exists():
        notes.append(f"{path.name} is absent")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        notes.append(f"{path.name} is not valid JSON ({exc})")
        return None


def read_pareto(path: Path) -> list[ParetoPoint]:
    """The candidates of a ``pareto.json`` (format in the module docstring)."""
    data = json.loads(Path(path).read_text())
    items = data.get("candidates") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise ConfigError("pareto.json", type(data).__name__, "a list of candidates or {'candidates': [...]}")
    return [ParetoPoint.from_json(d) for d in items]


def load_run(path: Path | str) -> RunData:
    """Read a run directory; raises ConfigError when it has no ``metrics.jsonl``."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError("run", str(path), "a run directory holding metrics.jsonl")
    notes: list[str] = []
    rounds = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    config = _read_json(path / "config.json", notes) or {}
    summary = _read_json(path / "summary.json", notes) or {}
    clients: list[ClientRound] | None = None
    if (path / CLIENTS_CSV).is_file():
        try:
            clients = ResourceLedger.read_csv(path / CLIENTS_CSV).records
        except ConfigError as exc:
            notes.append(f"{CLIENTS_CSV} unreadable: {exc}")
    pareto: list[ParetoPoint] | None = None
    if (path / PARETO_JSON).is_file():
        try:
            pareto = read_pareto(path / PARETO_JSON)
        except (ConfigError, ValueError) as exc:
            notes.append(f"{PARETO_JSON} unreadable: {exc}")
    return RunData(path, dict(config), rounds, dict(summary), clients, pareto, notes)


# -- series (pure) ---------------------------------------------------------------------
def cumulative(rounds: Sequence[Mapping[str, Any]], key: str) -> list[float] | None:
    """Running sum of ``key`` over the round records, or None if any record lacks it."""
    if not rounds or any(key not in r for r in rounds):
        return None
    return list(accumulate(float(r[key]) for r in rounds))


def run_curve(run: RunData) -> Curve:
    rounds = [r for r in run.rounds if "accuracy" in r]
    return Curve(
        rounds=[int(r["round"]) for r in rounds],
        accuracy=[float(r["accuracy"]) for r in rounds],
        bytes_up=cumulative(rounds, "bytes-up"),
        bytes_up_uncompressed=cumulative(rounds, "bytes-up-uncompressed"),
    )


def client_bars(records: Sequence[ClientRound]) -> list[ClientBar]:
    """Per-client totals over the run, for :func:`~fedshrink.report.plots.plot_client_bars`."""
    out = []
    for pid in sorted({r.partition_id for r in records}):
        mine = [r for r in records if r.partition_id == pid]
        t = totals(mine)
        profile = mine[-1].profile
        out.append(ClientBar(pid, profile, t.wall_seconds, t.peak_rss_bytes, t.bytes_up, t.bytes_down,
                             t.energy_joules))
    return out


def energy_label(records: Sequence[ClientRound]) -> str:
    return " + ".join(sorted({r.resources.energy_label for r in records}))


def profile_table(records: Sequence[ClientRound]) -> list[dict[str, Any]]:
    """One row per device profile: clients, records, means per client-round and totals."""
    rows = []
    for profile in sorted({r.profile for r in records}):
        mine = [r for r in records if r.profile == profile]
        t: Totals = totals(mine)
        n = max(t.records, 1)
        rows.append({
            "profile": profile,
            "clients": len({r.partition_id for r in mine}),
            "client-rounds": t.records,
            "params (max)": f"{t.parameters:,}",
            "MACs/sample (max)": f"{t.macs_per_sample:,}",
            "wall s / round": f"{t.wall_seconds / n:.3f}",
            "CPU s / round": f"{t.cpu_seconds / n:.3f}",
            "peak RSS (max)": human_bytes(t.peak_rss_bytes),
            "bytes up": human_bytes(t.bytes_up),
            "bytes down": human_bytes(t.bytes_down),
            "train GFLOPs": f"{t.train_flops / 1e9:.3g}",
            "energy J": f"{t.energy_joules:.4g}" + (" (est.)" if t.energy_estimated else ""),
        })
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def run_totals(run: RunData) -> dict[str, Any]:
    """Headline figures: accuracy, bytes up/down, energy (+ method), student size; None = not recorded."""
    rounds, s = run.rounds, run.summary
    acc = s.get("accuracy", rounds[-1].get("accuracy") if rounds else None)
    best = s.get("best-accuracy", max((r["accuracy"] for r in rounds if "accuracy" in r), default=None))

    def total(key: str) -> float | None:
        c = cumulative(rounds, key)
        return c[-1] if c else None

    up, down, energy = total("bytes-up"), total("bytes-down"), total("energy-j")
    method = energy_label(run.clients) if run.clients else None
    t = totals(run.clients) if run.clients else None
    if up is None and t is not None:
        up, down = t.bytes_up, t.bytes_down
    if energy is None and t is not None:
        energy = t.energy_joules
    estimated = t.energy_estimated if t is not None else (
        any(bool(r.get("energy-estimated", True)) for r in rounds) if energy is not None else None)
    student = student_size_text(s)
    if student == "n/a" and run.pareto:
        chosen = [p for p in run.pareto if p.chosen]
        if chosen:
            student = student_size_text({"student-params": chosen[0].params, "student-bytes": chosen[0].bytes})
    return {
        "accuracy": acc, "best-accuracy": best, "bytes-up": up, "bytes-down": down,
        "bytes-up-uncompressed": total("bytes-up-uncompressed"),
        "energy-j": energy, "energy-estimated": estimated, "energy-method": method,
        "student": student, "rounds": len(rounds), "seconds": s.get("seconds"),
    }


def figures(run: RunData) -> dict[str, Figure | str]:
    """The report's figures by file stem; a string in place of a figure says why it was skipped."""
    out: dict[str, Figure | str] = {}
    makers = {
        "accuracy_vs_round": lambda: plot_accuracy_vs_round({run.name: run.curve()}),
        "accuracy_vs_bytes": lambda: plot_accuracy_vs_bytes({run.name: run.curve()}),
        "client_costs": lambda: plot_client_bars(client_bars(run.clients or []),
                                                 energy_label=energy_label(run.clients or [])),
        "pareto": lambda: plot_pareto(run.pareto or [], size_key=_pareto_size_key(run.pareto or [])),
    }
    for name, make in makers.items():
        try:
            out[name] = make()
        except MissingData as exc:
            out[name] = str(exc)
    return out


def _pareto_size_key(points: Sequence[ParetoPoint]) -> str:
    return "bytes" if points and all(p.bytes is not None for p in points) else "params"


@dataclass(frozen=True)
class Report:
    path: Path  # report.md
    plots: dict[str, Path]
    skipped: dict[str, str]  # plot -> reason


def _fmt_acc(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, int | float) else "n/a"


def dropped_table(rounds: Sequence[Mapping[str, Any]], limit: int = 50) -> list[dict[str, Any]]:
    """Every dropped reply (round, client, reason) from ``metrics.jsonl``, grouped by client and reason."""
    groups: dict[tuple[int, int, str], list[int]] = {}
    for r in rounds:
        for d in r.get("dropped", []):
            key = (int(d.get("partition-id", -1)), int(d.get("node-id", 0)), str(d.get("reason", "")))
            groups.setdefault(key, []).append(int(r.get("round", 0)))
    rows = [{"partition": pid if pid >= 0 else "?", "node": node, "replies": len(rnds),
             "rounds": ", ".join(map(str, rnds[:12])) + (" ..." if len(rnds) > 12 else ""), "reason": reason}
            for (pid, node, reason), rnds in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    return rows[:limit]


def build_report(run_dir: Path | str) -> Report:
    """Write ``report.md`` and ``plots/*.png`` into ``run_dir`` from its files; return what was written."""
    run = load_run(run_dir)
    plots_dir = run.path / PLOTS_DIR
    plots: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name, fig in figures(run).items():
        if isinstance(fig, str):
            skipped[name] = fig
        else:
            plots[name] = save_figure(fig, plots_dir / f"{name}.png")

    def img(name: str, caption: str) -> str:
        if name in plots:
            return f"![{caption}]({PLOTS_DIR}/{name}.png)"
        return f"*Plot skipped: {skipped[name]}.*"

    tot = run_totals(run)
    cfg = run.config
    lines = [f"# fedshrink run `{run.name}`", ""]
    facts = {k: cfg.get(k) for k in ("dataset", "model", "model-width", "partitioner", "num-server-rounds",
                                     "local-epochs", "batch-size", "seed") if k in cfg}
    if facts:
        lines += [", ".join(f"{k} = {v}" for k, v in facts.items()), ""]
    status = run.summary.get("status", "unknown (no summary.json)")
    lines += [f"Status: **{status}**, {tot['rounds']} rounds recorded"
              + (f", {run.summary['clients']} clients" if "clients" in run.summary else "") + ".", ""]
    lines += [f"Privacy: {run.summary['privacy']}.", ""] if "privacy" in run.summary else []  # fedshrink.privacy
    saving = ""
    if tot["bytes-up"] and tot["bytes-up-uncompressed"]:
        saving = f" ({tot['bytes-up-uncompressed'] / tot['bytes-up']:.2f}x less than fp32 full-size: " \
                 f"{human_bytes(tot['bytes-up-uncompressed'])})"
    lines += [
        "## Summary", "",
        markdown_table([
            {"figure": "accuracy (final)", "value": _fmt_acc(tot["accuracy"])},
            {"figure": "accuracy (best)", "value": _fmt_acc(tot["best-accuracy"])},
            {"figure": "bytes up", "value": human_bytes(tot["bytes-up"]) + saving},
            {"figure": "bytes down", "value": human_bytes(tot["bytes-down"])},
            {"figure": "energy (clients)", "value": energy_text(tot["energy-j"], tot["energy-estimated"],
                                                                 tot["energy-method"])},
            {"figure": "student size", "value": tot["student"]},
            {"figure": "wall time", "value": f"{tot['seconds']:.1f} s" if tot["seconds"] else "n/a"},
        ]), "",
        "## Accuracy against round", "", img("accuracy_vs_round", "accuracy against round"), "",
        "## Accuracy against cumulative uplink bytes", "",
        "Solid: bytes fedshrink sent; dashed: the same updates as uncompressed fp32 full-size arrays.", "",
        img("accuracy_vs_bytes", "accuracy against cumulative uplink bytes"), "",
        "## Per-client costs", "", img("client_costs", "per-client time, memory, bytes and energy"), "",
        "## Per-profile table", "",
    ]
    if run.clients:
        lines += [markdown_table(profile_table(run.clients)), ""]
    else:
        lines += ["*Table skipped: no clients.csv (per-client resource records).*", ""]
    srv = [r for r in run.rounds if "aggregation-s" in r]
    if srv:
        agg = sum(float(r["aggregation-s"]) for r in srv)
        dist = sum(float(r.get("distillation-s", 0.0)) for r in srv)
        lines += ["## Server costs", "",
                  f"Aggregation {agg:.3f} s, distillation {dist:.3f} s, bytes sent down "
                  f"{human_bytes(tot['bytes-down'])}.", ""]
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
                  f"Defence `{cfg.get('defence', 'none')}`; stages with notes: {', '.join(keys)} "
                  "(per round in metrics.jsonl under `stages`).", ""]
    lines += ["## Student Pareto front", "", img("pareto", "student Pareto front"), ""]
    if run.pareto:
        key = _pareto_size_key(run.pareto)
        front = pareto_front(run.pareto, key)
        lines += [markdown_table([
            {"name": p.name or "-", "params": f"{p.params:,}", "bytes": human_bytes(p.bytes),
             "MACs": f"{p.macs:,}" if p.macs is not None else "n/a",
             "latency ms": f"{p.latency_ms:.3g}" if p.latency_ms is not None else "n/a",
             "accuracy": f"{p.accuracy:.4f}", "front": "yes" if p in front else "",
             "chosen": "**yes**" if p.chosen else ""}
            for p in sorted(run.pareto, key=lambda p: p.size(key))]), ""]
    lines += [
        "## How the figures are measured", "",
        "- Bytes: exact encoded sizes of the Flower messages (protobuf `message_to_proto`), "
        "reply metadata and metrics included.",
        "- Peak memory: process RSS high-water during the client's round (kernel VmHWM reset per round "
        "where allowed, else a 10 ms sampler); GPU: torch allocator peak.",
        "- Training FLOPs = 3 x 2 x MACs/sample x samples (forward + backward ~ 3 forward passes, "
        "2 FLOPs per MAC; MACs of Conv2d and Linear layers by forward hooks).",
        "- Energy: RAPL or NVML counters where readable (`measured:`); otherwise CPU time x W per core, "
        "labelled `estimated:cpu-time x W/core`.", "",
    ]
    if run.notes or skipped:
        lines += ["## Notes", ""] + [f"- {n}" for n in run.notes] + [
            f"- plot `{k}` skipped: {v}" for k, v in skipped.items()] + [""]
    path = run.path / REPORT_MD
    path.write_text("\n".join(lines))
    return Report(path, plots, skipped)
