"""Hugging Face data sets: a copy saved with ``save_to_disk``, or the hub through flwr-datasets.

A saved copy is a ``Dataset`` or a ``DatasetDict`` with a ``train`` split
(and, if it has one, a ``test`` split, used as the server's test set).
Columns:

* image: ``image_column`` if given; else the first column whose feature is
  ``datasets.Image``; else the first named ``image``, ``img``, ``pixels`` or
  ``picture``. Images are ``(H, W)`` grey or ``(H, W, C)`` with ``C`` in 1..4,
  all of one size; ``uint8`` (or integers up to 255) are scaled by 1/255,
  floats must already lie in ``[0, 1]``.
* label: ``label_column`` if given; else the first ``ClassLabel`` column;
  else the first named ``label``, ``labels`` or ``class``. Labels must be
  integers >= 0; the number of classes is the ``ClassLabel``'s, else the
  largest label + 1.
* client id (optional): ``client_column``, e.g. FEMNIST's ``writer_id``, for
  the ``natural`` partitioner; any values, numbered in sorted order.

Anything else fails when the data set is loaded, with one line saying what
was found. Without network access the hub fails with a :class:`DataError`
saying how to use a local copy instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedshrink.data.sources import LabelledArrays, SourceData, SourceLoader, SourceRequest
from fedshrink.errors import DataError

IMAGE_NAMES = ("image", "img", "pixels", "picture")
_KINDS = {"U": "strings", "S": "bytes", "O": "objects", "f": "floats", "b": "booleans", "c": "complex numbers"}
LABEL_NAMES = ("label", "labels", "class")


@dataclass(frozen=True)
class HubSpec:
    """A hub data set's id and, where known, its columns and number of classes (0 = read from the data)."""

    hub_id: str
    image_column: str = ""
    label_column: str = ""
    num_classes: int = 0


HUB_DATASETS: dict[str, HubSpec] = {
    "mnist": HubSpec("ylecun/mnist", "image", "label", 10),
    "fashion_mnist": HubSpec("zalando-datasets/fashion_mnist", "image", "label", 10),
    "cifar10": HubSpec("uoft-cs/cifar10", "img", "label", 10),
}


def _feature_kind(ds: Any, column: str) -> str:
    return type(ds.features[column]).__name__


def find_columns(ds: Any, req: SourceRequest, where: str) -> tuple[str, str]:
    """The image and label columns of ``ds``: the request's, else found by feature type, else by name."""
    cols = list(ds.column_names)

    def pick(given: str, kind: str, names: tuple[str, ...], what: str, setting: str) -> str:
        if given:
            if given not in cols:
                raise DataError(f"{where}: no {what} column {given!r} ({setting}); columns are {cols}")
            return given
        typed = [c for c in cols if _feature_kind(ds, c) == kind]
        named = [c for c in cols if c in names]
        if typed or named:
            return str((typed or named)[0])
        found = {c: _feature_kind(ds, c) for c in cols}
        raise DataError(f"{where}: no {what} column found among {found}; name it with {setting}")

    image = pick(req.image_column, "Image", IMAGE_NAMES, "image", "image-column")
    label = pick(req.label_column, "ClassLabel", LABEL_NAMES, "label", "label-column")
    return image, label


def _images(ds: Any, column: str, where: str) -> np.ndarray:
    """Images of ``ds[column]`` as float32 ``(N, C, H, W)`` in ``[0, 1]``."""
    raw = ds.with_format("numpy")[column]
    first = np.asarray(raw[0])
    try:
        x = np.asarray(raw[:])
    except ValueError:  # numpy refuses to stack ragged images
        x = np.empty(0, dtype=object)
    if x.dtype == object or x.shape[1:] != first.shape:
        shapes = sorted({tuple(np.asarray(im).shape) for im in raw[: min(len(ds), 64)]})
        raise DataError(f"{where}: images in column {column!r} differ in size (found {shapes[:4]}); "
                        "resize them to one size first")
    if x.ndim == 3:  # (N, H, W) grey
        x = x[:, None, :, :]
    elif x.ndim == 4 and 1 <= x.shape[-1] <= 4:  # (N, H, W, C)
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: column {column!r} holds arrays of shape {first.shape}, not images "
                        "((H, W) grey or (H, W, C) with C in 1..4)")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: column {column!r} holds {x.dtype} values, not pixel values")
    hi = float(x.max(initial=0.0))
    if np.issubdtype(x.dtype, np.integer):
        if x.min(initial=0) < 0 or hi > 255:
            raise DataError(f"{where}: integer pixels of column {column!r} lie outside 0..255")
        x = x.astype(np.float32) / 255.0
    elif x.min(initial=0.0) < 0.0 or hi > 1.0 or not np.isfinite(x).all():
        raise DataError(f"{where}: float pixels of column {column!r} lie outside [0, 1] (max {hi:g})")
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(ds: Any, column: str, where: str) -> np.ndarray:
    y = np.asarray(ds.with_format("numpy")[column][:])
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        kind = "arrays" if y.ndim != 1 else _KINDS.get(y.dtype.kind, str(y.dtype))
        sample = ", ".join(repr(v) for v in y.reshape(len(y), -1)[:2, 0].tolist())
        raise DataError(f"{where}: labels in column {column!r} are {kind} (e.g. {sample}), not integer "
                        "class ids; use a ClassLabel column or integers 0..K-1")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: labels in column {column!r} include {int(y.min())}; they must be >= 0")
    return y.astype(np.int64)


def hf_to_arrays(ds: Any, req: SourceRequest, *, where: str) -> LabelledArrays:
    """A ``datasets.Dataset``'s image, label (and client id) columns as arrays (see the module doc)."""
    if len(ds) == 0:
        raise DataError(f"{where}: the data set is empty")
    image, label = find_columns(ds, req, where)
    groups = None
    if req.client_column:
        if req.client_column not in ds.column_names:
            raise DataError(f"{where}: no client column {req.client_column!r} (client-column); "
                            f"columns are {list(ds.column_names)}")
        ids = np.asarray(ds.with_format("numpy")[req.client_column][:])
        groups = np.unique(ids, return_inverse=True)[1].astype(np.int64).reshape(-1)
    return LabelledArrays(_images(ds, image, where), _labels(ds, label, where), groups)


def _num_classes(ds: Any, req: SourceRequest, parts: list[LabelledArrays], known: int) -> int:
    """The ``ClassLabel``'s class count, else ``known``, else the largest label + 1."""
    _, label = find_columns(ds, req, "")
    feature = ds.features[label]
    if _feature_kind(ds, label) == "ClassLabel":
        return int(feature.num_classes)
    return known or max(int(p.y.max()) for p in parts) + 1


def to_source(train: Any, test: Any | None, req: SourceRequest, where: str, known_classes: int = 0) -> SourceData:
    """A source from a train split and an optional test split (``datasets.Dataset``)."""
    pool = hf_to_arrays(train, req, where=f"{where}[train]")
    parts = [pool]
    test_arrays = None
    if test is not None:
        test_arrays = hf_to_arrays(test, req, where=f"{where}[test]")
        if test_arrays.x.shape[1:] != pool.x.shape[1:]:
            raise DataError(f"{where}: test images are {test_arrays.x.shape[1:]}, train images {pool.x.shape[1:]}")
        parts.append(test_arrays)
    k = _num_classes(train, req, parts, known_classes)
    for part, split in zip(parts, ("train", "test"), strict=False):
        if part.y.max() >= k:
            raise DataError(f"{where}[{split}]: label {int(part.y.max())} is outside the {k} classes")
    return SourceData(pool=pool, test=test_arrays, num_classes=k)


def load_from_disk(req: SourceRequest, spec: HubSpec | None = None) -> SourceData:
    """The data set ``save_to_disk`` wrote to ``req.data_dir``, under the name ``req.name``."""
    import datasets

    p = Path(req.data_dir).expanduser()
    if not p.exists():
        raise DataError(f"data-dir {req.data_dir!r} does not exist (data set {req.name!r})")
    try:
        loaded = datasets.load_from_disk(str(p))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"data-dir {req.data_dir!r} is not a saved Hugging Face data set: {exc}") from exc
    known = spec.num_classes if spec else 0
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"data-dir {req.data_dir!r} has splits {list(loaded)}; a 'train' split is needed")
        return to_source(loaded["train"], loaded.get("test"), req, req.data_dir, known)
    return to_source(loaded, None, req, req.data_dir, known)


def load_from_hub(req: SourceRequest, spec: HubSpec) -> SourceData:
    """``spec.hub_id`` through flwr-datasets' ``FederatedDataset`` (downloads and caches it)."""
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import IidPartitioner

    try:
        fds = FederatedDataset(dataset=spec.hub_id, partitioners={"train": IidPartitioner(1)})
        train = fds.load_split("train")
    except Exception as exc:  # the hub raises many types (ConnectionError, OSError, HfHubHTTPError...)
        raise DataError(
            f"cannot fetch data set {req.name!r} ({spec.hub_id}) from the Hugging Face hub: "
            f"{type(exc).__name__}: {exc}. Without network access, save a copy elsewhere with "
            f"datasets' save_to_disk and set data-dir to its path."
        ) from exc
    try:
        test = fds.load_split("test")
    except ValueError:  # the data set has no test split: the pool is split instead
        test = None
    return to_source(train, test, req, spec.hub_id, spec.num_classes)


def hub_loader(spec: HubSpec) -> SourceLoader:
    """The loader of a known hub data set: its saved copy (``data_dir``) or the hub; its own columns by default."""

    def load(req: SourceRequest) -> SourceData:
        req = replace(req, image_column=req.image_column or spec.image_column,
                      label_column=req.label_column or spec.label_column)
        return load_from_disk(req, spec) if req.data_dir else load_from_hub(req, spec)

    return load
