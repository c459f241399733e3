"""Reading a sweep's runs back: by configuration and seed, and the figures of each run (pure).

:func:`open_sweep` gives a :class:`SweepRuns`, what the summary table, ``fedshrink
compare`` and the analyses under ``simulations/benchmarks/`` read. Only
finished runs are loaded; a planned run not made (yet) is simply absent.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshrink.report.rundata import RunData, load_run
from fedshrink.sweep.layout import SweepDirectory
from fedshrink.sweep.spec import PlannedRun

DEVICE_KEYS = ("device-time-s", "device-energy-j")  # modelled device figures per round (summed over rounds)


@dataclass
class SweepRuns:
    """A sweep's plan and its finished runs."""

    path: Path
    plan: dict[str, Any]
    planned: list[PlannedRun]
    runs: dict[str, RunData]  # hash -> finished run

    @property
    def name(self) -> str:
        return str(self.plan.get("name", self.path.name))

    @property
    def targets(self) -> list[float]:
        return [float(t) for t in self.plan.get("targets", [])]

    def configs(self) -> list[str]:
        return list(dict.fromkeys(p.config for p in self.planned))

    def planned_of(self, config: str) -> list[PlannedRun]:
        return [p for p in self.planned if p.config == config]

    def of(self, config: str) -> dict[int, RunData]:
        """Seed -> finished run of one configuration."""
        return {p.seed: self.runs[p.key] for p in self.planned_of(config) if p.key in self.runs}

    def rounds(self, config: str) -> dict[int, list[dict[str, Any]]]:
        """Seed -> the round records (``metrics.jsonl``) of one configuration's finished runs."""
        return {seed: run.rounds for seed, run in self.of(config).items()}


def open_sweep(path: Path | str) -> SweepRuns:
    sweep = SweepDirectory(path)
    plan = sweep.read_plan()
    planned = [PlannedRun.from_json(d) for d in plan["runs"]]
    runs = {p.key: load_run(sweep.run_dir(p.key)) for p in planned if sweep.finished(p.key)}
    return SweepRuns(sweep.path, plan, planned, runs)


# -- figures of one run (pure) -------------------------------------------------------------
def bytes_to_reach(rounds: Sequence[Mapping[str, Any]], target: float) -> int | None:
    """Cumulative uplink bytes at the first round whose accuracy is at least ``target``; None if never."""
    hit = reach(rounds, target)
    return hit[1] if hit is not None else None


def reach(rounds: Sequence[Mapping[str, Any]], target: float) -> tuple[int, int, int] | None:
    """``(round, cumulative uplink bytes, cumulative downlink bytes)`` at the first round whose accuracy is at
    least ``target``; None if never."""
    up = down = 0
    for r in rounds:
        up, down = up + int(r.get("bytes-up", 0)), down + int(r.get("bytes-down", 0))
        if float(r["accuracy"]) >= target:
            return int(r["round"]), up, down
    return None


def run_figures(run: RunData, targets: Sequence[float]) -> dict[str, Any]:
    """The headline figures of one run: accuracy (from summary.json), bytes, device and host costs.

    ``device-time-s`` and ``device-energy-j`` (modelled) are summed over the rounds and given only
    when the rounds record them; ``host-seconds`` is the run's measured wall time.
    """
    s, rounds = run.summary, run.rounds
    out: dict[str, Any] = {
        "accuracy": s.get("accuracy"), "best-accuracy": s.get("best-accuracy"),
        "bytes-up": s.get("bytes-up"), "bytes-down": s.get("bytes-down"), "host-seconds": s.get("seconds"),
        "rounds": len(rounds),
        "bytes-to-target": {f"{t:g}": bytes_to_reach(rounds, t) for t in targets},
    }
    for key in DEVICE_KEYS:
        if rounds and all(key in r for r in rounds):
            out[key] = sum(float(r[key]) for r in rounds)
    return out


def mean_sd(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value); None for none."""
    if not values:
        return None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


SeedRounds = Mapping[int, Sequence[Mapping[str, Any]]]  # seed -> that run's per-round records


def seed_accuracies(per_seed: SeedRounds, seeds: Sequence[int]) -> tuple[list[str], list[float]]:
    """Each seed's final test accuracy as a table cell in % ("n/a" where the sweep has not finished it), and the
    finished ones' values (fractions), in ``seeds``' order."""
    finals = [float(per_seed[s][-1]["accuracy"]) for s in seeds if s in per_seed]
    cells = [f"{100 * float(per_seed[s][-1]['accuracy']):.2f}" if s in per_seed else "n/a" for s in seeds]
    return cells, finals


def narrow_widths(per_seed: SeedRounds, widths: Sequence[str] = ("0.25", "0.5")) -> str:
    """The final accuracy of each narrow width's prefix sub-model, mean over seeds in %, as "a / b" ("-": none)."""
    last = [r[-1].get("accuracy-width", {}) for r in per_seed.values()]
    return " / ".join(f"{100 * statistics.mean(float(w[k]) for w in last if k in w):.1f}"
                      for k in widths if any(k in w for w in last)) or "-"


def pct_mean_sd(values: Sequence[float]) -> str:
    """Fractions as "mean ± sd" in % with two decimals ("n/a" for none)."""
    m = mean_sd(values)
    return f"{100 * m[0]:.2f} ± {100 * m[1]:.2f}" if m is not None else "n/a"


def mean_final(per_seed: SeedRounds) -> float | None:
    """The mean over seeds of the final test accuracy (None when no seed finished): a reference such as FedAvg's."""
    return statistics.mean(float(r[-1]["accuracy"]) for r in per_seed.values()) if per_seed else None


def final_accuracies(per_seed: SeedRounds) -> dict[int, float]:
    """Each finished seed's final test accuracy (a fraction)."""
    return {s: float(r[-1]["accuracy"]) for s, r in per_seed.items() if r}


def seed_gaps_cell(ref: Mapping[int, float], finals: Mapping[int, float], seeds: Sequence[int]) -> str:
    """``ref`` minus ``finals`` seed by seed (fractions, as :func:`final_accuracies` gives them), in points with two
    decimals joined by " / ", over the seeds both have, in ``seeds``' order."""
    return " / ".join(f"{100 * (ref[s] - finals[s]):.2f}" for s in seeds if s in ref and s in finals)


def gap_cell(ref: float | None, finals: Sequence[float]) -> str:
    """``ref`` minus the mean of ``finals``, in points with two decimals ("" without a reference)."""
    return f"{100 * (ref - statistics.mean(finals)):.2f}" if ref is not None and finals else ""


def accuracy_columns(per_seed: SeedRounds, seeds: Sequence[int], ref: float | None, *, reference: bool = False
                     ) -> list[str]:
    """A configuration's accuracy columns in a table over seeds: each seed's final accuracy
    (:func:`seed_accuracies`), their mean ± sd, and the gap to ``ref`` (empty for the ``reference`` itself)."""
    cells, finals = seed_accuracies(per_seed, seeds)
    return [*cells, pct_mean_sd(finals), "" if reference else gap_cell(ref, finals)]
