"""Data: seeded splits, partitioners (deterministic, disjoint, covering), local HF data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedshrink.data import (
    LabelledArrays,
    PartitionScheme,
    SplitSpec,
    client_data,
    load_source,
    make_splits,
    partition_indices,
)
from fedshrink.errors import ConfigError, DataError

SCHEMES = [
    PartitionScheme("iid"),
    PartitionScheme("dirichlet", alpha=0.5),
    PartitionScheme("dirichlet", alpha=0.1),
    PartitionScheme("pathological", classes_per_client=2),
]


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return make_splits(SplitSpec()).train.y


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: f"{s.name}-{s.alpha}-{s.classes_per_client}")
@pytest.mark.parametrize("num_partitions", [10, 20])
def test_partitions_disjoint_cover_and_deterministic(
    labels: np.ndarray, scheme: PartitionScheme, num_partitions: int
) -> None:
    parts = partition_indices(labels, num_partitions, scheme, seed=7)
    assert len(parts) == num_partitions
    assert all(len(p) > 0 for p in parts)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(labels)  # disjoint ...
    assert np.array_equal(np.sort(allidx), np.arange(len(labels)))  # ... and covering
    again = partition_indices(labels, num_partitions, scheme, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize("scheme", SCHEMES[1:], ids=lambda s: s.name)
def test_other_seed_gives_other_partition(labels: np.ndarray, scheme: PartitionScheme) -> None:
    a = partition_indices(labels, 10, scheme, seed=1)
    b = partition_indices(labels, 10, scheme, seed=2)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_pathological_gives_each_client_k_classes(labels: np.ndarray) -> None:
    parts = partition_indices(labels, 20, PartitionScheme("pathological", classes_per_client=2), seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_dirichlet_skews_labels(labels: np.ndarray) -> None:
    def mean_classes(alpha: float) -> float:
        parts = partition_indices(labels, 20, PartitionScheme("dirichlet", alpha=alpha), seed=0)
        return float(np.mean([len(np.unique(labels[p])) for p in parts]))

    assert mean_classes(0.1) < mean_classes(100.0)


def test_more_clients_than_samples_is_refused() -> None:
    y = np.arange(10) % 2
    with pytest.raises(ConfigError, match="num-clients"):
        partition_indices(y, 11, PartitionScheme("iid"), seed=0)


def test_pathological_that_leaves_classes_out_is_refused(labels: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="classes-per-client"):
        partition_indices(labels, 3, PartitionScheme("pathological", classes_per_client=2), seed=0)


def test_bad_scheme_values() -> None:
    with pytest.raises(ConfigError, match="dirichlet-alpha"):
        PartitionScheme("dirichlet", alpha=0.0)
    with pytest.raises(ConfigError, match="partitioner"):
        PartitionScheme("nope")


def test_digits_splits_are_disjoint_and_sized() -> None:
    s = make_splits(SplitSpec(test_fraction=0.2, proxy_fraction=0.1, seed=3))
    assert len(s.test) + len(s.proxy) + len(s.train) == 1797
    assert abs(len(s.test) - 0.2 * 1797) <= 1 and abs(len(s.proxy) - 0.1 * 1797) <= 2
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    # no image is in two splits (digits has a few duplicate images, so compare by count)
    rows = lambda a: {r.tobytes() for r in a.x.reshape(len(a), -1)}  # noqa: E731
    assert len(rows(s.test) & rows(s.train)) <= 5
    assert 0.0 <= s.train.x.min() and s.train.x.max() <= 1.0
    # stratified: every class in every split
    for part in (s.test, s.proxy, s.train):
        assert len(np.unique(part.y)) == 10


def test_splits_depend_on_seed_only() -> None:
    a, b = make_splits(SplitSpec(seed=5)), make_splits(SplitSpec(seed=5))
    assert np.array_equal(a.test.y, b.test.y)
    c = make_splits(SplitSpec(seed=6))
    assert not np.array_equal(a.proxy.x, c.proxy.x)


def test_client_data_matches_partition() -> None:
    spec, scheme = SplitSpec(), PartitionScheme("iid")
    sizes = [len(client_data(spec, scheme, i, 4)) for i in range(4)]
    assert sum(sizes) == len(make_splits(spec).train)
    with pytest.raises(DataError, match="partition-id"):
        client_data(spec, scheme, 4, 4)


# --- Hugging Face data sets from a local copy -------------------------------------------


def _save_fake(path: Path, image_col: str, shape: tuple[int, ...], n: int = 40) -> None:
    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng(0)
    def make(m: int) -> Dataset:
        return Dataset.from_dict({
            image_col: rng.integers(0, 256, size=(m, *shape), dtype=np.uint8),
            "label": rng.integers(0, 10, size=m),
        })
    DatasetDict({"train": make(n), "test": make(n // 4)}).save_to_disk(str(path))


@pytest.mark.parametrize(
    ("name", "image_col", "shape", "expect"),
    [
        ("mnist", "image", (28, 28), (1, 28, 28)),
        ("fashion_mnist", "image", (28, 28), (1, 28, 28)),
        ("cifar10", "img", (32, 32, 3), (3, 32, 32)),
    ],
)
def test_hub_dataset_from_local_copy(
    tmp_path: Path, name: str, image_col: str, shape: tuple[int, ...], expect: tuple[int, int, int]
) -> None:
    _save_fake(tmp_path / name, image_col, shape)
    src = load_source(name, str(tmp_path / name))
    assert src.input_shape == expect
    assert src.test is not None and len(src.test) == 10 and len(src.pool) == 40
    assert src.pool.x.dtype == np.float32 and 0.0 <= src.pool.x.min() and src.pool.x.max() <= 1.0
    splits = make_splits(SplitSpec(dataset=name, data_dir=str(tmp_path / name), proxy_fraction=0.1))
    assert len(splits.test) == 10  # the official test split is used as is
    assert len(splits.train) + len(splits.proxy) == 40


def test_local_copy_with_wrong_columns_is_refused(tmp_path: Path) -> None:
    _save_fake(tmp_path / "x", "pixels", (28, 28))
    with pytest.raises(DataError, match="columns"):
        load_source("mnist", str(tmp_path / "x"))


def test_missing_data_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_source("mnist", str(tmp_path / "absent"))


def test_hub_unreachable_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    # the libraries read those variables once, at import: where an earlier test imported them, set what they read
    # (otherwise the hub is tried over the network, and only its timeouts and retries end the attempt)
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    with pytest.raises(DataError, match="data-dir") as info:
        load_source("mnist")
    assert "Hugging Face hub" in str(info.value)


def test_unknown_source() -> None:
    with pytest.raises(DataError, match="unknown data set"):
        load_source("imagenet")


def test_labelled_arrays_subset() -> None:
    a = LabelledArrays(np.zeros((5, 1, 2, 2), np.float32), np.arange(5, dtype=np.int64))
    assert list(a.subset(np.array([1, 3])).y) == [1, 3]


def test_digits_read_without_sklearn_equal_load_digits() -> None:
    from sklearn.datasets import load_digits

    from fedshrink.data.sources import digits_arrays

    images, labels = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
    assert images.shape == (1797, 8, 8) and labels.dtype == np.int64
