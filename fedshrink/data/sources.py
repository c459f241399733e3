"""Data sets by name, loaded into plain arrays.

Every source returns a :class:`LabelledArrays` pool (and, where the data set
has one, its official test split) with images as float32 ``(N, C, H, W)`` in
``[0, 1]`` and labels as int64 ``(N,)``.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits; embedded, never
  downloaded, the default.
* ``glyphs``: 28x28 grey stroke glyphs of ten classes, generated with
  distortion and clutter (:mod:`fedshrink.data.glyphs`); a harder second set.
* ``mnist``, ``fashion_mnist``, ``cifar10``: Hugging Face data sets
  (:mod:`fedshrink.data.hub`), from a copy saved with ``datasets``'
  ``save_to_disk`` (``data_dir``) or through flwr-datasets from the hub.
* any other name with ``data_dir``: the data set saved there, under that name
  (columns found or named, classes and shape read from the data).
* ``owner/name``: that Hugging Face data set, through flwr-datasets.

The generated fleets (``writers``, :mod:`fedshrink.data.fleet`) are data
sets too, but are never loaded whole; :func:`known_dataset` covers both.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedshrink.errors import DataError
from fedshrink.registry import Registry


@dataclass(frozen=True)
class LabelledArrays:
    """Images ``x`` float32 ``(N, C, H, W)``, labels ``y`` int64 ``(N,)``, optional client ids ``groups`` ``(N,)``.

    ``groups`` is the data set's own client id (a FEMNIST writer, a device):
    the ``natural`` partitioner gives each id its own client.
    """

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        assert self.x.ndim == 4 and self.x.dtype == np.float32, (self.x.shape, self.x.dtype)
        assert self.y.ndim == 1 and self.y.dtype == np.int64 and len(self.y) == len(self.x)
        assert self.groups is None or (self.groups.shape == self.y.shape and self.groups.dtype == np.int64)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> LabelledArrays:
        return LabelledArrays(self.x[idx], self.y[idx], None if self.groups is None else self.groups[idx])


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


@dataclass(frozen=True)
class SourceRequest:
    """What a run asks of a source: its name, where a saved copy lives, and which columns to read.

    Empty columns mean "find them" (see :mod:`fedshrink.data.hub`); only
    sources read from ``datasets`` use them.
    """

    name: str
    data_dir: str = ""
    image_column: str = ""
    label_column: str = ""
    client_column: str = ""


SourceLoader = Callable[[SourceRequest], SourceData]
SOURCES: Registry[SourceLoader] = Registry("data source", setting="dataset")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # owner/name on the Hugging Face hub


def register_source(name: str) -> Callable[[SourceLoader], SourceLoader]:
    """Register ``loader(request) -> SourceData`` as data set ``name`` (see docs/data.md)."""
    return SOURCES.register(name)


def known_dataset(name: str, data_dir: str = "") -> bool:
    """Whether a run may name data set ``name``: registered, a fleet, a hub id, or any name with ``data_dir``."""
    from fedshrink.data.fleet import FLEETS

    return name in SOURCES or name in FLEETS or bool(HUB_ID.match(name)) or (bool(data_dir) and bool(name.strip()))


def dataset_names() -> list[str]:
    """The registered data sets and fleets, sorted."""
    from fedshrink.data.fleet import FLEETS

    return sorted([*SOURCES, *FLEETS])


def unknown_words() -> str:
    """What a run may name as its data set, in words (for errors and the settings docs)."""
    return ("one of " + ", ".join(map(repr, dataset_names()))
            + ", a Hugging Face id 'owner/name', or any name of your own with data-dir set")


def load_source(name: str, data_dir: str = "", *, image_column: str = "", label_column: str = "",
                client_column: str = "") -> SourceData:
    """Load data set ``name``: a registered source, a saved copy in ``data_dir`` under any name, or a hub id."""
    from fedshrink.data import hub

    req = SourceRequest(name, data_dir, image_column, label_column, client_column)
    if name in SOURCES:
        return SOURCES[name](req)
    if data_dir:
        return hub.load_from_disk(req)
    if HUB_ID.match(name):
        return hub.load_from_hub(req, hub.HubSpec(name))
    raise DataError(f"unknown data set {name!r}; allowed {unknown_words()}")


# --- digits (embedded) ---------------------------------------------------------


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(images (N, 8, 8) float64 in 0..16, labels (N,))``.

    Read straight from the CSV that scikit-learn ships (what ``load_digits``
    reads), without importing scikit-learn: that import costs about 2 s in
    every process that loads the data, and in a deployment every message
    starts a ClientApp process. Falls back to ``load_digits`` where the file
    is not where this version of scikit-learn keeps it.
    """
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    csv = next((c for c in (Path(r) / "datasets" / "data" / "digits.csv.gz" for r in roots) if c.is_file()), None)
    if csv is not None:
        data = np.loadtxt(csv, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target, dtype=np.int64)


@register_source("digits")
def _load_digits(req: SourceRequest) -> SourceData:
    if req.data_dir:
        raise DataError("data set 'digits' is embedded in scikit-learn; leave data-dir empty")
    images, labels = digits_arrays()
    x = (np.asarray(images, dtype=np.float32) / 16.0)[:, None, :, :]  # (N, 1, 8, 8)
    return SourceData(pool=LabelledArrays(x, labels), test=None, num_classes=10)


# --- glyphs (generated) ----------------------------------------------------------


@register_source("glyphs")
def _load_glyphs(req: SourceRequest) -> SourceData:
    from fedshrink.data.glyphs import glyph_split
    from fedshrink.data.strokes import NUM_CLASSES

    if req.data_dir:
        raise DataError("data set 'glyphs' is generated; leave data-dir empty")

    def arrays(split: str) -> LabelledArrays:
        images, labels = glyph_split(split)
        return LabelledArrays((images.astype(np.float32) / 255.0)[:, None, :, :], labels.copy())  # (N, 1, 28, 28)

    return SourceData(pool=arrays("pool"), test=arrays("test"), num_classes=NUM_CLASSES)


def _register_hub_sets() -> None:
    from fedshrink.data.hub import HUB_DATASETS, hub_loader

    for name, spec in HUB_DATASETS.items():
        register_source(name)(hub_loader(spec))


_register_hub_sets()
