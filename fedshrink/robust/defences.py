"""Defences as small config dataclasses in a registry, each building one aggregation stage.

=================  ===========  ===========================================================
name               kind         what it does (per coordinate, over the values clients sent)
=================  ===========  ===========================================================
``median``         combiner     coordinate-wise median
``trimmed-mean``   combiner     drop ``floor(trim * holders_j)`` largest and smallest, average the rest
``bulyan``         combiner     Krum-selected ``n - 2f``, then the ``n_j - 2f`` values nearest the median
``clip``           transform    scale each decoded update to a norm bound (adaptive by default)
``multi-krum``     transform    keep the ``n - f`` clients with the lowest Krum scores
``fltrust``        transform    trust = relu(cosine) to a root update trained on the server's root set
=================  ===========  ===========================================================

``f`` (assumed Byzantine clients) is ``floor(byzantine_fraction * n)`` of the
round's ``n`` good replies. The three combiners first drop a reply whose
update RMS is more than ``rule-screen-z`` robust z-scores above the round's
(the norm guard's test, :class:`~.guard.NormGuard`, as a stage before the
combiner: a scaled update is evidence enough, and capping it would still let
its direction in), then cap every remaining update's RMS at the round's
median, and use the rule's value only where a coordinate's senders
outnumber twice the attackers there may be among its holders
(:func:`~.rules.quorum`, with ``trim`` as the fraction for the trimmed mean);
elsewhere the coordinate gets the holder mean of the capped updates (see
:class:`_VotingCombiner`).
A run's ``defence`` setting names one or more, joined by ``+`` and applied
left to right (``"clip+median"``: clip, then take the median); at most one
combiner. Every config round-trips through JSON
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
import numpy.typing as npt

from fedshrink.errors import ConfigError
from fedshrink.robust.guard import NormGuard
from fedshrink.robust.registry import config_from_json
from fedshrink.robust.rules import (
    bucket_means,
    bulyan_among,
    bulyan_select,
    clip_norms,
    coordinate_median,
    fltrust_reweight,
    multi_krum_select,
    norms,
    quorum,
    trimmed_mean,
)
from fedshrink.settings import at_least, between, option, validate_options
from fedshrink.strategy.batch import BoolArray, FloatArray, UpdateBatch
from fedshrink.strategy.stages import Combiner, RoundContext, Stage, Transform, holder_mean

# (global state, round) -> the server's update on its root set, in the global model's shapes
RootUpdate = Callable[[Mapping[str, np.ndarray], int], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class DefenceEnv:
    """What the server provides to defences that need more than the replies."""

    root_update: RootUpdate | None = None
    seed: int = 0  # the run's seed (bucketing draws its groups from it)


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

    def stages(self, env: DefenceEnv) -> list[Stage]:
        """The stages this defence puts in a run, in order (one for most; a screen first for the combiners)."""
        return [self.build(env)]


def _byz(fraction: float, n: int) -> int:
    return int(math.floor(fraction * n))


def _screen_z() -> Any:
    """The setting the three combiners share: their norm screen."""
    return option(5.0, "median, trimmed-mean and bulyan: drop a reply whose update RMS is more than this many "
                  "robust z-scores above the round's before voting (the norm guard's test)",
                  rule=at_least(0).noting("0 = off"), key="rule-screen-z")


class _ScreenedCombinerConfig(DefenceConfig):
    """A combiner's config: a norm screen (``rule-screen-z``) runs before its vote."""

    combines: ClassVar[bool] = True
    screen_z: float

    def stages(self, env: DefenceEnv) -> list[Stage]:
        screen: list[Stage] = [NormGuard(self.screen_z, setting="rule-screen-z")] if self.screen_z > 0 else []
        return [*screen, self.build(env)]


def _bucket() -> Any:
    """The setting the median and the trimmed mean share: the size of the groups they vote over."""
    return option(1, "median and trimmed-mean: vote over the means of random groups of this many replies "
                  "(bucketing, Karimireddy et al. 2022), assuming this many times the attackers' share of the "
                  "groups spoilt; 1 = vote over the replies themselves",
                  rule=between(1, 8), key="rule-bucket")


def _byzantine_fraction() -> Any:
    """The setting multi-krum and bulyan share."""
    return option(0.2, "median, multi-krum and bulyan: share of the round's replies (median, bulyan: of each "
                  "coordinate's holders) assumed malicious (f)",
                  rule=between(0, 0.5, hi_open=True), key="byzantine-fraction")


class _VotingCombiner(Combiner):
    """A coordinate-wise rule over the values clients sent, trusted only where there is a quorum.

    1. Every update's RMS is capped at the round's median
       (:func:`~.rules.clip_norms`): no update is worth more than a typical one.
    2. The rule votes per coordinate on the values clients sent; its value is
       used only where a coordinate's senders outnumber twice the attackers
       there may be among its holders (:func:`~.rules.quorum`).
    3. With top-k uplinks most coordinates have one or two senders in a
       round, and no coordinate-wise rule can tell an attacker's lone value
       from an honest one there: those coordinates get the holder mean of the
       capped updates (of the rows the rule selected, for Bulyan).
    """

    def __init__(self, byzantine_fraction: float, bucket: int = 1, seed: int = 0) -> None:
        self.byzantine_fraction = byzantine_fraction
        self.bucket, self.seed = bucket, seed
        # voting over groups: a group with an attacker in it is spoilt, so up to `bucket` times the share may be
        self.vote_fraction = min(byzantine_fraction * bucket, 0.49) if bucket > 1 else byzantine_fraction

    def combine(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        batch = clip_norms(batch)
        sent = batch.over_sent()
        rows = self.select(sent)
        held = batch.held.sum(axis=0)
        holders, senders = held, batch.sent.sum(axis=0)
        if self.bucket > 1:  # the vote is over group means, counted in groups
            rng = np.random.default_rng([self.seed, ctx.server_round, 0xB0C])
            sent, holders, senders = bucket_means(batch, self.bucket, rng)
        location, _ = self.locate_among(sent, holders, rows)
        moves = quorum(holders, senders, self.vote_fraction)
        bounded, voted = holder_mean(batch if rows is None else batch.take(rows))
        delta: FloatArray = np.where(moves, location * batch.sent_share(), bounded)
        return delta, (held > 0) & (voted | moves)

    def locate(self, sent: UpdateBatch, ctx: RoundContext) -> tuple[FloatArray, BoolArray]:
        return self.locate_among(sent, sent.held.sum(axis=0), self.select(sent))

    def select(self, sent: UpdateBatch) -> list[int] | None:
        """The replies the rule keeps before voting (None: all); the bounded mean uses only those."""
        return None

    @abstractmethod
    def locate_among(self, sent: UpdateBatch, holders: npt.NDArray[np.int64], rows: list[int] | None
                     ) -> tuple[FloatArray, BoolArray]:
        """The location of the sent values of ``rows`` (None: all), knowing how many held each coordinate."""


# -- median ------------------------------------------------------------------------------
class _MedianStage(_VotingCombiner):
    name = "median"

    def locate_among(self, sent: UpdateBatch, holders: npt.NDArray[np.int64], rows: list[int] | None
                     ) -> tuple[FloatArray, BoolArray]:
        return coordinate_median(sent)


@dataclass(frozen=True)
class MedianConfig(_ScreenedCombinerConfig):
    name: ClassVar[str] = "median"
    byzantine_fraction: float = _byzantine_fraction()
    screen_z: float = _screen_z()
    bucket: int = _bucket()

    def __post_init__(self) -> None:
        validate_options(self)

    def build(self, env: DefenceEnv) -> Stage:
        return _MedianStage(self.byzantine_fraction, self.bucket, env.seed)


# -- trimmed mean --------------------------------------------------------------------------
class _TrimmedMeanStage(_VotingCombiner):
    name = "trimmed-mean"

    def locate_among(self, sent: UpdateBatch, holders: npt.NDArray[np.int64], rows: list[int] | None
                     ) -> tuple[FloatArray, BoolArray]:
        return trimmed_mean(sent, self.vote_fraction, holders)


@dataclass(frozen=True)
class TrimmedMeanConfig(_ScreenedCombinerConfig):
    name: ClassVar[str] = "trimmed-mean"
    trim: float = option(0.2, "trimmed-mean: share of each coordinate's holders dropped at each end (of the "
                         "groups' when rule-bucket > 1: this times rule-bucket, at most 0.49)",
                         rule=between(0, 0.5, hi_open=True), key="trim-fraction")
    screen_z: float = _screen_z()
    bucket: int = _bucket()

    def __post_init__(self) -> None:
        validate_options(self)

    def build(self, env: DefenceEnv) -> Stage:
        return _TrimmedMeanStage(self.trim, self.bucket, env.seed)


# -- bulyan ---------------------------------------------------------------------------------
class _BulyanStage(_VotingCombiner):
    name = "bulyan"

    def select(self, sent: UpdateBatch) -> list[int] | None:
        return bulyan_select(sent, _byz(self.byzantine_fraction, len(sent)))

    def locate_among(self, sent: UpdateBatch, holders: npt.NDArray[np.int64], rows: list[int] | None
                     ) -> tuple[FloatArray, BoolArray]:
        chosen = sent if rows is None else sent.take(rows)
        return bulyan_among(chosen, _byz(self.byzantine_fraction, len(sent)))


@dataclass(frozen=True)
class BulyanConfig(_ScreenedCombinerConfig):
    name: ClassVar[str] = "bulyan"
    byzantine_fraction: float = _byzantine_fraction()
    screen_z: float = _screen_z()

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
