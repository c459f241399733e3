"""``glyphs``: a generated 28x28 grey data set of ten stroke glyphs, harder than ``digits``.

Each image is one of the ten classes of :data:`~fedshrink.data.strokes.TEMPLATES`
(in one of two allographs), drawn by :mod:`~fedshrink.data.strokes` under a
random :class:`Style`: rotation, anisotropic scale, shear, translation,
per-stroke offsets, a wave warp, a gap in the stroke, stroke width; then
clutter (distractor strokes and blobs), a background level and gradient,
contrast and pixel noise. :data:`GLYPHS_STYLE` is the spread the ``glyphs``
source draws from; :mod:`~fedshrink.data.fleet` draws each writer's own
narrower style.

The data set is fixed, like a downloaded one: a pool of :data:`POOL_SIZE`
images from seed :data:`POOL_SEED` and an official test split of
:data:`TEST_SIZE` from :data:`TEST_SEED`; the run's seed only changes how
they are split. Images are identical bytes for a seed on every machine (see
:mod:`~fedshrink.data.strokes`) and cached per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedshrink.data.strokes import (
    MAX_STROKES,
    NUM_ALLOGRAPHS,
    NUM_CLASSES,
    SIZE,
    SPACING,
    DrawParams,
    coverage,
    place,
    poly_cos,
    poly_sin,
    splat,
)

POOL_SIZE = 20_000
TEST_SIZE = 4_000
POOL_SEED = 20_250_101
TEST_SEED = 20_250_102
CHUNK = 2048  # images drawn at once (bounds the temporary arrays to a few MB)
DISTRACTOR_POINTS = 24


Range = tuple[float, float]  # uniform in [lo, hi]


@dataclass(frozen=True)
class Style:
    """Ranges that per-image drawing parameters are drawn from (uniform in ``[lo, hi]``).

    Angles in degrees, lengths in pixels unless noted; ``scale`` in pixels per
    template unit (a glyph spans 2 units). ``allograph_bias`` is the
    probability of each class's first allograph.
    """

    rotation: Range = (-18.0, 18.0)
    scale: Range = (7.5, 10.5)
    aspect: Range = (0.8, 1.2)  # scale_y / scale_x
    shear: Range = (-0.35, 0.35)
    shift: float = 2.5  # |dx|, |dy| <= shift
    jitter: float = 0.06  # per-stroke offset, template units
    wave_amp: Range = (0.0, 0.08)  # template units
    wave_freq: Range = (1.5, 4.0)  # radians per template unit
    gap_prob: float = 0.4
    gap_length: Range = (0.05, 0.2)  # fraction of the glyph's length
    blur_radius: Range = (1.3, 2.6)
    ink_gain: Range = (1.2, 2.5)
    distractors: Range = (0.0, 3.0)  # strokes per image: floor of a uniform draw in [lo, hi + 1)
    distractor_length: Range = (5.0, 16.0)
    blobs: Range = (0.0, 1.0)
    background: Range = (0.0, 0.15)
    foreground: Range = (0.7, 1.0)
    gradient: float = 0.08  # background change across the image
    noise: Range = (0.03, 0.15)  # pixel noise amplitude
    allograph_bias: float = 0.5


GLYPHS_STYLE = Style()


def _u(rng: np.random.Generator, r: Range, n: int) -> np.ndarray:
    """``n`` uniform draws in ``[lo, hi]`` (``lo + (hi - lo) * random``: exact arithmetic)."""
    return np.asarray(r[0] + (r[1] - r[0]) * rng.random(n))


def _sym(rng: np.random.Generator, half: float, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(half * (2.0 * rng.random(shape) - 1.0))


def draw_params(rng: np.random.Generator, n: int, style: Style) -> DrawParams:
    """Per-image drawing parameters for ``n`` images under ``style``."""
    scale = _u(rng, style.scale, n)
    aspect = _u(rng, style.aspect, n)
    gap = rng.random(n) < style.gap_prob
    return DrawParams(
        rotation=_u(rng, style.rotation, n) * (np.pi / 180.0),
        scale_x=scale,
        scale_y=scale * aspect,
        shear=_u(rng, style.shear, n),
        shift=_sym(rng, style.shift, (n, 2)),
        stroke_jitter=_sym(rng, style.jitter, (n, MAX_STROKES, 2)),
        wave_amp=np.stack([_u(rng, style.wave_amp, n), _u(rng, style.wave_amp, n)], axis=1),
        wave_freq=np.stack([_u(rng, style.wave_freq, n), _u(rng, style.wave_freq, n)], axis=1),
        wave_phase=_sym(rng, np.pi, (n, 2)),
        gap_start=rng.random(n),
        gap_length=np.where(gap, _u(rng, style.gap_length, n), 0.0),
        blur_radius=_u(rng, style.blur_radius, n),
        ink_gain=_u(rng, style.ink_gain, n),
    )


def _distractors(rng: np.random.Generator, n: int, style: Style, grid: np.ndarray, density: np.ndarray) -> None:
    """Add up to ``distractors[1]`` short bent strokes and ``blobs[1]`` dots per image to ``grid``."""
    k = int(style.distractors[1])
    if k > 0:
        count = np.floor(_u(rng, (style.distractors[0], style.distractors[1] + 0.999), n))
        start = rng.random((n, k, 2)) * (SIZE - 1)
        angle = _sym(rng, np.pi, (n, k))
        length = _u(rng, style.distractor_length, n * k).reshape(n, k)
        bend = _sym(rng, 0.35, (n, k))
        t = np.linspace(0.0, 1.0, DISTRACTOR_POINTS)[None, None, :]  # (1, 1, T)
        dx, dy = poly_cos(angle)[..., None], poly_sin(angle)[..., None]
        along = length[..., None] * t
        off = bend[..., None] * length[..., None] * t * (1.0 - t) * 2.0
        u = start[..., 0:1] + along * dx - off * dy
        v = start[..., 1:2] + along * dy + off * dx
        uv = np.stack([u, v], axis=-1).reshape(n, k * DISTRACTOR_POINTS, 2)
        exists = (np.arange(k)[None, :] < count[:, None])[..., None]  # (n, k, 1)
        step = length[..., None] / (DISTRACTOR_POINTS - 1)
        w = np.broadcast_to(exists * step * density[:, None, None], (n, k, DISTRACTOR_POINTS))
        splat(uv, w.reshape(n, -1), grid)
    b = int(style.blobs[1])
    if b > 0:
        count = np.floor(_u(rng, (style.blobs[0], style.blobs[1] + 0.999), n))
        at = 2.0 + rng.random((n, b, 2)) * (SIZE - 5)
        size = _u(rng, (1.0, 3.0), n * b).reshape(n, b)
        w = (np.arange(b)[None, :] < count[:, None]) * size * density[:, None]
        splat(at, w, grid)


def render(rng: np.random.Generator, labels: np.ndarray, allographs: np.ndarray, style: Style) -> np.ndarray:
    """``uint8`` images ``(N, SIZE, SIZE)`` of glyph ``labels[i]`` in allograph ``allographs[i]``."""
    n = len(labels)
    params = draw_params(rng, n, style)
    uv, weight = place(labels * NUM_ALLOGRAPHS + allographs, params)
    grid = np.zeros((n, SIZE, SIZE), dtype=np.float64)
    splat(uv, weight, grid)
    density = 1.0 / (SPACING * params.scale_x)
    _distractors(rng, n, style, grid, density)
    ink = coverage(grid, params)  # (N, H, W) in [0, 1]
    return _finish(rng, ink, style)


def _finish(rng: np.random.Generator, ink: np.ndarray, style: Style) -> np.ndarray:
    """Background, gradient, contrast and noise around the ink, quantised to ``uint8``."""
    n = ink.shape[0]
    bg = _u(rng, style.background, n)[:, None, None]
    fg = _u(rng, style.foreground, n)[:, None, None]
    ramp = (np.arange(SIZE, dtype=np.float64) / (SIZE - 1) - 0.5)
    gx, gy = _sym(rng, style.gradient, (n,)), _sym(rng, style.gradient, (n,))
    level = bg + gx[:, None, None] * ramp[None, None, :] + gy[:, None, None] * ramp[None, :, None]
    amp = _u(rng, style.noise, n)[:, None, None]
    noise = amp * (rng.random(ink.shape) + rng.random(ink.shape) - 1.0)  # triangular in [-amp, amp]
    img = level + (fg - level) * ink + noise
    return np.asarray(np.floor(np.clip(img, 0.0, 1.0) * 255.0 + 0.5), dtype=np.uint8)


def generate(n: int, seed: int, style: Style = GLYPHS_STYLE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` balanced images ``uint8 (n, SIZE, SIZE)`` and labels ``int64 (n,)``; identical bytes for a seed."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES)
    allographs = (rng.random(n) >= style.allograph_bias).astype(np.int64)
    images = np.empty((n, SIZE, SIZE), dtype=np.uint8)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        chunk_rng = np.random.default_rng([seed, start // CHUNK])
        images[start:stop] = render(chunk_rng, labels[start:stop], allographs[start:stop], style)
    return images, labels


@functools.lru_cache(maxsize=2)
def glyph_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The fixed ``pool`` or ``test`` split of the ``glyphs`` data set (cached per process)."""
    n, seed = (POOL_SIZE, POOL_SEED) if split == "pool" else (TEST_SIZE, TEST_SEED)
    images, labels = generate(n, seed)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels
