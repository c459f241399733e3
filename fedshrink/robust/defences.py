"""Defences as small config dataclasses in a registry, each building one aggregation stage.

=================  ===========  ===========================================================
name               kind         what it does (per coordinate, over the values clients sent)
=================  ===========  ===========================================================
``median``         combiner     coordinate-wise median
``trimmed-mean``   combiner     drop the ``trim`` share of largest and smallest, average the rest
``bulyan``         combiner     Krum-selected ``n - 2f``, then the ``n_j - 2f`` values nearest the median
``clip``           transform    scale each decoded update to a norm bound (adaptive by default)
``multi-krum``     transform    keep the ``n - f`` clients with the lowest Krum scores
``fltrust``        transform    trust = relu(cosine) to a root update trained on the server's root set
=================  ===========  ===========================================================

``f`` (assumed Byzantine clients) is ``floor(byzantine_fraction * n)`` of the
round's ``n`` good replies. A run's ``defence`` setting names one or more,
joined by ``+`` and applied left to right (``"clip+median"``: clip, then take
the median); at most one combiner. Every config round-trips through JSON
(:meth:`DefenceConfig.to_json` / :func:`defence_from_json`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedshrink.errors import ConfigError
from fedshrink.robust.registry import config_from_json
from fedshrink.robust.rules import (
    bulyan,
    clip_norms,
    coordinate_median,
    fltrust_reweight,
    multi_krum_select,
    norms,
    trimmed_mean,
)
from fedshrink.settings import at_least, between, option, validate_options
from fedshrink.strategy.batch import BoolArray, FloatArray, UpdateBatch
from fedshrink.strategy.stages import Combiner, RoundContext, Stage, Transform

# (global state, round) -> the server's update on its root set, in the global model's shapes
RootUpdate = Callable[[Mapping[str, np.ndarray], int], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class DefenceEnv:
    """What the server provides to defences that need more than the replies."""

    root_update: RootUpdate | None = None


@dataclass(frozen=True)
class DefenceConfig(ABC):
    name: ClassVar[str]
    combines: ClassVar[bool] = False  # builds a Combiner (a run may have at most one)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @abstractmethod
    def build(self, env: DefenceEnv) -> Stage: ...


def _byz(fraction: float, n: int) -> int:
    return int(math.floor(fraction * n))


def _byzantine_fraction() -> Any:
    """The setting multi-krum and bulyan share."""
    return option(0.2, "multi-krum and bulyan: share of the round's replies assumed malicious (f)",
                  rule=between(0, 0.5, hi_open=True), key="byzantine-fraction")


# -- median ------------------------------------------------------------------------------
class _MedianStage(Combiner):
    name = "median"

    def locate(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        return coordinate_median(batch)


@dataclass(frozen=True)
class MedianConfig(DefenceConfig):
    name: ClassVar[str] = "median"
    combines: ClassVar[bool] = True

    def build(self, env: DefenceEnv) -> Stage:
        return _MedianStage()


# -- trimmed mean --------------------------------------------------------------------------
class _TrimmedMeanStage(Combiner):
    name = "trimmed-mean"

    def __init__(self, trim: float) -> None:
        self.trim = trim

    def locate(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        return trimmed_mean(batch, self.trim)


@dataclass(frozen=True)
class TrimmedMeanConfig(DefenceConfig):
    name: ClassVar[str] = "trimmed-mean"
    combines: ClassVar[bool] = True
    trim: float = option(0.2, "trimmed-mean: share dropped at each end, per coordinate",
                         rule=between(0, 0.5, hi_open=True), key="trim-fraction")

    def __post_init__(self) -> None:
        validate_options(self)

    def build(self, env: DefenceEnv) -> Stage:
        return _TrimmedMeanStage(self.trim)


# -- bulyan ---------------------------------------------------------------------------------
class _BulyanStage(Combiner):
    name = "bulyan"

    def __init__(self, byzantine_fraction: float) -> None:
        self.byzantine_fraction = byzantine_fraction

    def locate(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        return bulyan(batch, _byz(self.byzantine_fraction, len(batch)))


@dataclass(frozen=True)
class BulyanConfig(DefenceConfig):
    name: ClassVar[str] = "bulyan"
    combines: ClassVar[bool] = True
    byzantine_fraction: float = _byzantine_fraction()

    def __post_init__(self) -> None:
        validate_options(self)

    def build(self, env: DefenceEnv) -> Stage:
        return _BulyanStage(self.byzantine_fraction)


# -- clip -------------------------------------------------------------------------------------
class _ClipStage(Transform):
    name = "clip"

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def apply(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[UpdateBatch, dict[str, Any]]:
        before = norms(batch)
        out = clip_norms(batch, self.max_norm)
        clipped = [int(c) for c, a, b in zip(batch.clients, before, norms(out), strict=True) if b < a * (1 - 1e-9)]
        return out, {"clipped": clipped}


@dataclass(frozen=True)
class ClipConfig(DefenceConfig):
    name: ClassVar[str] = "clip"
    max_norm: float = option(0.0, "clip: L2 bound of each decoded update",
                             rule=at_least(0).noting("0 = adaptive: RMS per held coordinate capped at the round's "
                                                     "median"), key="clip-norm")

    def __post_init__(self) -> None:
        validate_options(self)

    def build(self, env: DefenceEnv) -> Stage:
        return _ClipStage(float(self.max_norm))


# -- multi-krum ----------------------------------------------------------------------------------
class _MultiKrumStage(Transform):
    name = "multi-krum"

    def __init__(self, byzantine_fraction: float) -> None:
        self.byzantine_fraction = byzantine_fraction

    def apply(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[UpdateBatch, dict[str, Any]]:
        out = multi_krum_select(batch, _byz(self.byzantine_fraction, len(batch)))
        return out, {"rejected": sorted(int(c) for c in set(batch.clients) - set(out.clients))}


@dataclass(frozen=True)
class MultiKrumConfig(DefenceConfig):
    name: ClassVar[str] = "multi-krum"
    byzantine_fraction: float = _byzantine_fraction()

    def __post_init__(self) -> None:
        validate_options(self)

    def build(self, env: DefenceEnv) -> Stage:
        return _MultiKrumStage(self.byzantine_fraction)


# -- fltrust --------------------------------------------------------------------------------------
class _FLTrustStage(Transform):
    name = "fltrust"

    def __init__(self, root_update: RootUpdate) -> None:
        self.root_update = root_update

    def apply(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[UpdateBatch, dict[str, Any]]:
        root = ctx.flatten(self.root_update(ctx.global_state, ctx.server_round))
        out = fltrust_reweight(batch, root)
        return out, {"trust": {str(c): round(float(t), 4) for c, t in zip(out.clients, out.weights, strict=True)}}


@dataclass(frozen=True)
class FLTrustConfig(DefenceConfig):
    name: ClassVar[str] = "fltrust"
    root_size: int = option(100, "fltrust: labelled samples of the server's proxy split used as the root set",
                            rule=at_least(1), key="fltrust-root-size")

    def __post_init__(self) -> None:
        validate_options(self)

    def build(self, env: DefenceEnv) -> Stage:
        if env.root_update is None:
            raise ConfigError("defence", self.name, "a defence other than fltrust when the server has no root set")
        return _FLTrustStage(env.root_update)


DEFENCES: dict[str, type[DefenceConfig]] = {
    cls.name: cls
    for cls in (MedianConfig, TrimmedMeanConfig, BulyanConfig, ClipConfig, MultiKrumConfig, FLTrustConfig)
}


def defence_from_json(text: str | Mapping[str, Any]) -> DefenceConfig:
    return config_from_json("defence", DEFENCES, text)


def parse_defence(text: str) -> list[str]:
    """``"clip+median"`` -> ``["clip", "median"]``; ``"none"`` -> ``[]``; raises :class:`ConfigError`."""
    combiners = [n for n, cls in DEFENCES.items() if cls.combines]
    allowed = "'none' or defences joined by '+' from " + ", ".join(map(repr, sorted(DEFENCES))) + \
        " (at most one of " + ", ".join(map(repr, combiners)) + ")"
    if text == "none":
        return []
    names = text.split("+")
    if any(n not in DEFENCES for n in names) or len(set(names)) != len(names):
        raise ConfigError("defence", text, allowed)
    if sum(DEFENCES[n].combines for n in names) > 1:
        raise ConfigError("defence", text, allowed)
    return names
