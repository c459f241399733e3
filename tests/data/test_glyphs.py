"""The generated glyphs set: deterministic bytes, balanced, harder than digits, wired as a source."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest

from fedshrink.data import SplitSpec, load_source, make_splits
from fedshrink.data import glyphs as glyphs_mod
from fedshrink.data.strokes import GLYPHS, NUM_ALLOGRAPHS, NUM_CLASSES, SIZE, poly_cos, poly_sin
from fedshrink.errors import DataError

# sha256 of generate(64, seed=0): images then labels. The generator promises the same bytes on every
# machine; this pins them, so a change to the generator (or a platform that computes differently) shows here.
GOLDEN_64_SEED_0 = "da422d9b3cfeb51f907575caa0ef5ee30b485e1eaaf54c4082f0ea0a4fd86d1f"


def _digest(x: np.ndarray, y: np.ndarray) -> str:
    return hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a, b = glyphs_mod.generate(300, 11), glyphs_mod.generate(300, 11)
    assert _digest(*a) == _digest(*b)
    c = glyphs_mod.generate(300, 12)
    assert not np.array_equal(a[0], c[0])


def test_bytes_match_the_pinned_digest() -> None:
    assert _digest(*glyphs_mod.generate(64, 0)) == GOLDEN_64_SEED_0


def test_images_are_balanced_grey_28x28() -> None:
    x, y = glyphs_mod.generate(500, 1)
    assert x.shape == (500, SIZE, SIZE) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(np.bincount(y, minlength=NUM_CLASSES), np.full(NUM_CLASSES, 50))
    assert x.max() > 200 and x.std() > 20  # ink on background, not blank


def test_poly_sin_is_close_to_sin() -> None:
    t = np.linspace(-20.0, 20.0, 4001)
    assert np.abs(poly_sin(t) - np.sin(t)).max() < 1e-3
    assert np.abs(poly_cos(t) - np.cos(t)).max() < 1e-3


def test_every_class_and_allograph_has_points() -> None:
    assert GLYPHS.points.shape[0] == NUM_CLASSES * NUM_ALLOGRAPHS
    assert ((GLYPHS.along >= 0).sum(axis=1) > 50).all()


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, n_train: int) -> float:
    x = x.reshape(len(x), -1).astype(np.float64)
    centroids = np.stack([x[:n_train][y[:n_train] == k].mean(0) for k in range(10)])
    dist = ((x[n_train:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == y[n_train:]).mean())


def test_harder_than_digits_for_a_nearest_centroid_classifier() -> None:
    """A pixel-space nearest-centroid classifier: digits is easy for it, glyphs is not."""
    gx, gy = glyphs_mod.generate(1500, 3)
    digits = load_source("digits").pool
    glyph_acc = _nearest_centroid_accuracy(gx, gy, 1000)
    digit_acc = _nearest_centroid_accuracy(digits.x, digits.y, 1200)
    assert digit_acc > 0.8
    assert glyph_acc < digit_acc - 0.25


@pytest.fixture
def small_glyphs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registered source with a small pool and test split (the real ones take seconds to draw)."""
    monkeypatch.setattr(glyphs_mod, "POOL_SIZE", 400)
    monkeypatch.setattr(glyphs_mod, "TEST_SIZE", 100)
    glyphs_mod.glyph_split.cache_clear()
    make_splits.cache_clear()
    yield
    glyphs_mod.glyph_split.cache_clear()
    make_splits.cache_clear()


@pytest.mark.usefixtures("small_glyphs")
def test_glyphs_source_and_splits() -> None:
    src = load_source("glyphs")
    assert src.input_shape == (1, 28, 28) and src.num_classes == 10
    assert src.test is not None and len(src.test) == 100 and len(src.pool) == 400
    assert src.pool.x.dtype == np.float32 and 0.0 <= src.pool.x.min() and src.pool.x.max() <= 1.0
    splits = make_splits(SplitSpec(dataset="glyphs", proxy_fraction=0.1))
    assert len(splits.test) == 100  # the official test split
    assert len(splits.proxy) == 50 and len(splits.train) == 350


def test_glyphs_refuses_a_data_dir(tmp_path: object) -> None:
    with pytest.raises(DataError, match="generated; leave data-dir empty"):
        load_source("glyphs", str(tmp_path))
