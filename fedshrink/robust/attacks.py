"""Simulated malicious clients, for measuring defences (research use).

The ClientApp of a malicious partition (chosen by :func:`malicious_partitions`
from the run's seed and ``attack-fraction``) poisons its data before training
and/or its update after training, before the uplink chain encodes it. Each
attack is a small class with a frozen config, registered in :data:`ATTACKS`:

* ``sign-flip`` -- send ``-scale * update`` (scaled sign flipping).
* ``gaussian`` -- send ``N(0, std^2)`` noise of the update's shape instead of the update.
* ``label-flip`` -- train on labels ``y -> K - 1 - y`` (data poisoning; the update is then honest).
* ``alie`` -- "A little is enough" (Baruch et al., 2019): per coordinate ``mu - z * sigma``.
  The paper's attackers know the benign updates' mean and std. Here each
  attacker estimates them from its own data (the threat model where the
  attackers are ordinary clients): ``mu`` and ``sigma`` over its honest update
  and ``samples - 1`` more updates trained from the same global model on
  bootstrap resamples of its partition. ``z`` defaults to the paper's
  ``z_max`` for ``n`` clients of which ``m`` malicious:
  ``s = floor(n / 2 + 1) - m``, ``z = Phi^-1((n - s) / n)``.

Nothing here knows Flower: the ClientApp passes plain tensors and a callback
that trains one more update on a resample (for ``alie``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np
import torch

from fedshrink.data import LabelledArrays
from fedshrink.errors import ConfigError
from fedshrink.robust.registry import config_from_json
from fedshrink.settings import at_least, greater_than, option, validate_options

Update = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AttackContext:
    """What an attacker may use besides its own update."""

    generator: torch.Generator  # seeded per (run seed, round, partition)
    num_partitions: int
    num_malicious: int
    retrain: Callable[[int], Update] | None = None  # k -> an honest update trained on bootstrap resample k


@dataclass(frozen=True)
class AttackConfig(ABC):
    name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def poison_data(self, data: LabelledArrays, num_classes: int) -> LabelledArrays:
        return data

    @abstractmethod
    def poison_update(self, update: Update, ctx: AttackContext) -> Update: ...


def _float_keys(update: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in update.items() if v.is_floating_point()]


@dataclass(frozen=True)
class SignFlipConfig(AttackConfig):
    name: ClassVar[str] = "sign-flip"
    scale: float = option(10.0, "sign-flip: the attacker sends -scale x its update", rule=greater_than(0),
                          key="attack-scale")

    def __post_init__(self) -> None:
        validate_options(self)

    def poison_update(self, update: Update, ctx: AttackContext) -> Update:
        return {k: (-self.scale * v).to(v.dtype) if v.is_floating_point() else v for k, v in update.items()}


@dataclass(frozen=True)
class GaussianConfig(AttackConfig):
    name: ClassVar[str] = "gaussian"
    std: float = option(1.0, "gaussian: the attacker sends N(0, std^2)", rule=greater_than(0),
                        key="attack-noise-std")

    def __post_init__(self) -> None:
        validate_options(self)

    def poison_update(self, update: Update, ctx: AttackContext) -> Update:
        out = dict(update)
        for k in _float_keys(update):
            v = update[k]
            out[k] = (torch.randn(v.shape, generator=ctx.generator, dtype=torch.float32) * self.std).to(v.dtype)
        return out


@dataclass(frozen=True)
class LabelFlipConfig(AttackConfig):
    name: ClassVar[str] = "label-flip"

    def poison_data(self, data: LabelledArrays, num_classes: int) -> LabelledArrays:
        return LabelledArrays(data.x, (num_classes - 1 - data.y).astype(np.int64))

    def poison_update(self, update: Update, ctx: AttackContext) -> Update:
        return update


def alie_z(num_clients: int, num_malicious: int) -> float:
    """The paper's ``z_max``: ``s = floor(n/2 + 1) - m``, ``z = Phi^-1((n - s) / n)`` (0 when undefined)."""
    n, m = num_clients, num_malicious
    s = math.floor(n / 2 + 1) - m
    p = (n - s) / n if n > 0 else 0.5
    if not 0 < p < 1:
        return 0.0
    return NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class AlieConfig(AttackConfig):
    name: ClassVar[str] = "alie"
    z: float = option(0.0, "alie: how many standard deviations the attackers shift the mean",
                      rule=at_least(0).noting("0 = the paper's z_max for n and m"), key="attack-z")
    samples: int = option(3, "alie: updates each attacker trains to estimate mean and std (its own + bootstrap "
                          "resamples)", rule=at_least(2), key="attack-samples")

    def __post_init__(self) -> None:
        validate_options(self)

    def poison_update(self, update: Update, ctx: AttackContext) -> Update:
        if ctx.retrain is None:
            raise ConfigError("attack", self.name, "an attack that needs no retraining callback here")
        z = self.z or alie_z(ctx.num_partitions, ctx.num_malicious)
        samples = [update] + [ctx.retrain(k) for k in range(1, self.samples)]
        out = dict(update)
        for key in _float_keys(update):
            stack = torch.stack([s[key].to(torch.float32) for s in samples])
            mu, sigma = stack.mean(dim=0), stack.std(dim=0, unbiased=True)
            out[key] = (mu - z * sigma).to(update[key].dtype)
        return out


ATTACKS: dict[str, type[AttackConfig]] = {
    cls.name: cls for cls in (SignFlipConfig, GaussianConfig, LabelFlipConfig, AlieConfig)
}
ATTACK_NAMES = ("none", *ATTACKS)


def attack_from_json(text: str | Mapping[str, Any]) -> AttackConfig:
    return config_from_json("attack", ATTACKS, text)


def malicious_partitions(num_partitions: int, fraction: float, seed: int) -> frozenset[int]:
    """The partitions that attack: ``round(fraction * n)`` of them, drawn from the run's seed."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError("attack-fraction", fraction, "a number in [0, 1]")
    k = int(round(fraction * num_partitions))
    order = np.random.default_rng([seed, 0xA77AC]).permutation(num_partitions)
    return frozenset(int(i) for i in order[:k])
