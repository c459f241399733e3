from __future__ import annotations

import pytest
import torch

from fedshrink.distill.kd import AugmentConfig, KDSettings
from fedshrink.distill.search import Budget, Figures, SearchSettings, pareto_mask, parse_candidate, search_student
from fedshrink.errors import ConfigError, DistillError
from fedshrink.models import ModelSpec

TINY = {"search": SearchSettings(rungs=(3, 3), eta=2, holdout=0.25, views=1), "kd": KDSettings(batch_size=16),
        "aug": AugmentConfig(), "transfer_size": 64, "prune_amount": 0.5, "latency_repeats": 2}


def test_pareto_mask() -> None:
    pts = [(0.9, 100, 1.0), (0.8, 50, 1.0), (0.85, 100, 1.0), (0.9, 100, 1.0), (0.7, 60, 2.0)]
    assert pareto_mask(pts) == [True, True, False, True, False]


def test_budget_violations_and_validation() -> None:
    fig = Figures(params=100, macs=1000, bytes_bound=90, latency_ms=0.5)
    assert Budget().violations(fig) == []
    v = Budget(max_params=50, max_macs=2000, max_bytes=80, max_latency_ms=0.1).violations(fig)
    assert [s.split()[0] for s in v] == ["params", "bytes", "latency"]
    with pytest.raises(ConfigError, match="max_params"):
        Budget(max_params=-1)


@pytest.mark.parametrize("bad", ["cnn", "nope:0.5", "cnn:0", "cnn:x"])
def test_bad_candidate(bad: str) -> None:
    with pytest.raises(ConfigError, match="candidates"):
        parse_candidate(bad)


def test_search_picks_inside_budget(teacher: torch.nn.Module, teacher_spec: ModelSpec) -> None:
    x = torch.rand(16, 1, 8, 8)
    res = search_student(teacher, teacher_spec, x, candidates=["mlp:0.1", "mlp:0.2", "cnn:0.125", "cnn:2.0"],
                         budget=Budget(max_params=4000), **TINY)  # type: ignore[arg-type]
    rows = {r.name: r for r in res.records}
    assert not rows["mlp:0.2"].in_budget and rows["cnn:2.0"].larger_than_teacher
    assert res.picked.name in {"mlp:0.1", "cnn:0.125"} and res.picked.in_budget
    assert res.picked.steps == 6 and res.picked.name in res.reason
    assert any(r.on_front for r in res.records)


def test_no_candidate_fits_names_smallest(teacher: torch.nn.Module, teacher_spec: ModelSpec) -> None:
    with pytest.raises(DistillError, match=r"smallest, mlp:0.1, has 2,181 params"):
        search_student(teacher, teacher_spec, torch.rand(8, 1, 8, 8), candidates=["cnn:0.25", "mlp:0.1"],
                       budget=Budget(max_params=100), **TINY)  # type: ignore[arg-type]


def test_all_larger_than_teacher_refused(teacher: torch.nn.Module, teacher_spec: ModelSpec) -> None:
    with pytest.raises(DistillError, match="smaller"):
        search_student(teacher, teacher_spec, torch.rand(8, 1, 8, 8), candidates=["cnn:1.0"],
                       budget=Budget(), **TINY)  # type: ignore[arg-type]


def test_empty_proxy_refused(teacher: torch.nn.Module, teacher_spec: ModelSpec) -> None:
    with pytest.raises(DistillError, match="empty"):
        search_student(teacher, teacher_spec, torch.rand(0, 1, 8, 8), candidates=["mlp:0.1"],
                       budget=Budget(), **TINY)  # type: ignore[arg-type]


class _Constant(torch.nn.Module):
    """A teacher that says class 3 whatever it sees: every student can agree with it completely."""

    def __init__(self) -> None:
        super().__init__()
        self.size = torch.nn.Parameter(torch.zeros(100_000))  # as large as a teacher, so the students are smaller

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10)
        logits[:, 3] = 5.0
        return logits


def test_by_gap_the_smallest_candidate_that_agrees_is_picked_and_larger_ones_are_not_trained(
        teacher_spec: ModelSpec) -> None:
    settings = {**TINY, "search": SearchSettings(rungs=(20, 20), holdout=0.25, views=1, max_gap=1.5)}
    res = search_student(_Constant(), teacher_spec, torch.rand(16, 1, 8, 8),
                         candidates=["cnn:0.25", "mlp:0.1", "cnn:0.125"], budget=Budget(), **settings)  # type: ignore[arg-type]
    rows = {r.name: r for r in res.records}
    assert res.picked.name == "mlp:0.1"  # fewest MACs, and it agrees on every held-out image
    assert rows["mlp:0.1"].held_out == 1.0 and rows["mlp:0.1"].steps == 40
    assert rows["cnn:0.125"].steps == 0 and rows["cnn:0.25"].steps == 0 and not rows["cnn:0.25"].scores
    assert "the smallest (by MACs)" in res.reason and "one disagreement is 25.00 points" in res.reason


def test_by_gap_without_a_candidate_close_enough_the_best_agreement_is_picked_and_said(
        teacher: torch.nn.Module, teacher_spec: ModelSpec) -> None:
    # a random teacher on random images: three steps of distillation cannot match it on 12 held-out images
    settings = {**TINY, "search": SearchSettings(rungs=(3,), holdout=0.25, views=0, max_gap=1.5)}
    res = search_student(teacher, teacher_spec, torch.rand(48, 1, 8, 8), candidates=["mlp:0.1", "cnn:0.125"],
                         budget=Budget(), **settings)  # type: ignore[arg-type]
    trained = [r for r in res.records if r.steps]
    assert len(trained) == 2 and all(r.held_out is not None and r.held_out < 1.0 for r in trained)
    assert res.picked.held_out == max(r.held_out for r in trained if r.held_out is not None)
    assert "no candidate agreed with the teacher" in res.reason


def test_with_no_gap_the_candidates_race_by_agreement(teacher: torch.nn.Module, teacher_spec: ModelSpec) -> None:
    settings = {**TINY, "search": SearchSettings(rungs=(3, 3), eta=2, holdout=0.25, views=1, max_gap=0)}
    res = search_student(teacher, teacher_spec, torch.rand(16, 1, 8, 8), candidates=["mlp:0.1", "cnn:0.125"],
                         budget=Budget(), **settings)  # type: ignore[arg-type]
    assert sorted(r.steps for r in res.records) == [3, 6]  # halving: only one reaches the second rung
    assert res.picked.steps == 6 and "best held-out teacher agreement" in res.reason


@pytest.mark.parametrize("bad", [-0.5, 100, True, "1"])
def test_a_bad_gap_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_gap"):
        SearchSettings(max_gap=bad)  # type: ignore[arg-type]
