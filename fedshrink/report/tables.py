"""The report's tables and headline figures, from a loaded run (pure functions over :class:`RunData`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedshrink.report.console import human_bytes, student_size_text
from fedshrink.report.costs import uplink_references
from fedshrink.report.plots import ClientBar
from fedshrink.report.rundata import RunData, cumulative
from fedshrink.report.targets import Reach, Target, choose_targets, final_accuracy, reach_all
from fedshrink.resources.ledger import ClientRound, Totals, totals


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
            "host wall s / round": f"{t.wall_seconds / n:.3f}",
            "host CPU s / round": f"{t.cpu_seconds / n:.3f}",
            "host process peak RSS (max)": human_bytes(t.peak_rss_bytes),
            "bytes up": human_bytes(t.bytes_up),
            "bytes down": human_bytes(t.bytes_down),
            "train GFLOPs": f"{t.train_flops / 1e9:.3g}",
            "host energy J": f"{t.energy_joules:.4g}" + (" (est.)" if t.energy_estimated else ""),
        })
    return rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def device_profile_table(records: Sequence[ClientRound]) -> list[dict[str, Any]]:
    """Per profile, each client's modelled device figures per round next to what full-width fp32 FedAvg would
    cost the same devices (empty when no client has a device model)."""
    rows = []
    for profile in sorted({r.profile for r in records if r.device}):
        mine = [r for r in records if r.profile == profile and r.device]
        dev = {k: [float(r.device.get(k, 0.0)) for r in mine] for k in (
            "device-time-s", "device-energy-j", "device-memory-mb", "device-fedavg-time-s",
            "device-fedavg-energy-j", "device-fedavg-memory-mb", "device-fedavg-bytes", "device-fedavg-fits")}
        sent = [float(r.resources.bytes_sent + r.resources.bytes_received) for r in mine]
        rows.append({
            "profile": profile, "clients": len({r.partition_id for r in mine}), "client-rounds": len(mine),
            "device time s / round": f"{_mean(dev['device-time-s']):.3g}",
            "FedAvg fp32: time s": f"{_mean(dev['device-fedavg-time-s']):.3g}",
            "device energy J / round": f"{_mean(dev['device-energy-j']):.3g}",
            "FedAvg fp32: energy J": f"{_mean(dev['device-fedavg-energy-j']):.3g}",
            "device memory MB": f"{max(dev['device-memory-mb']):.3g}",
            "FedAvg fp32: memory MB": f"{max(dev['device-fedavg-memory-mb']):.3g}",
            "bytes up + down / round": human_bytes(_mean(sent)),
            "FedAvg fp32: bytes": human_bytes(_mean(dev["device-fedavg-bytes"])),
            "FedAvg fits its memory": f"{100 * _mean(dev['device-fedavg-fits']):.0f}% of rounds",
        })
    return rows


def md_cell(value: Any) -> str:
    """A table cell: ``|`` escaped (a codec chain such as ``q4|zlib`` stays one cell), newlines as spaces."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table; the first row's keys are the columns."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(md_cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(md_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def run_totals(run: RunData) -> dict[str, Any]:
    """Headline figures: accuracy, bytes up/down and the uplink's fp32 references (:mod:`~fedshrink.report.costs`),
    energy (+ method), student size; None = not recorded."""
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
        "bytes-up-full-model-fp32": uplink_references(rounds, s).full_model_fp32,
        "energy-j": energy, "energy-estimated": estimated, "energy-method": method,
        "student": student, "rounds": len(rounds), "seconds": s.get("seconds"), "dataset": run.dataset,
    }


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


def run_targets(run: RunData, levels: Sequence[float], baseline: RunData | None = None) -> list[Target]:
    """The targets for ``run`` (:func:`~fedshrink.report.targets.choose_targets`): ``levels`` plus the
    baseline's final accuracy - 1 point, or the run's own when there is neither a baseline nor levels."""
    return choose_targets(
        levels, baseline_final=final_accuracy(baseline.rounds, baseline.summary) if baseline else None,
        own_final=final_accuracy(run.rounds, run.summary), baseline_name=baseline.name if baseline else "baseline")


def reaches(run: RunData, targets: Sequence[Target]) -> list[Reach]:
    return reach_all(run.rounds, targets)
