"""Stroke glyphs and a rasteriser that gives the same bytes on every machine.

Ten glyph classes are drawn as strokes (polylines) in template space
``[-1, 1]^2`` (``y`` points down), two allographs each (two ways of writing
the class, as people do with 7 or 4). A glyph is resampled into points spaced
:data:`SPACING` apart along its strokes; drawing one image is then

1. per-stroke offsets (handwriting: strokes do not quite meet),
2. a smooth warp ``p + a * sin(f * p.yx + phase)`` (a wave; elastic-like),
3. an affine map (rotation, scale, shear, translation) into pixel coordinates,
4. a bilinear splat of the points into a density grid (``np.bincount``),
5. a separable blur with a per-image biweight kernel ``(1 - (k/r)^2)^2``, and
   ``ink = min(1, gain * blurred)``: ``r`` and ``gain`` set the stroke width.

Determinism: the pipeline uses only IEEE-754 basic arithmetic (``+ - * /``,
``sqrt``, ``floor``), explicit sums in a fixed order and ``np.bincount``
(which adds in input order), so the result does not depend on the CPU's
vector units or the platform's libm. Sines come from :func:`poly_sin`, a
polynomial, for that reason; random numbers only from numpy ``Generator``'s
``random`` and ``integers``, whose algorithms are fixed. Images are returned
as ``uint8``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 28  # images are SIZE x SIZE
SPACING = 0.03  # template units between resampled points (about 0.3 px at the base scale)
KERNEL_TAPS = 3  # blur taps each side of the centre (radius <= 3 px)


def poly_sin(x: np.ndarray) -> np.ndarray:
    """``sin(x)`` from a degree-11 Taylor polynomial after reduction to ``[-pi, pi]`` (abs. error < 1e-3).

    Basic arithmetic only, so identical on every IEEE-754 machine.
    """
    two_pi = 2.0 * np.pi
    r = x - two_pi * np.floor(x / two_pi + 0.5)  # in [-pi, pi]
    r2 = r * r
    out = 1.0 - r2 / 110.0  # Horner over x^(2k+1) / (2k+1)!
    for d in (72.0, 42.0, 20.0, 6.0):
        out = 1.0 - r2 / d * out
    return np.asarray(r * out)


def poly_cos(x: np.ndarray) -> np.ndarray:
    return poly_sin(np.asarray(x) + np.pi / 2)


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> list[tuple[float, float]]:
    t = np.linspace(a0, a1, n) * (np.pi / 180.0)
    xs, ys = cx + rx * poly_cos(t), cy + ry * poly_sin(t)
    return [(float(a), float(b)) for a, b in zip(xs, ys, strict=True)]


Stroke = list[tuple[float, float]]

# class -> allographs -> strokes (polylines). Angles in degrees, y down (90 deg points down).
TEMPLATES: tuple[tuple[tuple[Stroke, ...], ...], ...] = (
    (  # 0: ring
        (_arc(0, 0, 0.55, 0.8, 0, 360, 40),),
        (_arc(0, 0, 0.55, 0.8, -60, 290, 40), [(0.3, -0.65), (0.55, -0.95)]),
    ),
    (  # 1: bar
        ([(0.0, -0.85), (0.0, 0.85)],),
        ([(-0.3, -0.55), (0.05, -0.85), (0.05, 0.85)], [(-0.3, 0.85), (0.4, 0.85)]),
    ),
    (  # 2: hook
        ([*_arc(0, -0.4, 0.5, 0.45, 180, 360, 16), (-0.5, 0.85), (0.55, 0.85)],),
        ([*_arc(0, -0.35, 0.5, 0.5, 200, 400, 16), (-0.45, 0.85)], [(-0.45, 0.85), (0.6, 0.75)]),
    ),
    (  # 3: double bowl
        (_arc(0, -0.4, 0.45, 0.42, 200, 450, 18) + _arc(0, 0.42, 0.5, 0.43, 270, 520, 18),),
        ([(-0.45, -0.85), (0.45, -0.85), (-0.05, -0.1), *_arc(0, 0.4, 0.5, 0.45, 260, 520, 18)],),
    ),
    (  # 4: fork
        ([(0.25, 0.85), (0.25, -0.85), (-0.55, 0.35), (0.6, 0.35)],),
        ([(-0.4, -0.85), (-0.5, 0.2), (0.6, 0.2)], [(0.3, -0.5), (0.3, 0.85)]),
    ),
    (  # 5: flag
        ([(0.5, -0.85), (-0.4, -0.85), (-0.45, -0.1), *_arc(0, 0.35, 0.48, 0.48, 240, 500, 18)],),
        ([(-0.4, -0.85), (-0.45, -0.1), *_arc(0, 0.35, 0.48, 0.48, 240, 500, 18)], [(-0.4, -0.85), (0.5, -0.85)]),
    ),
    (  # 6: loop
        (_arc(0.1, -0.3, 0.55, 0.6, 300, 180, 14) + _arc(0, 0.4, 0.45, 0.42, 180, 540, 28),),
        ([(0.4, -0.85), (-0.4, 0.25), *_arc(0, 0.45, 0.42, 0.38, 180, 540, 28)],),
    ),
    (  # 7: angle
        ([(-0.5, -0.85), (0.55, -0.85), (-0.1, 0.85)],),
        ([(-0.5, -0.85), (0.55, -0.85), (-0.1, 0.85)], [(-0.25, 0.0), (0.35, 0.0)]),
    ),
    (  # 8: figure eight
        (_arc(0, -0.42, 0.4, 0.4, 90, 450, 28) + _arc(0, 0.42, 0.48, 0.43, 270, 630, 30),),
        (_arc(0, -0.42, 0.38, 0.4, 0, 360, 26), _arc(0, 0.42, 0.5, 0.43, 0, 360, 30)),
    ),
    (  # 9: tail
        (_arc(0, -0.35, 0.45, 0.45, 0, 360, 28), [(0.45, -0.35), (0.4, 0.85)]),
        (_arc(0, -0.35, 0.45, 0.45, 20, 380, 28), [(0.45, -0.35), *_arc(0, 0.2, 0.45, 0.65, 0, 110, 10)]),
    ),
)
NUM_CLASSES = len(TEMPLATES)
NUM_ALLOGRAPHS = 2


@dataclass(frozen=True)
class GlyphPoints:
    """A template resampled: points ``(P, 2)``, the stroke each belongs to ``(P,)``, position along it ``(P,)``
    (or several stacked, with a leading axis)."""

    points: np.ndarray
    stroke: np.ndarray
    along: np.ndarray  # in [0, 1] over the whole glyph


def resample(strokes: tuple[Stroke, ...], spacing: float = SPACING) -> GlyphPoints:
    """Points every ``spacing`` template units along each stroke (end points included)."""
    pts, ids, dist = [], [], []
    total = 0.0
    for sid, stroke in enumerate(strokes):
        p = np.asarray(stroke, dtype=np.float64)  # (V, 2)
        seg = p[1:] - p[:-1]
        lengths = np.sqrt(seg[:, 0] * seg[:, 0] + seg[:, 1] * seg[:, 1])
        cum = np.concatenate([[0.0], np.cumsum(lengths)])
        s = np.arange(0.0, cum[-1], spacing)
        s = np.append(s, cum[-1])
        k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
        frac = (s - cum[k]) / np.where(lengths[k] > 0, lengths[k], 1.0)
        pts.append(p[k] + seg[k] * frac[:, None])
        ids.append(np.full(len(s), sid, dtype=np.int64))
        dist.append(total + s)
        total += float(cum[-1])
    along = np.concatenate(dist) / total
    return GlyphPoints(np.concatenate(pts), np.concatenate(ids), along)


def pad_glyphs(glyphs: list[GlyphPoints]) -> GlyphPoints:
    """Several resampled templates stacked into ``(G, P_max, ...)`` arrays; padding points have ``along = -1``."""
    p_max = max(len(g.points) for g in glyphs)
    points = np.zeros((len(glyphs), p_max, 2))
    stroke = np.zeros((len(glyphs), p_max), dtype=np.int64)
    along = np.full((len(glyphs), p_max), -1.0)
    for i, g in enumerate(glyphs):
        k = len(g.points)
        points[i, :k], stroke[i, :k], along[i, :k] = g.points, g.stroke, g.along
    return GlyphPoints(points, stroke, along)


# every (class, allograph) resampled and padded: index class * NUM_ALLOGRAPHS + allograph
GLYPHS = pad_glyphs([resample(a) for cls in TEMPLATES for a in cls])
MAX_STROKES = max(len(a) for cls in TEMPLATES for a in cls)


@dataclass(frozen=True)
class DrawParams:
    """Per-image drawing parameters, each an array over the ``N`` images of a batch.

    Lengths in pixels, angles in radians. ``scale`` is pixels per template unit.
    """

    rotation: np.ndarray  # (N,)
    scale_x: np.ndarray  # (N,)
    scale_y: np.ndarray  # (N,)
    shear: np.ndarray  # (N,) x += shear * y
    shift: np.ndarray  # (N, 2) pixels
    stroke_jitter: np.ndarray  # (N, MAX_STROKES, 2) template units, per-stroke offsets
    wave_amp: np.ndarray  # (N, 2) template units
    wave_freq: np.ndarray  # (N, 2) radians per template unit
    wave_phase: np.ndarray  # (N, 2)
    gap_start: np.ndarray  # (N,) position along the glyph where a gap starts
    gap_length: np.ndarray  # (N,) 0 = no gap
    blur_radius: np.ndarray  # (N,) > 1 pixel
    ink_gain: np.ndarray  # (N,) >= 1: larger = thicker, harder strokes


def place(glyph: np.ndarray, p: DrawParams) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(N, P, 2)`` of the points of glyph ``glyph[i]`` (an index into :data:`GLYPHS`)
    under each image's parameters, and their weights ``(N, P)`` (0 in a gap and for padding)."""
    n = len(glyph)
    stroke = GLYPHS.stroke[glyph]  # (N, P)
    pts = GLYPHS.points[glyph] + p.stroke_jitter[np.arange(n)[:, None], stroke]  # (N, P, 2)
    x, y = pts[..., 0], pts[..., 1]
    amp, freq, phase = p.wave_amp[:, None, :], p.wave_freq[:, None, :], p.wave_phase[:, None, :]
    x = x + amp[..., 0] * poly_sin(freq[..., 0] * y + phase[..., 0])  # (N, P)
    y = y + amp[..., 1] * poly_sin(freq[..., 1] * x + phase[..., 1])
    x = x + p.shear[:, None] * y
    x, y = x * p.scale_x[:, None], y * p.scale_y[:, None]
    c, s = poly_cos(p.rotation)[:, None], poly_sin(p.rotation)[:, None]
    centre = (SIZE - 1) / 2.0
    u = c * x - s * y + centre + p.shift[:, 0:1]
    v = s * x + c * y + centre + p.shift[:, 1:2]
    along = GLYPHS.along[glyph]  # (N, P), -1 = padding
    after = along - p.gap_start[:, None]
    weight = np.where(((after >= 0.0) & (after < p.gap_length[:, None])) | (along < 0.0), 0.0, 1.0)  # (N, P)
    return np.stack([u, v], axis=-1), weight


def splat(uv: np.ndarray, weight: np.ndarray, grid: np.ndarray) -> None:
    """Add points ``uv`` ``(N, P, 2)`` with ``weight`` ``(N, P)`` bilinearly into ``grid`` ``(N, SIZE, SIZE)``."""
    n = uv.shape[0]
    u, v = uv[..., 0], uv[..., 1]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    base = (np.arange(n, dtype=np.int64) * (SIZE * SIZE))[:, None]
    u0i, v0i = u0.astype(np.int64), v0.astype(np.int64)
    idx, wts = [], []
    for du, dv, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        iu, iv = u0i + du, v0i + dv
        ok = (iu >= 0) & (iu < SIZE) & (iv >= 0) & (iv < SIZE) & (weight > 0)
        idx.append((base + iv * SIZE + iu)[ok])
        wts.append((w * weight)[ok])
    flat = grid.reshape(-1)
    flat += np.bincount(np.concatenate(idx), weights=np.concatenate(wts), minlength=flat.size)


def blur_kernels(radius: np.ndarray) -> np.ndarray:
    """Normalised biweight kernels ``(N, 2*KERNEL_TAPS+1)``: ``w_k = max(0, 1 - (k/r)^2)^2 / sum``."""
    k = np.arange(-KERNEL_TAPS, KERNEL_TAPS + 1, dtype=np.float64)[None, :]
    q = np.maximum(0.0, 1.0 - (k / radius[:, None]) ** 2)
    w = q * q
    total = w[:, 0].copy()
    for j in range(1, w.shape[1]):  # a fixed order of additions
        total = total + w[:, j]
    return np.asarray(w / total[:, None])


def blur(grid: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Separable blur of ``grid`` ``(N, H, W)`` with per-image 1-D ``kernels`` ``(N, T)`` along both axes."""
    t = KERNEL_TAPS
    out = grid
    for axis in (1, 2):
        shape = list(out.shape)
        shape[axis] += 2 * t
        padded = np.zeros(shape, dtype=out.dtype)  # zero padding (np.pad's, without its per-call set-up)
        if axis == 1:
            padded[:, t : t + out.shape[1], :] = out
        else:
            padded[:, :, t : t + out.shape[2]] = out
        acc = np.zeros_like(out)
        for j in range(2 * t + 1):
            window = padded[:, j : j + SIZE, :] if axis == 1 else padded[:, :, j : j + SIZE]
            acc = acc + kernels[:, j, None, None] * window
        out = acc
    return out


def coverage(grid: np.ndarray, p: DrawParams) -> np.ndarray:
    """Stroke coverage in ``[0, 1]`` ``(N, SIZE, SIZE)`` from a point-density grid.

    A line of points ``SPACING * scale`` pixels apart has a density of
    ``rho = 1 / (SPACING * scale)`` per pixel of length; after the blur its
    centre holds about ``rho * c0`` (``c0`` the kernel's centre weight), so
    ``ink = min(1, gain * blurred / (rho * c0))`` saturates the middle of a
    stroke, wider for a larger ``gain`` or ``r``, whatever the scale.
    """
    kernels = blur_kernels(p.blur_radius)
    density = 1.0 / (SPACING * np.sqrt(p.scale_x * p.scale_y))
    centre = kernels[:, KERNEL_TAPS]
    norm = p.ink_gain / (density * centre)  # (N,)
    return np.asarray(np.minimum(1.0, blur(grid, kernels) * norm[:, None, None]))
