"""Bring your own data: a saved data set under its own name, its columns, classes and shape; one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedshrink.config import RunConfig
from fedshrink.data import PartitionScheme, client_data, load_source, make_splits, max_clients, node_split_spec
from fedshrink.errors import ConfigError, DataError


def _save(path: Path, columns: dict[str, Any], test: dict[str, Any] | None = None, features: Any = None) -> str:
    from datasets import Dataset, DatasetDict

    train = Dataset.from_dict(columns, features=features)
    if test is None:
        train.save_to_disk(str(path))
    else:
        DatasetDict({"train": train, "test": Dataset.from_dict(test, features=features)}).save_to_disk(str(path))
    return str(path)


def _colour(n: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"picture": rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8),
            "category": rng.permutation(np.arange(n) % 3)}


def test_own_data_set_runs_under_its_own_name(tmp_path: Path) -> None:
    path = _save(tmp_path / "saved", _colour(60), test=_colour(15, seed=1))
    cfg = RunConfig.from_mapping({"dataset": "my-shapes", "data-dir": path,
                                  "image-column": "picture", "label-column": "category"})
    spec = cfg.split_spec()
    assert cfg.data.dataset == spec.dataset == "my-shapes"
    splits = make_splits(spec)
    assert splits.num_classes == 3 and splits.input_shape == (3, 16, 16)
    assert len(splits.test) == 15 and len(splits.train) + len(splits.proxy) == 60
    assert 0.0 <= splits.train.x.min() and splits.train.x.max() <= 1.0
    scheme = PartitionScheme("iid")
    assert max_clients(spec, scheme) == len(splits.train)
    assert sum(len(client_data(spec, scheme, i, 4)) for i in range(4)) == len(splits.train)
    # a SuperNode naming the same data set with its own copy
    assert node_split_spec(spec, {"dataset": "my-shapes", "data-dir": "/node/copy"}).data_dir == "/node/copy"


def test_columns_found_from_features(tmp_path: Path) -> None:
    """An Image feature and a ClassLabel are found without settings; the ClassLabel gives the class count."""
    from datasets import ClassLabel, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    pics = [PILImage.fromarray(rng.integers(0, 256, size=(12, 10), dtype=np.uint8), mode="L") for _ in range(20)]
    features = Features({"photo": Image(), "kind": ClassLabel(names=["a", "b", "c", "d", "e"])})
    path = _save(tmp_path / "auto", {"photo": pics, "kind": [i % 3 for i in range(20)]}, features=features)
    src = load_source("auto-named", path)
    assert src.input_shape == (1, 12, 10) and src.num_classes == 5 and src.test is None
    assert src.pool.x.max() <= 1.0


def test_classes_from_the_largest_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _save(tmp_path / "ints", {"image": rng.random((30, 6, 6)).astype(np.float32), "label": np.arange(30) % 7})
    src = load_source("ints", path)
    assert src.num_classes == 7 and src.input_shape == (1, 6, 6)


def _one_line_data_error(name: str, path: str, match: str, **columns: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        load_source(name, path, **columns)
    assert "\n" not in str(info.value)


def test_no_image_column(tmp_path: Path) -> None:
    path = _save(tmp_path / "x", {"height": np.arange(10), "label": np.arange(10) % 2})
    _one_line_data_error("x", path, r"no image column found among \{'height': 'Value', 'label': 'Value'\}")
    _one_line_data_error("x", path, "no image column 'picture' .image-column.", image_column="picture")


def test_labels_that_are_not_integers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _save(tmp_path / "x", {"image": rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8),
                                  "label": ["cat", "dog", "cat", "dog", "cat", "dog"]})
    _one_line_data_error("x", path, "labels in column 'label' are strings .e.g. 'cat', 'dog'., not integer class ids")


def test_negative_labels(tmp_path: Path) -> None:
    path = _save(tmp_path / "x", {"image": np.zeros((4, 8, 8), np.uint8), "label": [0, -1, 1, 0]})
    _one_line_data_error("x", path, "include -1")


def test_mixed_image_sizes(tmp_path: Path) -> None:
    from datasets import Features, Image, Value
    from PIL import Image as PILImage

    pics = [PILImage.new("L", (16, 16)), PILImage.new("L", (20, 20)), PILImage.new("L", (16, 16))]
    features = Features({"image": Image(), "label": Value("int64")})
    path = _save(tmp_path / "x", {"image": pics, "label": [0, 1, 0]}, features=features)
    _one_line_data_error("x", path, r"differ in size \(found \[\(16, 16\), \(20, 20\)\]\)")


def test_arrays_that_are_not_images(tmp_path: Path) -> None:
    path = _save(tmp_path / "x", {"image": np.zeros((4, 5), np.float32), "label": [0, 1, 0, 1]})
    _one_line_data_error("x", path, r"holds arrays of shape \(5,\), not images")
    over = _save(tmp_path / "y", {"image": np.full((4, 3, 3), 2.0, np.float32), "label": [0, 1, 0, 1]})
    _one_line_data_error("y", over, r"lie outside \[0, 1\]")


def test_test_split_of_another_size(tmp_path: Path) -> None:
    path = _save(tmp_path / "x", {"image": np.zeros((4, 8, 8), np.uint8), "label": [0, 1, 0, 1]},
                 test={"image": np.zeros((2, 9, 9), np.uint8), "label": [0, 1]})
    _one_line_data_error("x", path, "test images are")


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"dataset": "imagenet"}, "any name of your own with data-dir set"),
        ({"dataset": "writers", "partitioner": "natural", "data-dir": "/x"}, "generated fleet 'writers'"),
        ({"dataset": ""}, "a registered data set"),
        ({"dataset": "../up", "data-dir": "/x"}, "letters, digits"),
    ],
)
def test_bad_dataset_settings_are_one_line(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(values)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_existing_one_line_errors_stay(tmp_path: Path) -> None:
    _one_line_data_error("imagenet", "", "unknown data set 'imagenet'")
    _one_line_data_error("mnist", str(tmp_path / "absent"), "does not exist")
    _one_line_data_error("my-own", str(tmp_path / "absent"), "does not exist")
    _one_line_data_error("digits", str(tmp_path), "embedded in scikit-learn; leave data-dir empty")


def test_hub_id_is_a_data_set_name() -> None:
    """An id ``owner/name`` is accepted as the run's data set; it loads through the same hub path as ``mnist``
    (whose offline failure tests/test_data.py checks)."""
    assert RunConfig.from_mapping({"dataset": "someone/tiny-images"}).data.dataset == "someone/tiny-images"
    with pytest.raises(ConfigError, match="data-dir"):
        RunConfig.from_mapping({"dataset": "someone/tiny/images"})
