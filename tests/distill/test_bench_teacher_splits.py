"""The distillation benchmarks measure a teacher run on that run's own splits, which follow its seed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedshrink.config import RunConfig
from fedshrink.data import SplitSpec, make_splits
from fedshrink.models import ModelSpec, build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "simulations" / "benchmarks"))

from bench_distill import load_run_model, run_splits


def _run_dir(tmp_path: Path, **values: object) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(RunConfig().with_values(values).to_json())
    return run


def test_a_teacher_run_is_measured_on_its_own_seeds_splits(tmp_path: Path) -> None:
    cfg, splits = run_splits(_run_dir(tmp_path, seed=1))
    assert (cfg.data.dataset, cfg.federation.seed) == ("digits", 1)
    own, default = make_splits(SplitSpec(seed=1)), make_splits(SplitSpec())
    np.testing.assert_array_equal(splits.test.x, own.test.x)
    np.testing.assert_array_equal(splits.proxy.x, own.proxy.x)
    # the default (seed 42) test split is another one, so measuring a seed-1 teacher on it would be wrong
    assert not np.array_equal(splits.test.x, default.test.x)


def test_a_teacher_runs_split_fractions_are_its_own(tmp_path: Path) -> None:
    _, splits = run_splits(_run_dir(tmp_path, **{"test-fraction": 0.3, "proxy-fraction": 0.05}))
    n = len(splits.test) + len(splits.proxy) + len(splits.train)
    assert len(splits.test) == pytest.approx(0.3 * n, abs=2)
    assert len(splits.test) != len(make_splits(SplitSpec()).test)


def test_a_run_model_comes_with_its_own_runs_splits(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, seed=1, model="mlp", **{"model-width": 0.5})
    own = make_splits(SplitSpec(seed=1))
    torch.manual_seed(0)
    torch.save(build_model(ModelSpec("mlp", own.input_shape, own.num_classes, 0.5, "batch")).state_dict(),
               run / "global_model.pt")
    splits, spec, model = load_run_model(run)
    np.testing.assert_array_equal(splits.test.x, own.test.x)
    assert (spec.name, spec.width) == ("mlp", 0.5)
    assert model(torch.from_numpy(splits.test.x[:4])).shape == (4, own.num_classes)
