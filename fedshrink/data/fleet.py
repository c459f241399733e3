"""Generated fleets: data sets whose clients are writers, each generated on demand.

A fleet is FEMNIST-like: client ``i`` is writer ``i`` with a style of its own
(slant, rotation, size, aspect, stroke width and pressure, handwriting
jitter, gaps, clutter, background, contrast and noise, which allograph it
writes for each class) and a skewed label distribution, so clients differ in
how their data looks as well as in which labels they hold.

Writer ``i``'s data is a pure function of ``(seed, role, i)``: it is
generated when asked for (a few milliseconds for 50 images) and never held
for the whole population, so memory does not depend on the number of
writers. The server's ``test`` and ``proxy`` splits come from writers held
out of the population (roles ``TEST`` and ``PROXY``: other random streams,
never a client's).

:data:`FLEETS` holds the registered fleets by data-set name; ``writers``
draws glyphs (:mod:`fedshrink.data.glyphs`) in each writer's style.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from fedshrink.data.glyphs import GLYPHS_STYLE, Range, Style, render
from fedshrink.data.sources import LabelledArrays
from fedshrink.data.strokes import NUM_CLASSES, SIZE
from fedshrink.errors import ConfigError, DataError

CLIENT, TEST, PROXY = 0, 1, 2  # roles: separate random streams per role
FLEET_SEED = 20_250_201
TEST_WRITERS = 100
PROXY_WRITERS = 50
LABEL_SKEW = 4  # a writer's class weights are u^LABEL_SKEW, u uniform: larger = more skewed


@dataclass(frozen=True)
class FleetSpec:
    """How big a fleet is: ``writers`` clients holding ``samples[0]..samples[1]`` images each."""

    writers: int = 1000
    samples: tuple[int, int] = (16, 64)
    seed: int = FLEET_SEED

    def __post_init__(self) -> None:
        if self.writers < 1:
            raise ConfigError("fleet-writers", self.writers, "an integer >= 1")
        lo, hi = self.samples
        if not 1 <= lo <= hi:
            raise ConfigError("samples-per-writer", f"{lo}-{hi}", "'N' or 'LO-HI' with 1 <= LO <= HI")


def parse_samples(text: str) -> tuple[int, int]:
    """``"50"`` -> ``(50, 50)``; ``"16-64"`` -> ``(16, 64)``; anything else is a :class:`ConfigError`."""
    parts = str(text).split("-")
    allowed = "'N' or 'LO-HI' with 1 <= LO <= HI (images per writer)"
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ConfigError("samples-per-writer", text, allowed)
    lo, hi = int(parts[0]), int(parts[-1])
    if not 1 <= lo <= hi:
        raise ConfigError("samples-per-writer", text, allowed)
    return lo, hi


class Fleet(ABC):
    """A data set of ``spec.writers`` clients, each generated on demand, plus held-out server splits."""

    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec

    @abstractmethod
    def writer(self, role: int, index: int) -> LabelledArrays:
        """The data of writer ``index`` in ``role`` (:data:`CLIENT`, :data:`TEST` or :data:`PROXY`)."""

    def client(self, index: int) -> LabelledArrays:
        if not 0 <= index < self.spec.writers:
            raise DataError(f"writer {index} is outside the fleet's [0, {self.spec.writers})")
        return self.writer(CLIENT, index)

    def held_out(self, role: int, writers: int) -> LabelledArrays:
        parts = [self.writer(role, i) for i in range(writers)]
        return LabelledArrays(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _around(rng: np.random.Generator, span: Range, spread: float) -> Range:
    """A writer's own narrow range: a centre drawn uniformly in ``span``, +- ``spread``."""
    c = span[0] + (span[1] - span[0]) * float(rng.random())
    return (c - spread, c + spread)


def writer_style(rng: np.random.Generator, base: Style = GLYPHS_STYLE) -> Style:
    """A writer's style: each of ``base``'s ranges narrowed around a centre of the writer's own."""
    return replace(
        base,
        rotation=_around(rng, (-15.0, 15.0), 4.0),
        scale=_around(rng, base.scale, 0.4),
        aspect=_around(rng, base.aspect, 0.04),
        shear=_around(rng, (-0.45, 0.45), 0.06),
        shift=2.0,
        jitter=base.jitter * float(rng.random()),
        wave_amp=(0.0, base.wave_amp[1] * float(rng.random())),
        gap_prob=base.gap_prob * 2.0 * float(rng.random()),
        blur_radius=_around(rng, base.blur_radius, 0.12),
        ink_gain=_around(rng, base.ink_gain, 0.15),
        distractors=(0.0, float(rng.integers(0, 3))),
        blobs=(0.0, float(rng.integers(0, 2))),
        background=_around(rng, base.background, 0.03),
        foreground=_around(rng, base.foreground, 0.05),
        noise=_around(rng, base.noise, 0.01),
    )


def skewed_labels(rng: np.random.Generator, n: int, skew: int = LABEL_SKEW) -> np.ndarray:
    """``n`` labels from class weights ``u_k^skew`` (``u_k`` uniform): a skewed, writer-specific mix."""
    u = rng.random(NUM_CLASSES)
    w = u.copy()
    for _ in range(skew - 1):
        w = w * u
    cum = np.cumsum(w)  # sequential: the same sums on every machine
    labels = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
    return np.asarray(labels.clip(0, NUM_CLASSES - 1), dtype=np.int64)


class GlyphWriters(Fleet):
    """Writers of the ten stroke glyphs, 28x28 grey, each in a style of its own (see the module doc)."""

    num_classes = NUM_CLASSES
    input_shape = (1, SIZE, SIZE)

    def writer(self, role: int, index: int) -> LabelledArrays:
        images, labels = writer_glyphs(self.spec, role, index)
        return LabelledArrays((images.astype(np.float32) / 255.0)[:, None, :, :], labels)  # (N, 1, 28, 28)


def writer_glyphs(spec: FleetSpec, role: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Writer ``index``'s images ``uint8 (N, 28, 28)`` and labels ``int64 (N,)``; a pure function of its arguments."""
    rng = np.random.default_rng([spec.seed, role, index])
    style = writer_style(rng)
    habit = (rng.random(NUM_CLASSES) < 0.5).astype(np.int64)  # the allograph this writer uses for each class
    lo, hi = spec.samples
    n = int(rng.integers(lo, hi + 1))
    labels = skewed_labels(rng, n)
    slips = rng.random(n) < 0.1  # now and then the other allograph
    allographs = np.where(slips, 1 - habit[labels], habit[labels])
    return render(rng, labels, allographs, style), labels


FleetFactory = Callable[[FleetSpec], Fleet]
FLEETS: dict[str, FleetFactory] = {"writers": GlyphWriters}


@functools.lru_cache(maxsize=4)
def load_fleet(name: str, spec: FleetSpec) -> Fleet:
    if name not in FLEETS:
        raise DataError(f"unknown fleet {name!r}; known: {', '.join(sorted(FLEETS))}")
    return FLEETS[name](spec)
