"""Fragment policies: which channels a client at width ``w`` keeps in a round.

Each policy is a small class with a frozen config dataclass, registered by name
in :data:`POLICIES`; every one keeps ``channels(size, w)`` channels of every
group (the same rounding rule as :func:`fedshrink.models.channels`), so the
fragment always loads into ``build_model(model_spec.at_width(w))`` when the
global model is at width 1.

* ``static`` -- HeteroFL (Diao et al., 2021): the prefix ``0..k-1``.
* ``rolling`` -- FedRolex (Alam et al., 2022): a window of ``k`` consecutive
  channels starting at ``((round - 1) * step) mod size``, wrapping around, so
  every channel is trained by small clients over ``size / step`` rounds.
* ``random`` -- Federated Dropout (Caldas et al., 2018): a uniform random
  ``k``-subset per group, drawn from a generator seeded by
  ``(seed, round, client)``: reproducible, different per client and round.
"""

from __future__ import annotations

import dataclasses
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedshrink.errors import ConfigError
from fedshrink.fragments.graph import LayerGraph
from fedshrink.fragments.spec import FragmentSpec, Indices
from fedshrink.models.registry import channels
from fedshrink.settings import at_least, option, validate_options

ClientKey = int | str


def client_seed(client_key: ClientKey) -> int:
    """A stable non-negative integer for a client id (node id or partition name)."""
    if isinstance(client_key, int | np.integer) and not isinstance(client_key, bool) and client_key >= 0:
        return int(client_key)
    digest = hashlib.sha256(str(client_key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class PolicyConfig:
    """Base of policy configs; subclasses add their settings."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StaticConfig(PolicyConfig):
    pass


@dataclass(frozen=True)
class RollingConfig(PolicyConfig):
    step: int = option(1, "rolling policy: channels the window advances per round", rule=at_least(1),
                       key="rolling-step")

    def __post_init__(self) -> None:
        validate_options(self)


@dataclass(frozen=True)
class RandomConfig(PolicyConfig):
    seed: int = 0  # the strategy derives it from the run's seed

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("fragments.random.seed", self.seed, "an integer >= 0")


class FragmentPolicy(ABC):
    """Plans a client's :class:`FragmentSpec` for a round."""

    name: ClassVar[str]
    config_cls: ClassVar[type[PolicyConfig]]

    def __init__(self, config: PolicyConfig | None = None) -> None:
        config = self.config_cls() if config is None else config
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"fragments.{self.name}", config, f"a {self.config_cls.__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def spec_for(self, graph: LayerGraph, width: float, server_round: int, client_key: ClientKey) -> FragmentSpec:
        """Kept indices of every group of ``graph`` for this client and round."""
        if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width <= 1:
            raise ConfigError("fragments.width", width, "a number in (0, 1]")
        if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
            raise ConfigError("fragments.server_round", server_round, "an integer >= 0")
        sizes = graph.group_sizes()
        rng = self._rng(server_round, client_key)
        kept = {g: self.indices(n, channels(n, width), server_round, rng) for g, n in sizes.items()}
        return FragmentSpec(kept, sizes, float(width))

    def _rng(self, server_round: int, client_key: ClientKey) -> np.random.Generator | None:
        return None

    @abstractmethod
    def indices(self, size: int, keep: int, server_round: int, rng: np.random.Generator | None) -> Indices:
        """Sorted ``keep`` indices out of ``size`` (``1 <= keep <= size``)."""


class StaticPolicy(FragmentPolicy):
    name = "static"
    config_cls = StaticConfig

    def indices(self, size: int, keep: int, server_round: int, rng: np.random.Generator | None) -> Indices:
        return np.arange(keep, dtype=np.int64)


class RollingPolicy(FragmentPolicy):
    name = "rolling"
    config_cls = RollingConfig

    def indices(self, size: int, keep: int, server_round: int, rng: np.random.Generator | None) -> Indices:
        assert isinstance(self.config, RollingConfig)
        start = (max(server_round - 1, 0) * self.config.step) % size
        return np.sort((start + np.arange(keep, dtype=np.int64)) % size)


class RandomPolicy(FragmentPolicy):
    name = "random"
    config_cls = RandomConfig

    def _rng(self, server_round: int, client_key: ClientKey) -> np.random.Generator:
        assert isinstance(self.config, RandomConfig)
        return np.random.default_rng([self.config.seed, server_round, client_seed(client_key)])

    def indices(self, size: int, keep: int, server_round: int, rng: np.random.Generator | None) -> Indices:
        assert rng is not None
        return np.sort(rng.choice(size, size=keep, replace=False).astype(np.int64))


POLICIES: dict[str, type[FragmentPolicy]] = {cls.name: cls for cls in (StaticPolicy, RollingPolicy, RandomPolicy)}


def make_policy(name: str, **options: Any) -> FragmentPolicy:
    """``make_policy("rolling", step=2)``; unknown names or options raise :class:`ConfigError`."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ConfigError("fragments.policy", name, "one of " + ", ".join(map(repr, sorted(POLICIES))))
    allowed = {f.name for f in dataclasses.fields(cls.config_cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"fragments.{name}", unknown[0], "one of " + (", ".join(sorted(allowed)) or "no options"))
    return cls(cls.config_cls(**options))
