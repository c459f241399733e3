from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedshrink.data import LabelledArrays
from fedshrink.distill import DistillConfig, distill_and_export
from fedshrink.distill.compress import unpack_int8
from fedshrink.errors import ConfigError, DistillError
from fedshrink.models import ModelSpec

TINY = {"steps": 20, "finetune_steps": 10, "transfer_size": 64, "batch_size": 16, "search_rungs": (3, 3),
        "search_views": 1, "latency_repeats": 2, "candidates": ("mlp:0.1", "cnn:0.125"), "max_params": 0,
        "max_bytes": 0}


def test_config_json_roundtrip() -> None:
    cfg = DistillConfig(temperature=2.5, candidates=("cnn:0.25",), search_rungs=(5, 10), max_latency_ms=1.5)
    assert DistillConfig.from_json(cfg.to_json()) == cfg
    assert DistillConfig.from_json(DistillConfig().to_json()) == DistillConfig()


@pytest.mark.parametrize(("key", "value"), [("temperature", 0.0), ("alpha", 1.5), ("prune_amount", 1.0),
                                            ("teacher", "oracle"), ("max_bytes", -1), ("search_eta", 1),
                                            ("student", "cnn"), ("steps", -1), ("transfer_size", 0)])
def test_config_rejects(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        DistillConfig(**{key: value})  # type: ignore[arg-type]


def test_config_rejects_unknown_key() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        DistillConfig.from_dict({"bogus": 1})


def test_end_to_end_tiny(teacher: torch.nn.Module, teacher_spec: ModelSpec, proxy_x: np.ndarray,
                         test_set: LabelledArrays, tmp_path: Path) -> None:
    rep = distill_and_export(teacher, teacher_spec, proxy_x, test_set, DistillConfig(**TINY), tmp_path)  # type: ignore[arg-type]
    for name in ("student.onnx", "student_state.pt", "student_int8.fsq", "model_card.json", "pareto.json",
                 "pareto.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    card = json.loads((tmp_path / "model_card.json").read_text())
    s, t = card["student"], card["teacher"]
    assert s["onnx_max_abs_diff"] <= 1e-4
    assert s["bytes_int8_file"] == (tmp_path / "student_int8.fsq").stat().st_size
    assert 0 <= s["test_accuracy_int8"] <= 1 and s["params"] < t["params"]
    for key in ("params", "macs", "latency_ms_batch1", "latency_ms_batch64", "test_accuracy"):
        assert key in s or key + "_fp32" in s
        assert key in t
    assert rep.student_spec.name in {"mlp", "cnn"}
    assert len(json.loads((tmp_path / "pareto.json").read_text())["candidates"]) == 2
    q = unpack_int8((tmp_path / "student_int8.fsq").read_bytes())
    with torch.no_grad():
        acc = float((q(torch.from_numpy(test_set.x)).argmax(1).numpy() == test_set.y).mean())
    assert acc == pytest.approx(s["test_accuracy_int8"])


def test_ensemble_teacher_and_fixed_student(teacher: torch.nn.Module, teacher_spec: ModelSpec,
                                            proxy_x: np.ndarray, test_set: LabelledArrays, tmp_path: Path) -> None:
    cfg = DistillConfig(**{**TINY, "student": "mlp:0.1", "teacher": "ensemble"})  # type: ignore[arg-type]
    rep = distill_and_export([teacher, teacher], teacher_spec, proxy_x, test_set, cfg, tmp_path)
    assert rep.student_spec.name == "mlp" and "fixed" in rep.reason


def test_refusals(teacher: torch.nn.Module, teacher_spec: ModelSpec, proxy_x: np.ndarray,
                  test_set: LabelledArrays, tmp_path: Path) -> None:
    with pytest.raises(DistillError, match="empty"):
        distill_and_export(teacher, teacher_spec, proxy_x[:0], test_set, DistillConfig(**TINY), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DistillError, match="smaller"):
        distill_and_export(teacher, teacher_spec, proxy_x, test_set,
                           DistillConfig(**{**TINY, "student": "cnn:1.0"}), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DistillError, match="smallest"):
        distill_and_export(teacher, teacher_spec, proxy_x, test_set,
                           DistillConfig(**{**TINY, "max_params": 10}), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DistillError, match="labels"):
        distill_and_export(teacher, teacher_spec, proxy_x, test_set,
                           DistillConfig(**{**TINY, "alpha": 0.5}), tmp_path)  # type: ignore[arg-type]


def test_a_static_batchnorm_teacher_gets_a_student_whose_batchnorm_is_folded_away(
        teacher_spec: ModelSpec, proxy_x: np.ndarray, test_set: LabelledArrays, tmp_path: Path) -> None:
    from dataclasses import replace

    from fedshrink.models import build_model, freeze_batch_stats

    spec = replace(teacher_spec, norm="batch")
    torch.manual_seed(0)
    teacher = freeze_batch_stats(build_model(spec), torch.from_numpy(proxy_x))
    cfg = DistillConfig(**{**TINY, "student": "cnn:0.125"})  # type: ignore[arg-type]
    rep = distill_and_export(teacher, spec, proxy_x, test_set, cfg, tmp_path)
    assert rep.student_spec.norm == "none"  # trained with static BatchNorm, folded into its convolutions
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["student"]["spec"]["norm"] == "none"
    assert card["student"]["onnx_max_abs_diff"] <= 1e-4
    packed = unpack_int8((tmp_path / "student_int8.fsq").read_bytes())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in packed.modules())
    explicit = DistillConfig(**{**TINY, "student": "cnn:0.125", "student_norm": "layer"})  # type: ignore[arg-type]
    assert distill_and_export(teacher, spec, proxy_x, test_set, explicit, tmp_path / "b").student_spec.norm == "layer"


def test_a_student_as_large_as_its_teacher_is_refused_though_folding_its_norm_would_shrink_it(
        proxy_x: np.ndarray, test_set: LabelledArrays, tmp_path: Path) -> None:
    from fedshrink.models import build_model, freeze_batch_stats

    spec = ModelSpec("cnn", (1, 8, 8), 10, 0.125, "batch")
    torch.manual_seed(0)
    teacher = freeze_batch_stats(build_model(spec), torch.from_numpy(proxy_x))
    cfg = DistillConfig(**{**TINY, "student": "cnn:0.125"})  # type: ignore[arg-type]
    with pytest.raises(DistillError, match="not fewer than the teacher's"):
        distill_and_export(teacher, spec, proxy_x, test_set, cfg, tmp_path)
