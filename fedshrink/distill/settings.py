"""Settings of server-side distillation into a compact student."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.distill.pipeline import TEACHERS, DistillConfig
from fedshrink.settings import Section, at_least, between, one_of, option

NO_LIMIT = "0 = no limit"


@dataclass(frozen=True)
class DistillSettings(Section):
    title: ClassVar[str] = "distillation"

    distill: bool = option(True, "distil a student at the end of the run")
    distill_every: int = option(0, "also distil every k rounds (0 = only at the end)", rule=at_least(0))
    distill_teacher: str = option(
        "global", "`global` model, or `ensemble` of the last round's client models (FedDF; full-width runs only)",
        rule=one_of(TEACHERS))
    distill_temperature: float = option(4.0, "softmax temperature of the KD loss",
                                        rule=between(0, 100, lo_open=True))
    distill_alpha: float = option(0.0, "weight of the proxy's labels (0 = the proxy is used unlabeled)",
                                  rule=between(0, 1))
    distill_steps: int = option(2000, "distillation steps before pruning", rule=at_least(1))
    distill_finetune_steps: int = option(1000, "distillation steps after pruning", rule=at_least(0))
    student_max_gap: float = option(
        0.0, "points: > 0 picks the smallest student whose disagreement with the teacher on held-out proxy images "
             "is at most this; 0 = the best agreement inside the size limits", rule=between(0, 100, hi_open=True))
    student_max_params: int = option(7390, "the student's parameter budget", rule=at_least(0).noting(NO_LIMIT))
    student_max_macs: int = option(0, "the student's MAC budget", rule=at_least(0).noting(NO_LIMIT))
    student_max_bytes: int = option(7390, "the student's budget in bytes of the packed int8 sparse file",
                                    rule=at_least(0).noting(NO_LIMIT))
    student_max_latency_ms: float = option(0.0, "the student's latency budget on this machine's CPU (ms)",
                                           rule=at_least(0).noting(NO_LIMIT))
    distill_threads: int = option(1, "torch threads while distilling", rule=at_least(1))

    def config(self, *, seed: int) -> DistillConfig:
        """The distillation pipeline's config; the student's norm follows the teacher's (``search.student_norm``)."""
        return DistillConfig(
            enabled=self.distill, every_k_rounds=self.distill_every, teacher=self.distill_teacher,
            temperature=self.distill_temperature, alpha=self.distill_alpha, steps=self.distill_steps,
            finetune_steps=self.distill_finetune_steps, max_params=self.student_max_params,
            max_macs=self.student_max_macs, max_bytes=self.student_max_bytes,
            max_latency_ms=self.student_max_latency_ms, max_gap=self.student_max_gap, threads=self.distill_threads,
            seed=seed,
        )
