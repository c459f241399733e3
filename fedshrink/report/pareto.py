"""The student search's candidates (``pareto.json``): reading, the front, and the report's table.

``pareto.json`` is a JSON list, or an object ``{"candidates": [...]}``, of candidates as
:meth:`fedshrink.distill.search.CandidateRecord.row` writes them. What the report reads:

* ``params`` (required), ``name``, ``bytes`` (upper bound of the packed int8 file), ``macs``, ``latency_ms``,
  ``chosen``;
* ``in_budget`` / ``why_out``: a candidate over the budget (or not smaller than the teacher) is never trained, so
  it has no score; the table says why instead;
* ``rung0_agreement`` and ``rung0_steps``: top-1 agreement with the teacher on held-out proxy images after the
  first rung's short distillation (every trained candidate has it, after the same steps: the score plotted
  and the front's). Files without it give their ``accuracy`` key, which the search also filled with agreement;
* ``last_agreement``, ``steps``, ``rungs_reached``: the agreement after the last rung a candidate reached, and its
  total steps; finalists are the candidates that reached the last rung;
* ``test_accuracy``: a finalist's accuracy on the labelled test set after its search steps, where recorded
  (reporting only: the search never sees it).

None of these scores is the chosen student's final test accuracy (after full distillation, pruning and int8),
which ``summary.json`` holds under ``student``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshrink.errors import ConfigError
from fedshrink.report.console import human_bytes


def _fraction(key: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise ConfigError(f"pareto {key}", v, "a number in [0, 1] or absent")
    return float(v)


def _count(key: str, v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or v != int(v):
        raise ConfigError(f"pareto {key}", v, "an integer >= 0 or absent")
    return int(v)


@dataclass(frozen=True)
class ParetoPoint:
    """One student candidate; ``score`` is teacher agreement (not test accuracy), None when not trained."""

    params: int
    score: float | None
    name: str = ""
    bytes: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    chosen: bool = False
    score_steps: int | None = None  # distillation steps behind `score`
    in_budget: bool = True
    why_out: str = ""
    last_score: float | None = None  # agreement after the last rung it reached
    last_steps: int | None = None
    rungs_reached: int | None = None
    test_accuracy: float | None = None  # finalists, where recorded

    def __post_init__(self) -> None:
        if isinstance(self.params, bool) or not isinstance(self.params, int) or self.params < 0:
            raise ConfigError("pareto params", self.params, "an integer >= 0")
        _fraction("score", self.score)
        if self.bytes is not None and (not isinstance(self.bytes, int) or self.bytes < 0):
            raise ConfigError("pareto bytes", self.bytes, "an integer >= 0 or absent")

    @property
    def scored(self) -> bool:
        return self.in_budget and self.score is not None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ParetoPoint:
        if not isinstance(d, Mapping) or "params" not in d:
            raise ConfigError("pareto.json entry", d, "an object with at least 'params'")
        in_budget = bool(d.get("in_budget", True))
        first = "rung0_agreement" if "rung0_agreement" in d else "accuracy"
        if in_budget and d.get(first) is None:
            raise ConfigError("pareto.json entry", d, "a trained candidate with 'rung0_agreement' or 'accuracy'")
        steps = _count("steps", d.get("steps"))
        rung0_steps = _count("rung0_steps", d.get("rung0_steps"))
        if rung0_steps is None and d.get("rungs_reached") == 1:
            rung0_steps = steps
        return cls(
            params=_count("params", d["params"]) or 0,
            score=_fraction(first, d.get(first)) if in_budget else None,
            name=str(d.get("name", d.get("candidate", ""))),
            bytes=_count("bytes", d.get("bytes")),
            macs=_count("macs", d.get("macs")),
            latency_ms=None if d.get("latency_ms") is None else float(d["latency_ms"]),
            chosen=bool(d.get("chosen", False)),
            score_steps=rung0_steps if first == "rung0_agreement" else None,
            in_budget=in_budget,
            why_out=str(d.get("why_out", "")),
            last_score=_fraction("last_agreement", d.get("last_agreement")) if in_budget else None,
            last_steps=steps if in_budget else None,
            rungs_reached=_count("rungs_reached", d.get("rungs_reached")),
            test_accuracy=_fraction("test_accuracy", d.get("test_accuracy")),
        )

    def size(self, key: str) -> float:
        value = self.bytes if key == "bytes" else self.params
        return float(value if value is not None else self.params)


def read_pareto(path: Path) -> list[ParetoPoint]:
    """The candidates of a ``pareto.json`` (format in the module docstring)."""
    data = json.loads(Path(path).read_text())
    items = data.get("candidates") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise ConfigError("pareto.json", type(data).__name__, "a list of candidates or {'candidates': [...]}")
    return [ParetoPoint.from_json(d) for d in items]


def pareto_front(points: Sequence[ParetoPoint], size_key: str = "params") -> list[ParetoPoint]:
    """The non-dominated scored points (smaller size and higher score are better), by size ascending.

    A point is dominated when another is no larger and scores no less, and is strictly better in one of the two.
    Candidates without a score (over the budget) are not on it.
    """
    ordered = sorted((p for p in points if p.scored), key=lambda p: (p.size(size_key), -(p.score or 0.0)))
    front: list[ParetoPoint] = []
    best = -math.inf
    for p in ordered:
        assert p.score is not None
        if p.score > best:
            front.append(p)
            best = p.score
    return front


def size_key(points: Sequence[ParetoPoint]) -> str:
    return "bytes" if points and all(p.bytes is not None for p in points) else "params"


def score_label(points: Sequence[ParetoPoint]) -> str:
    """``"teacher agreement after 100 steps"`` when every score comes after the same steps."""
    steps = {p.score_steps for p in points if p.scored}
    if len(steps) == 1 and None not in steps:
        return f"teacher agreement after {steps.pop()} steps"
    return "teacher agreement (first rung)"


def _out_text(p: ParetoPoint) -> str:
    return f"over budget, not trained ({p.why_out})" if p.why_out else "over budget, not trained"


def pareto_rows(points: Sequence[ParetoPoint]) -> list[dict[str, str]]:
    """The report's table: one row per candidate by size, columns named for what they hold."""
    key = size_key(points)
    front = pareto_front(points, key)
    first = score_label(points)
    uniform = first != "teacher agreement (first rung)"
    last_rung = max((p.rungs_reached or 0 for p in points if p.scored), default=0)
    rows = []
    for p in sorted(points, key=lambda p: p.size(key)):
        if p.scored:
            assert p.score is not None
            score = f"{p.score:.4f}" + ("" if uniform or p.score_steps is None else f" ({p.score_steps} steps)")
            last = (f"{p.last_score:.4f} after {p.last_steps} steps" if p.last_score is not None
                    and p.last_steps is not None else "n/a")
        else:
            score, last = _out_text(p), "-"
        finalist = p.scored and p.rungs_reached == last_rung
        test = f"{p.test_accuracy:.4f}" if p.test_accuracy is not None else ("not recorded" if finalist else "-")
        rows.append({
            "candidate": p.name or "-", "params": f"{p.params:,}", "int8 bytes (bound)": human_bytes(p.bytes),
            "MACs": f"{p.macs:,}" if p.macs is not None else "n/a",
            "latency ms (fp32, batch 1)": f"{p.latency_ms:.3g}" if p.latency_ms is not None else "n/a",
            first: score, "teacher agreement at its last rung": last,
            "test accuracy after its search steps (finalists)": test,
            "front": "yes" if any(p is q for q in front) else "", "chosen": "**yes**" if p.chosen else "",
        })
    return rows
