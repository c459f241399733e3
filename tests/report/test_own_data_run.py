"""A data set of one's own, saved with save_to_disk, runs under its own name; report, summary and compare say so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedshrink.report import RunDirectory, build_report, compare_runs
from fedshrink.runner import run_inprocess


def _save(path: Path, n: int, seed: int) -> None:
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    Dataset.from_dict({"picture": rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8),
                       "category": rng.permutation(np.arange(n) % 3)}).save_to_disk(str(path))


@pytest.mark.slow
def test_own_colour_data_set_with_three_classes_runs_under_its_name(quick: dict[str, Any], tmp_path: Path) -> None:
    _save(tmp_path / "tiles", 120, 0)
    own = {**quick, "dataset": "tiles-16", "data-dir": str(tmp_path / "tiles"), "image-column": "picture",
           "label-column": "category", "partitioner": "iid", "num-server-rounds": 2, "profile-mix": ""}
    runs = [run_inprocess({**own, "run-name": name, **extra}, num_clients=4).run_dir
            for name, extra in (("fedavg", {}), ("q4", {"uplink-chain": "q4|zstd"}))]
    build_report(runs[0], draw=False)
    s = RunDirectory(runs[0]).read_summary()
    assert (s["dataset"], s["classes"], s["input-shape"]) == ("tiles-16", 3, [3, 16, 16])
    assert "tiles-16 (3 classes, input 3x16x16)" in (runs[0] / "report.md").read_text()
    comparison = compare_runs(runs, tmp_path / "cmp", draw=False)
    text = comparison.path.read_text()
    assert "tiles-16 (3 classes, input 3x16x16)" in text and "mnist" not in text and "digits" not in text
