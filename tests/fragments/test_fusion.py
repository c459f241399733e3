"""Nested initialisation and server-side fusion: what they touch, what they leave alone, what they compute."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fragment_helpers import MODEL_NAMES, SHAPE, model_spec, numpy_state, seeded_model

from fedshrink.errors import ConfigError
from fedshrink.fragments import build_graph, extract, make_policy
from fedshrink.fragments.fusion import (
    Fusion,
    FusionConfig,
    confidence_scale,
    fuse,
    inner_spec,
    nested_init,
    outer_masks,
)
from fedshrink.fragments.scaler import build_sub_model


def _x(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))  # (N, C, H, W)


def _sub(name: str, state: dict, graph, width: float) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    sub = build_sub_model(model_spec(name, "batch"), width, scaled=False)
    spec = make_policy("static").spec_for(graph, width, 0, 0)
    sub.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in extract(state, graph, spec).items()})
    return sub.train()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_nested_init_makes_the_full_model_compute_its_inner_sub_model(name: str) -> None:
    full = seeded_model(name, "batch")
    graph = build_graph(full)
    state = numpy_state(full)
    inner = inner_spec(graph, [0.5, 1.0])
    assert inner is not None
    grown = nested_init(state, graph, inner)
    full.load_state_dict({k: torch.from_numpy(v) for k, v in grown.items()})
    x = _x()
    with torch.no_grad():
        np.testing.assert_allclose(full.train()(x).numpy(), _sub(name, state, graph, 0.5)(x).numpy(),
                                   rtol=1e-4, atol=1e-5)
    for key, v in extract(grown, graph, inner).items():  # the inner sub-model itself is untouched
        np.testing.assert_array_equal(v, extract(state, graph, inner)[key])
    assert any(not np.array_equal(grown[k], state[k]) for k in state)  # and something outside it was zeroed
    assert all(np.array_equal(v, numpy_state(seeded_model(name, "batch"))[k]) for k, v in state.items())  # copy


def test_no_inner_sub_model_without_a_narrow_width() -> None:
    graph = build_graph(seeded_model("cnn"))
    assert inner_spec(graph, [1.0]) is None and inner_spec(graph, []) is None
    assert inner_spec(graph, [0.25, 0.5, 1.0]) == make_policy("static").spec_for(graph, 0.5, 0, 0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_outer_masks_are_the_complement_of_the_fragment(name: str) -> None:
    graph = build_graph(seeded_model(name))
    inner = make_policy("static").spec_for(graph, 0.5, 0, 0)
    masks = outer_masks(graph, inner)
    state = numpy_state(seeded_model(name))
    for key, sub in extract(state, graph, inner).items():
        assert masks[key].shape == state[key].shape
        assert int((~masks[key]).sum()) == sub.size


def _fused(name: str, seed: int, teacher: str):  # type: ignore[no-untyped-def]
    """A seeded model and its fusion (15 steps, T = 2) over widths 0.25 / 0.5 / 1, checked to leave every inner
    coordinate bit-identical and to move some outer one: ``(model, graph, state, x, config, fused)``."""
    full = seeded_model(name, "batch", seed=seed)
    graph, state, x = build_graph(full), numpy_state(full), _x(16)
    cfg = FusionConfig(steps=15, temperature=2.0, lr=0.01, teacher=teacher)
    fused = fuse(state, graph, model_spec(name, "batch"), [0.25, 0.5, 1.0], x, cfg)
    inner = inner_spec(graph, [0.25, 0.5])
    assert inner is not None
    masks = outer_masks(graph, inner)
    moved = False
    for key, v in fused.items():
        np.testing.assert_array_equal(v[~masks[key]], state[key][~masks[key]])  # inner: bit-identical
        moved |= not np.array_equal(v[masks[key]], state[key][masks[key]])
    assert moved
    return full, graph, state, x, cfg, fused


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fusion_moves_only_outer_coordinates_toward_the_sub_model_ensemble(name: str) -> None:
    full, graph, state, x, cfg, fused = _fused(name, 1, "sub-models")

    def kl(s: dict) -> float:  # type: ignore[type-arg]
        with torch.no_grad():
            teacher = torch.stack([F.softmax(_sub(name, s, graph, w)(x) / 2.0, dim=1) for w in (0.25, 0.5)]).mean(0)
            full.load_state_dict({k: torch.from_numpy(v) for k, v in s.items()})
            return float(F.kl_div(F.log_softmax(full.train()(x) / 2.0, dim=1), teacher, reduction="batchmean"))

    assert kl(fused) < kl(state)  # same teacher (inner unchanged), closer student
    again = fuse(state, graph, model_spec(name, "batch"), [0.25, 0.5, 1.0], x, cfg)
    assert all(np.array_equal(again[k], fused[k]) for k in fused)  # deterministic


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_self_teacher_adds_the_full_model_to_the_ensemble(name: str) -> None:
    full, graph, state, x, _, fused = _fused(name, 2, "self")

    def kl(s: dict, teacher: torch.Tensor) -> float:  # type: ignore[type-arg]
        full.load_state_dict({k: torch.from_numpy(v) for k, v in s.items()})
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(full.train()(x) / 2.0, dim=1), teacher, reduction="batchmean"))

    with torch.no_grad():
        subs = [F.softmax(_sub(name, state, graph, w)(x) / 2.0, dim=1) for w in (0.25, 0.5)]
        full.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        own = F.softmax(full.train()(x) / 2.0, dim=1)
    with_full = torch.stack([*subs, own]).mean(0)
    assert kl(fused, with_full) < kl(state, with_full)  # closer to the teacher with the full model in it
    others = fuse(state, graph, model_spec(name, "batch"), [0.25, 0.5, 1.0], x,
                  FusionConfig(steps=15, temperature=2.0, lr=0.01))
    assert any(not np.array_equal(others[k], fused[k]) for k in fused)  # a different teacher, a different model
    # the full model's own vote pulls the self-taught model less far from where it started
    assert kl(fused, own) < kl(others, own)


@pytest.mark.parametrize("last_rounds, rounds, fused_rounds", [(0, 4, {1, 2, 3, 4}), (1, 4, {4}), (2, 4, {3, 4}),
                                                               (9, 4, {1, 2, 3, 4})])
def test_fusion_runs_only_in_the_last_rounds_asked(last_rounds: int, rounds: int, fused_rounds: set[int]) -> None:
    full = seeded_model("cnn", "batch", seed=3)
    graph, state = build_graph(full), numpy_state(full)
    refiner = Fusion(graph, model_spec("cnn", "batch"), _x(8), FusionConfig(steps=2, lr=0.01, last_rounds=last_rounds),
                     rounds=rounds)
    for rnd in range(1, rounds + 1):
        out = refiner.refine(rnd, state, [0.5, 1.0])
        changed = any(not np.array_equal(out[k], state[k]) for k in state)
        assert changed == (rnd in fused_rounds), rnd


def _entropy(logits: torch.Tensor) -> float:
    p = F.softmax(logits.double(), dim=1)
    return float(-(p * p.log()).sum(dim=1).mean())


def test_confidence_scale_finds_the_factor_of_a_target_entropy() -> None:
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(5)) * 3
    for factor in (0.3, 1.0, 2.0, 7.5):
        assert confidence_scale(logits, _entropy(logits * factor)) == pytest.approx(factor, rel=1e-6)
    assert confidence_scale(logits, 0.0) == 1e2 and confidence_scale(logits, 10.0) == 1e-2  # out of reach: clamped


def test_the_final_fused_model_keeps_its_predictions_and_the_unfused_confidence() -> None:
    full = seeded_model("cnn", "batch", seed=4)
    graph, state, x, spec = build_graph(full), numpy_state(full), _x(24), model_spec("cnn", "batch")
    for key in ("head.3.weight", "head.3.bias"):  # a confident model, as a trained one is (an untrained one is not)
        state[key] = state[key] * 30
    cfg = FusionConfig(steps=10, lr=0.01, teacher="self", last_rounds=0)
    refiner = Fusion(graph, spec, x, cfg, rounds=3)

    def logits(s: dict) -> torch.Tensor:  # type: ignore[type-arg]
        full.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in s.items()})
        with torch.no_grad():
            return full.train()(x)

    plain = fuse(state, graph, spec, [0.5, 1.0], x, cfg, seed=3)  # what round 3 fuses, before calibration
    final = refiner.refine(3, state, [0.5, 1.0])
    assert torch.equal(logits(final).argmax(1), logits(plain).argmax(1))  # no prediction changes
    assert _entropy(logits(final)) == pytest.approx(_entropy(logits(state)), rel=1e-5)  # the unfused confidence
    assert _entropy(logits(plain)) != pytest.approx(_entropy(logits(state)), rel=1e-3)  # which fusion had moved
    changed = [k for k in state if not np.array_equal(final[k], plain[k])]
    assert changed == ["head.3.weight", "head.3.bias"]  # only the output layer is rescaled
    earlier = refiner.refine(2, state, [0.5, 1.0])  # not the final round: fused, not calibrated
    assert all(np.array_equal(earlier[k], fuse(state, graph, spec, [0.5, 1.0], x, cfg, seed=2)[k]) for k in state)


def test_fusion_without_a_narrow_width_or_inputs_is_a_no_op() -> None:
    full = seeded_model("cnn", "batch")
    graph, state = build_graph(full), numpy_state(full)
    for widths, x in (([1.0], _x()), ([0.5, 1.0], _x()[:0])):
        out = fuse(state, graph, model_spec("cnn", "batch"), widths, x, FusionConfig(steps=3))
        assert all(np.array_equal(out[k], state[k]) for k in state)


@pytest.mark.parametrize("cfg", [FusionConfig(), FusionConfig(steps=5, temperature=1.5, lr=0.1),
                                 FusionConfig(teacher="self", last_rounds=1)])
def test_fusion_config_json_round_trip(cfg: FusionConfig) -> None:
    assert FusionConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["steps"] == cfg.steps


@pytest.mark.parametrize("kwargs, key", [
    ({"steps": 0}, "fusion-steps"), ({"steps": True}, "fusion-steps"), ({"temperature": 0.0}, "fusion-temperature"),
    ({"temperature": float("nan")}, "fusion-temperature"), ({"lr": 2.0}, "fusion-lr"),
    ({"teacher": "ensemble"}, "fusion-teacher"), ({"last_rounds": -1}, "fusion-last-rounds"),
    ({"last_rounds": True}, "fusion-last-rounds"),
])
def test_fusion_config_names_the_bad_setting(kwargs: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        FusionConfig(**kwargs)
    assert err.value.key == key
