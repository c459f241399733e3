"""Data sets by name, loaded into plain arrays.

Every source returns a :class:`LabelledArrays` pool (and, where the data set
has one, its official test split) with images as float32 ``(N, C, H, W)`` in
``[0, 1]`` and labels as int64 ``(N,)``.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits; embedded, never
  downloaded, the default.
* ``mnist``, ``fashion_mnist``, ``cifar10``: Hugging Face data sets through
  flwr-datasets' ``FederatedDataset`` (which downloads and caches them), or,
  with ``data_dir``, a copy saved earlier with ``datasets``' ``save_to_disk``.
  Without network access the hub path fails with a :class:`DataError` saying
  how to use a local copy instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedshrink.errors import DataError


@dataclass(frozen=True)
class LabelledArrays:
    """Images ``x`` float32 ``(N, C, H, W)`` and labels ``y`` int64 ``(N,)``."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        assert self.x.ndim == 4 and self.x.dtype == np.float32, (self.x.shape, self.x.dtype)
        assert self.y.ndim == 1 and self.y.dtype == np.int64 and len(self.y) == len(self.x)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> LabelledArrays:
        return LabelledArrays(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class SourceData:
    """What a source yields: a pool to split, and an official test split if any."""

    pool: LabelledArrays
    test: LabelledArrays | None
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.pool.x.shape[1:]
        return (int(c), int(h), int(w))


SourceLoader = Callable[[str], SourceData]
SOURCES: dict[str, SourceLoader] = {}


def register_source(name: str) -> Callable[[SourceLoader], SourceLoader]:
    def deco(fn: SourceLoader) -> SourceLoader:
        if name in SOURCES:
            raise ValueError(f"data source {name!r} registered twice")
        SOURCES[name] = fn
        return fn

    return deco


def load_source(name: str, data_dir: str = "") -> SourceData:
    """Load data set ``name`` (from ``data_dir`` if given)."""
    if name not in SOURCES:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](data_dir)


# --- digits (embedded) ---------------------------------------------------------


@register_source("digits")
def _load_digits(data_dir: str) -> SourceData:
    from sklearn.datasets import load_digits

    if data_dir:
        raise DataError("data set 'digits' is embedded in scikit-learn; leave data-dir empty")
    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]  # (N, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return SourceData(pool=LabelledArrays(x, y), test=None, num_classes=10)


# --- Hugging Face data sets ------------------------------------------------------


@dataclass(frozen=True)
class HubSpec:
    hub_id: str
    image_column: str
    label_column: str
    num_classes: int


HUB_DATASETS: dict[str, HubSpec] = {
    "mnist": HubSpec("ylecun/mnist", "image", "label", 10),
    "fashion_mnist": HubSpec("zalando-datasets/fashion_mnist", "image", "label", 10),
    "cifar10": HubSpec("uoft-cs/cifar10", "img", "label", 10),
}


def hf_to_arrays(ds: Any, spec: HubSpec, *, where: str) -> LabelledArrays:
    """Convert a ``datasets.Dataset`` with an image and a label column to arrays."""
    missing = {spec.image_column, spec.label_column} - set(ds.column_names)
    if missing:
        raise DataError(
            f"{where}: columns {sorted(missing)} missing (has {ds.column_names}); "
            f"expected {spec.image_column!r} and {spec.label_column!r}"
        )
    if len(ds) == 0:
        raise DataError(f"{where}: the data set is empty")
    data = ds.with_format("numpy")[:]
    x = np.asarray(data[spec.image_column])
    if x.dtype == object:  # ragged images: cannot stack
        raise DataError(f"{where}: images differ in shape")
    x = x.astype(np.float32)
    if x.ndim == 3:  # (N, H, W) grey
        x = x[:, None, :, :]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):  # (N, H, W, C)
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: cannot read images of shape {x.shape}")
    if x.max(initial=0.0) > 1.0:
        x = x / 255.0
    y = np.asarray(data[spec.label_column], dtype=np.int64)
    if y.min() < 0 or y.max() >= spec.num_classes:
        raise DataError(f"{where}: labels outside [0, {spec.num_classes})")
    return LabelledArrays(np.ascontiguousarray(x, dtype=np.float32), y)


def _load_from_disk(path: str, spec: HubSpec, name: str) -> SourceData:
    import datasets

    p = Path(path)
    if not p.exists():
        raise DataError(f"data-dir {path!r} does not exist (data set {name!r})")
    try:
        loaded = datasets.load_from_disk(str(p))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"data-dir {path!r} is not a saved Hugging Face data set: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"data-dir {path!r} has splits {list(loaded)}; a 'train' split is needed")
        pool = hf_to_arrays(loaded["train"], spec, where=f"{path}[train]")
        test = hf_to_arrays(loaded["test"], spec, where=f"{path}[test]") if "test" in loaded else None
    else:
        pool, test = hf_to_arrays(loaded, spec, where=path), None
    return SourceData(pool=pool, test=test, num_classes=spec.num_classes)


def _load_from_hub(spec: HubSpec, name: str) -> SourceData:
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import IidPartitioner

    try:
        fds = FederatedDataset(dataset=spec.hub_id, partitioners={"train": IidPartitioner(1)})
        train = fds.load_split("train")
        test = fds.load_split("test")
    except Exception as exc:  # the hub raises many types (ConnectionError, OSError, HfHubHTTPError...)
        raise DataError(
            f"cannot fetch data set {name!r} ({spec.hub_id}) from the Hugging Face hub: "
            f"{type(exc).__name__}: {exc}. Without network access, save a copy elsewhere with "
            f"datasets' save_to_disk and set data-dir to its path."
        ) from exc
    return SourceData(
        pool=hf_to_arrays(train, spec, where=f"{spec.hub_id}[train]"),
        test=hf_to_arrays(test, spec, where=f"{spec.hub_id}[test]"),
        num_classes=spec.num_classes,
    )


def _make_hub_loader(name: str, spec: HubSpec) -> SourceLoader:
    def load(data_dir: str) -> SourceData:
        if data_dir:
            return _load_from_disk(data_dir, spec, name)
        return _load_from_hub(spec, name)

    return load


for _name, _spec in HUB_DATASETS.items():
    register_source(_name)(_make_hub_loader(_name, _spec))
