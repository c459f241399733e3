"""Aggregation as an ordered list of stages over the round's :class:`~.batch.UpdateBatch`.

::

    new_flat, report = aggregate(global_flat, batch, stages, ctx)

The kinds of stage, applied in this order whatever order they are given in:

* :class:`Screen` drops whole replies, each with a reason (the norm guard);
* :class:`Transform` changes the batch (clip, select, reweight), in the order given;
* one :class:`Combiner` turns the batch into one update per coordinate; the
  default is :class:`HolderMean`, the sample-weighted mean over the clients
  that held each coordinate -- FedAvg, written once here;
* :class:`Perturb` changes the combined update (e.g. noise for privacy);
* :class:`ServerStep` scales it last: the server's step size (``server-lr``).

A combiner works on what was *sent*: it estimates, per coordinate, the
location of the values the holders sent (:meth:`Combiner.locate`, over
:meth:`UpdateBatch.over_sent`), and scales it by the weight share of holders
that sent it (:meth:`UpdateBatch.sent_share`). For the mean this is exactly
``sum_i w_i h_ij x_ij / sum_i w_i h_ij`` with unsent values counted as 0
(FedAvg of sparse updates); a coordinate-wise robust rule (median, trimmed
mean, Bulyan) votes only on values that were really sent, never on the
zeros of a sparse uplink, and its result is scaled the same way.

Coordinates nobody held keep their global value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedshrink.strategy.batch import BoolArray, FloatArray, Layout, UpdateBatch


@dataclass(frozen=True)
class RoundContext:
    """What a stage may read besides the batch: the round, the global model and its layout."""

    server_round: int
    global_state: Mapping[str, np.ndarray]
    layout: Layout

    def flatten(self, state: Mapping[str, np.ndarray]) -> FloatArray:
        return self.layout.flatten(state)


@dataclass
class StageReport:
    """What the stages did in one round: dropped replies (row, reason) and notes for the round's record."""

    dropped: list[tuple[int, str]] = field(default_factory=list)  # (client row in the input batch, reason)
    notes: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """One step of aggregation; see the module doc for the kinds."""

    name: ClassVar[str]


class Screen(Stage):
    """Drops replies before anything is combined."""

    @abstractmethod
    def screen(self, batch: UpdateBatch, ctx: RoundContext) -> dict[int, str]:
        """Rows to drop, each with its reason."""


class Transform(Stage):
    """Changes the batch (clip, select, reweight) before it is combined."""

    @abstractmethod
    def apply(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[UpdateBatch, dict[str, Any]]:
        """The new batch and notes for the round's record (JSON-ready; empty for none)."""


class Combiner(Stage):
    """Turns the batch into one update per coordinate (see the module doc)."""

    @abstractmethod
    def locate(self, sent: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        """``(location (D,), voted (D,))`` of the sent values (``sent.held`` marks them)."""

    def combine(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        location, _ = self.locate(batch.over_sent(), ctx)
        voted: BoolArray = np.asarray(batch.held.any(axis=0))
        delta: FloatArray = np.where(voted, location * batch.sent_share(), 0.0)
        return delta, voted


class Perturb(Stage):
    """Changes the combined update (after the combiner)."""

    @abstractmethod
    def perturb(self, delta: FloatArray, voted: BoolArray, batch: UpdateBatch, ctx: RoundContext
                ) -> tuple[FloatArray, dict[str, Any]]:
        """The new update and notes for the round's record."""


class ServerStep(Stage):
    """The server's step size: the combined update times ``lr`` (``server-lr``; 1 is FedAvg's step).

    Applied last, after any noise (scaling a private update is post-processing: the privacy account is
    unchanged). A step above 1 makes up for updates that move the model too little: sparse top-k values with
    the rest held back in the clients' residuals, stale updates of absent devices counted again.
    """

    name = "server-lr"

    def __init__(self, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"server step must be > 0, got {lr}")
        self.lr = lr

    def step(self, delta: FloatArray) -> FloatArray:
        return delta * self.lr


def holder_mean(batch: UpdateBatch) -> tuple[FloatArray, BoolArray]:
    """Per coordinate ``sum_i w_i h_ij x_ij / sum_i w_i h_ij`` over the holders; ``voted`` where any held.

    Accumulates in float64, one client row at a time (memory: a few vectors of
    the model's size, whatever the number of clients). This is FedAvg, and the
    only weighted mean of updates in fedshrink.
    """
    num = np.zeros(batch.dim, dtype=np.float64)
    den = np.zeros(batch.dim, dtype=np.float64)
    for w, values, held in zip(batch.weights, batch.values, batch.held, strict=True):
        num += w * values  # values are 0 where not held
        den += w * held
    voted = den > 0
    return np.divide(num, den, out=np.zeros(batch.dim), where=voted), voted


class HolderMean(Combiner):
    """The default combiner: the sample-weighted mean over holders (FedAvg)."""

    name = "mean"

    def locate(self, sent: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        return holder_mean(sent)

    def combine(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        # equal to the generic rule (location over senders x sent share), in one pass
        return holder_mean(batch)


def check_stages(stages: Sequence[Stage]) -> None:
    """At most one combiner and one server step; raise :class:`ValueError` naming them otherwise."""
    for kind, what in ((Combiner, "combining rule"), (ServerStep, "server step")):
        named = [s.name for s in stages if isinstance(s, kind)]
        if len(named) > 1:
            raise ValueError(f"at most one {what}, got {named}")


def aggregate(global_flat: FloatArray, batch: UpdateBatch, stages: Sequence[Stage], ctx: RoundContext
              ) -> tuple[FloatArray, StageReport]:
    """New global vector: screens, transforms, the combiner (default :class:`HolderMean`), perturbations, the
    server's step."""
    check_stages(stages)
    report = StageReport()
    rows = np.arange(len(batch))
    for screen in (s for s in stages if isinstance(s, Screen)):
        drops = screen.screen(batch, ctx)
        if drops:
            report.dropped += [(int(rows[r]), reason) for r, reason in sorted(drops.items())]
            keep = np.asarray([r for r in range(len(batch)) if r not in drops], dtype=np.int64)
            batch, rows = batch.take(keep), rows[keep]
    for transform in (s for s in stages if isinstance(s, Transform)):
        batch, note = transform.apply(batch, ctx)
        if note:
            report.notes[transform.name] = note
    combiner = next((s for s in stages if isinstance(s, Combiner)), HolderMean())
    if len(batch) == 0:
        return global_flat.copy(), report
    delta, voted = combiner.combine(batch, ctx)
    for perturb in (s for s in stages if isinstance(s, Perturb)):
        delta, note = perturb.perturb(delta, voted, batch, ctx)
        if note:
            report.notes[perturb.name] = note
    for server_step in (s for s in stages if isinstance(s, ServerStep)):
        delta = server_step.step(delta)
    return np.where(voted, global_flat + delta, global_flat), report
