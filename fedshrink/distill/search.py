"""Student search under a resource budget: candidates, figures, successive halving, Pareto front.

Search space: the registered model family (``mlp``: 3 layers, ``cnn``: 5, ``resnet``:
8 weight layers; the architecture is the depth axis) crossed with width multipliers,
given as ``"name:width"`` strings. For each candidate the static figures are
measured before any training: parameters, MACs (:mod:`.macs`), an upper bound on
the int8 packed bytes after pruning (:func:`.compress.packed_nbytes_bound`) and
fp32 CPU latency at batch 1 (:func:`.export.measure_latency_ms`). Candidates
outside the budget, or not smaller than the teacher, are never trained.

Every trained candidate distils for ``rungs[i]`` more steps at rung ``i`` on a transfer set (augmented
copies, labelled once by the teacher) of 1 - ``holdout`` of the proxy images, and is scored by its top-1
agreement with the teacher on the held-out proxy images: the server has no labels, so agreement with the
teacher stands in for accuracy, and a student that disagrees with the teacher on a share d of the inputs is
at most d below it in accuracy on them.

* **By agreement** (``max_gap`` = 0, the default): successive halving (Jamieson & Talwalkar 2016; Li et
  al. 2018, Hyperband) over the candidates inside the size limits, keeping the best ``ceil(n / eta)`` after
  each rung by agreement on the held-out images and augmented views of them; the last rung's best is picked.
* **By gap** (``max_gap`` > 0 points): a budget relative to the teacher. Candidates go smallest first
  (MACs, then parameters, then latency), each through every rung, and the first whose disagreement on the
  held-out images alone is at most ``max_gap`` points is picked. If none is, the one that agreed best is,
  and the reason says so. The size limits bound it from above. The estimate is only as fine as the held-out
  images are many: with digits' 36, one disagreement is 2.78 points, so a 1.5-point bound asks for none,
  which is why it is not the default (``simulations/results/student_agreement.md`` sets these agreements
  beside the gaps the students end with).

Ties go to fewer MACs (compute, so time and energy per inference on the device), then fewer parameters,
then lower latency.

Each candidate that reached the last rung can also be scored on a labelled test
set by the caller's ``report_accuracy``, after the search has picked: for the report only,
never to choose.

The Pareto front is over rung-0 scores (every trained candidate has one, after
the same number of steps, so they compare): a candidate is on it when no other
has a score >= and parameters <= and latency <= with one strictly better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedshrink.distill.compress import packed_nbytes_bound
from fedshrink.distill.export import measure_latency_ms
from fedshrink.distill.fold import deployed_spec, freeze_on
from fedshrink.distill.kd import AugmentConfig, KDSettings, TransferSet, augment, build_transfer_set, distill
from fedshrink.distill.macs import count_macs
from fedshrink.errors import ConfigError, DistillError
from fedshrink.models import MODELS, ModelSpec, build_model, count_parameters


@dataclass(frozen=True)
class Budget:
    """Limits a student must meet; 0 means no limit. Bytes = the packed int8 file (:mod:`.compress`)."""

    max_params: int = 0
    max_macs: int = 0
    max_bytes: int = 0
    max_latency_ms: float = 0.0  # fp32, batch 1, one thread, median

    def __post_init__(self) -> None:
        for key in ("max_params", "max_macs", "max_bytes"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"distill.{key}", v, "an integer >= 0 (0 = no limit)")
        v = self.max_latency_ms
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
            raise ConfigError("distill.max_latency_ms", v, "a finite number >= 0 (0 = no limit)")

    def violations(self, fig: Figures) -> list[str]:
        """Human-readable reasons ``fig`` breaks this budget (empty: it fits)."""
        out = []
        if self.max_params and fig.params > self.max_params:
            out.append(f"params {fig.params:,} > {self.max_params:,}")
        if self.max_macs and fig.macs > self.max_macs:
            out.append(f"MACs {fig.macs:,} > {self.max_macs:,}")
        if self.max_bytes and fig.bytes_bound > self.max_bytes:
            out.append(f"bytes {fig.bytes_bound:,} > {self.max_bytes:,}")
        if self.max_latency_ms and fig.latency_ms > self.max_latency_ms:
            out.append(f"latency {fig.latency_ms:.3f} ms > {self.max_latency_ms:g} ms")
        return out

    def describe(self) -> str:
        parts = [
            f"params <= {self.max_params:,}" if self.max_params else "",
            f"MACs <= {self.max_macs:,}" if self.max_macs else "",
            f"bytes <= {self.max_bytes:,}" if self.max_bytes else "",
            f"latency <= {self.max_latency_ms:g} ms" if self.max_latency_ms else "",
        ]
        return ", ".join(p for p in parts if p) or "no limits"


@dataclass(frozen=True)
class Figures:
    params: int
    macs: int  # per sample
    bytes_bound: int  # upper bound of the packed int8 file after pruning
    latency_ms: float  # fp32 torch, batch 1, one thread, median


def parse_candidate(text: str, key: str = "distill.candidates") -> tuple[str, float]:
    """``"cnn:0.25"`` -> ``("cnn", 0.25)``; raises :class:`ConfigError` on anything else."""
    name, sep, width = text.partition(":")
    try:
        w = float(width)
    except ValueError:
        w = -1.0
    if not sep or name not in MODELS or not 0 < w <= 4:
        raise ConfigError(key, text, "'<model>:<width>' with model in "
                          + ", ".join(sorted(MODELS)) + " and width in (0, 4]")
    return name, w


def student_norm(teacher: ModelSpec, norm: str = "") -> str:
    """The student's norm while it trains: ``norm`` when given, else the teacher's. A static-BatchNorm student
    is frozen and folded into its layers before it is exported (:mod:`.fold`), so the edge runs no norm at all."""
    return norm or teacher.norm


def candidate_spec(text: str, base: ModelSpec, norm: str = "") -> ModelSpec:
    name, width = parse_candidate(text)
    return ModelSpec(name, base.input_shape, base.num_classes, width, student_norm(base, norm))


def measure_figures(spec: ModelSpec, prune_amount: float, *, repeats: int = 20) -> Figures:
    """The figures of what a student of ``spec`` is on the edge (static BatchNorm folded away)."""
    spec = deployed_spec(spec)
    torch.manual_seed(0)
    model = build_model(spec)
    return Figures(
        params=count_parameters(model),
        macs=count_macs(model, spec.input_shape),
        bytes_bound=packed_nbytes_bound(spec, prune_amount),
        latency_ms=measure_latency_ms(model, spec.input_shape, 1, repeats=repeats),
    )


def trained_params(spec: ModelSpec) -> int:
    """Parameters of a student of ``spec`` as it trains (before any norm is folded away): what must be fewer than
    the teacher's, whose own norm could be folded as well."""
    return count_parameters(build_model(spec))


@dataclass
class CandidateRecord:
    """One candidate's figures and fate in the search (written to pareto.json / .csv)."""

    name: str  # "cnn:0.25"
    spec: ModelSpec
    figures: Figures
    violations: list[str]
    larger_than_teacher: bool = False
    scores: list[float] = field(default_factory=list)  # agreement after each rung it reached
    held_out: float | None = None  # agreement on the held-out images alone (no views) after its last rung
    rung_steps: list[int] = field(default_factory=list)  # total steps behind each of `scores`
    steps: int = 0  # total distillation steps it received
    test_accuracy: float | None = None  # finalists, when the caller reports one (never used to choose)
    on_front: bool = False
    picked: bool = False

    @property
    def in_budget(self) -> bool:
        return not self.violations and not self.larger_than_teacher

    def row(self) -> dict[str, Any]:
        return {
            "candidate": self.name,
            "model": self.spec.name,
            "width": self.spec.width,
            "norm": self.spec.norm,
            **asdict(self.figures),
            "in_budget": self.in_budget,
            "why_out": "; ".join(self.violations + (["not smaller than the teacher"]
                                                    if self.larger_than_teacher else [])),
            "rung0_agreement": self.scores[0] if self.scores else None,
            "rung0_steps": self.rung_steps[0] if self.rung_steps else None,
            "last_agreement": self.scores[-1] if self.scores else None,
            "rungs_reached": len(self.scores),
            "held_out_agreement": self.held_out,
            "steps": self.steps,
            "on_front": self.on_front,
            "picked": self.picked,
            "test_accuracy": self.test_accuracy,  # finalists only, after their search steps; reporting only
            # the keys fedshrink.report reads from pareto.json (its plot and table)
            "name": self.name,
            "accuracy": self.scores[-1] if self.scores else None,  # teacher agreement on held-out proxy images
            "bytes": self.figures.bytes_bound,
            "chosen": self.picked,
        }


@dataclass(frozen=True)
class SearchSettings:
    rungs: tuple[int, ...] = (100, 300)  # extra distillation steps per rung
    eta: int = 3  # keep ceil(n / eta) after each rung
    holdout: float = 0.2  # share of proxy images held out for scoring
    views: int = 4  # augmented views per held-out image, beside the image itself
    max_gap: float = 0.0  # points; > 0: the smallest student whose held-out disagreement is at most this; 0: race

    def __post_init__(self) -> None:
        if not self.rungs or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.rungs):
            raise ConfigError("distill.search_rungs", self.rungs, "a non-empty list of integers >= 1")
        if isinstance(self.eta, bool) or not isinstance(self.eta, int) or self.eta < 2:
            raise ConfigError("distill.search_eta", self.eta, "an integer >= 2")
        if not 0 <= self.holdout < 1:
            raise ConfigError("distill.search_holdout", self.holdout, "a number in [0, 1)")
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 0:
            raise ConfigError("distill.search_views", self.views, "an integer >= 0")
        if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, int | float) or not 0 <= self.max_gap < 100:
            raise ConfigError("distill.max_gap", self.max_gap, "a number of points in [0, 100) (0 = race by agreement)")


@dataclass
class SearchResult:
    records: list[CandidateRecord]
    picked: CandidateRecord
    reason: str

    def front(self) -> list[CandidateRecord]:
        return [r for r in self.records if r.on_front]


def pareto_mask(points: Sequence[tuple[float, float, float]]) -> list[bool]:
    """``points`` as (score to maximise, cost1, cost2 to minimise); True where not dominated."""
    out = []
    for i, (s, a, b) in enumerate(points):
        dominated = any(
            s2 >= s and a2 <= a and b2 <= b and (s2 > s or a2 < a or b2 < b)
            for j, (s2, a2, b2) in enumerate(points) if j != i
        )
        out.append(not dominated)
    return out


def split_holdout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out) of ``n`` proxy images; with too few images both are everything."""
    k = int(round(n * holdout))
    if k < 1 or n - k < 1:
        idx = np.arange(n)
        return idx, idx
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def scoring_set(x: torch.Tensor, views: int, aug: AugmentConfig, seed: int) -> torch.Tensor:
    """Held-out images plus ``views`` augmented (no mixup) views of each: ``((1 + views) N, C, H, W)``."""
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    plain = AugmentConfig(aug.max_shift, aug.max_rotate_deg, aug.max_scale, aug.noise_std, 0.0, aug.mixup_alpha)
    return torch.cat([x] + [augment(x, plain, gen, rng)[0] for _ in range(views)])


@torch.no_grad()
def _agreement(student: nn.Module, teacher_pred: torch.Tensor, x: torch.Tensor, stats_x: torch.Tensor) -> torch.Tensor:
    """Per prediction on ``x``, 1.0 where the student's top-1 equals the teacher's; static BatchNorm uses the
    statistics of ``stats_x``, as the exported student will."""
    scored = freeze_on(student, stats_x)
    agree: torch.Tensor = (scored(x).argmax(1) == teacher_pred).float()
    return agree


def search_student(
    teacher: nn.Module,
    teacher_spec: ModelSpec,
    proxy_x: torch.Tensor,
    *,
    candidates: Sequence[str],
    budget: Budget,
    search: SearchSettings,
    kd: KDSettings,
    aug: AugmentConfig,
    transfer_size: int,
    prune_amount: float,
    norm: str = "",
    seed: int = 0,
    latency_repeats: int = 20,
    report_accuracy: Callable[[nn.Module], float] | None = None,
) -> SearchResult:
    """Measure, filter and race ``candidates``; return every record and the pick with its reason.

    ``report_accuracy``, when given, scores each finalist's model after the pick (its ``test_accuracy``).
    """
    if len(proxy_x) == 0:
        raise DistillError("the proxy set is empty: there is nothing to distill on")
    if not candidates:
        raise ConfigError("distill.candidates", list(candidates), "at least one '<model>:<width>'")
    teacher_params = count_parameters(teacher)
    records = []
    for text in dict.fromkeys(candidates):  # de-duplicated, order kept
        spec = candidate_spec(text, teacher_spec, norm)
        fig = measure_figures(spec, prune_amount, repeats=latency_repeats)
        records.append(CandidateRecord(text, spec, fig, budget.violations(fig),
                                       larger_than_teacher=trained_params(spec) >= teacher_params))
    feasible = [r for r in records if r.in_budget]
    if not feasible:
        smaller = [r for r in records if not r.larger_than_teacher]
        if not smaller:
            raise DistillError(
                f"every candidate has >= the teacher's {teacher_params:,} parameters; a student must be smaller")
        s = min(smaller, key=lambda r: (r.figures.params, r.figures.macs))
        f = s.figures
        raise DistillError(
            f"no candidate fits the budget ({budget.describe()}); the smallest, {s.name}, has "
            f"{f.params:,} params, {f.macs:,} MACs, {f.bytes_bound:,} bytes, {f.latency_ms:.3f} ms "
            f"({'; '.join(s.violations)})"
        )

    train_idx, held_idx = split_holdout(len(proxy_x), search.holdout, seed)
    transfer = build_transfer_set(proxy_x[torch.from_numpy(train_idx)], teacher, transfer_size, aug, seed=seed)
    x_score = scoring_set(proxy_x[torch.from_numpy(held_idx)], search.views, aug, seed + 1)
    teacher.eval()
    with torch.no_grad():
        teacher_pred = teacher(x_score).argmax(1)  # (M,)

    race = _Race(teacher_pred, x_score, len(held_idx), transfer, kd, search, seed)
    if search.max_gap > 0:
        trained, best, reason = _smallest_within_gap(race, feasible, search.max_gap)
    else:
        trained, best, reason = _best_agreement(race, feasible, search.eta)
    best.picked = True
    if report_accuracy is not None:
        for r in trained:
            r.test_accuracy = report_accuracy(freeze_on(race.students[r.name], transfer.x))
    scored = [r for r in feasible if r.scores]
    for r, on in zip(scored, pareto_mask([(r.scores[0], r.figures.params, r.figures.latency_ms) for r in scored]),
                     strict=True):
        r.on_front = on
    f = best.figures
    reason += (
        f"; it has {f.params:,} params, {f.macs:,} MACs, <= {f.bytes_bound:,} bytes, {f.latency_ms:.3f} ms at batch 1"
        + (f"; {len(records) - len(feasible)} candidate(s) excluded by the budget ({budget.describe()}) or teacher "
           "size" if len(records) > len(feasible) else "")
    )
    return SearchResult(records=records, picked=best, reason=reason)


@dataclass
class _Race:
    """What training and scoring a candidate needs: the teacher's predictions on the scoring set (the held-out
    images first, then their views), the transfer set, the distillation settings, and the students so far."""

    teacher_pred: torch.Tensor
    x_score: torch.Tensor
    n_held: int
    transfer: TransferSet
    kd: KDSettings
    search: SearchSettings
    seed: int
    students: dict[str, nn.Module] = field(default_factory=dict)

    def rung(self, r: CandidateRecord, rung: int) -> None:
        """Train ``r`` through rung ``rung`` and score it (with views, and on the held-out images alone)."""
        if r.name not in self.students:
            torch.manual_seed(self.seed)
            self.students[r.name] = build_model(r.spec)
        steps = self.search.rungs[rung]
        distill(self.students[r.name], self.transfer, _with_steps(self.kd, steps), seed=self.seed + 97 * rung)
        r.steps += steps
        agree = _agreement(self.students[r.name], self.teacher_pred, self.x_score, self.transfer.x)
        r.scores.append(float(agree.mean()))
        r.held_out = float(agree[: self.n_held].mean())
        r.rung_steps.append(r.steps)


def _smallest_within_gap(race: _Race, feasible: list[CandidateRecord],
                         max_gap: float) -> tuple[list[CandidateRecord], CandidateRecord, str]:
    """Smallest first (MACs, then params, then latency), each through every rung, until one's held-out
    disagreement with the teacher is at most ``max_gap`` points; else the best held-out agreement."""
    n = race.n_held
    trained: list[CandidateRecord] = []
    for r in sorted(feasible, key=lambda r: (r.figures.macs, r.figures.params, r.figures.latency_ms)):
        for rung in range(len(race.search.rungs)):
            race.rung(r, rung)
        trained.append(r)
        assert r.held_out is not None
        if 100 * (1 - r.held_out) <= max_gap + 1e-9:
            smaller = ", ".join(f"{s.name} {s.held_out:.3f}" for s in trained[:-1])
            return trained, r, (
                f"{r.name}: the smallest (by MACs) whose agreement with the teacher on the {n} held-out proxy images, "
                f"{r.held_out:.3f} after {r.steps} steps, keeps the estimated gap within {max_gap:g} points (one "
                f"disagreement is {100 / n:.2f} points)"
                + (f"; smaller ones agreed less: {smaller}" if smaller else ""))
    best = max(trained, key=lambda r: (r.held_out or 0.0, r.scores[-1], -r.figures.macs, -r.figures.params))
    return trained, best, (
        f"{best.name}: no candidate agreed with the teacher on the {n} held-out proxy images closely enough to keep "
        f"the estimated gap within {max_gap:g} points; this one agreed best ({best.held_out:.3f} after {best.steps} "
        f"steps, an estimated gap of {100 * (1 - (best.held_out or 0.0)):.2f} points)")


def _best_agreement(race: _Race, feasible: list[CandidateRecord],
                    eta: int) -> tuple[list[CandidateRecord], CandidateRecord, str]:
    """Successive halving over every candidate by agreement (with views); the last rung's best wins."""
    alive = list(feasible)
    for rung in range(len(race.search.rungs)):
        for r in alive:
            race.rung(r, rung)
        alive.sort(key=lambda r: (-r.scores[-1], r.figures.macs, r.figures.params, r.figures.latency_ms))
        if rung < len(race.search.rungs) - 1:
            alive = alive[: max(1, math.ceil(len(alive) / eta))]
    best = alive[0]
    runner_up = alive[1] if len(alive) > 1 else None
    return alive, best, (
        f"{best.name}: best held-out teacher agreement {best.scores[-1]:.3f} after {best.steps} steps "
        f"among {len(alive)} finalist(s) of {len(feasible)} candidate(s) inside the budget"
        + (f"; runner-up {runner_up.name} scored {runner_up.scores[-1]:.3f}" if runner_up else ""))


def _with_steps(kd: KDSettings, steps: int) -> KDSettings:
    return KDSettings(steps, kd.batch_size, kd.learning_rate, kd.weight_decay, kd.temperature, kd.alpha)

