"""Privacy accounting with Google's ``dp-accounting`` (Renyi DP), for the sampling fedshrink does.

fedshrink samples a fixed number ``m`` of the ``N`` connected clients each
round, uniformly without replacement (:func:`fedshrink.strategy.rounds.sample_nodes`).
The matching event is ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))``
under the replace-one neighbouring relation (the RDP bound of Wang, Balle and
Kasiviswanathan, AISTATS 2019, Theorem 27, as ``dp_accounting.rdp.RdpAccountant``
computes it). Why ``z / 2``: the library's noise multiplier is the noise std
over the sensitivity of the released sum, and replacing one client's data can
move its clipped update from ``c`` to ``c'`` with ``||c - c'|| <= 2C``; the
noise std ``z C`` on the sum is ``z / 2`` of that. (Poisson sampling with
add-or-remove neighbours would have sensitivity ``C`` and a smaller epsilon,
but it is not how fedshrink samples.)

A :class:`Ledger` keeps the events of the rounds released so far; one
round's Renyi divergences are computed once per distinct event (cached) and
summed, and epsilon at ``delta`` is the library's conversion
(``rdp_privacy_accountant.compute_epsilon``, Canonne-Kamath-Steinke 2020, Prop. 12).

:func:`calibrate` finds the ``z`` for which ``T`` rounds spend a target epsilon
(bisection on the accountant). :func:`local_epsilon` is the guarantee of one
client's own noisy replies in distributed mode (no sampling amplification: the
server knows whom it sampled): Gaussian releases compose to one Gaussian with
``sigma^-2 = sum_r sigma_r^-2``, whose epsilon is exact (analytic Gaussian
mechanism, Balle and Wang, ICML 2018: ``dp_accounting.get_epsilon_gaussian``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import dp_accounting

logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting warns per RDP order that does not converge


def _dp() -> ModuleType:
    """``dp_accounting``, imported on first use: it pulls in scipy's stats (seconds) and most runs have no DP."""
    return importlib.import_module("dp_accounting")


def _rdp() -> ModuleType:
    """``dp_accounting.rdp.rdp_privacy_accountant``, imported on first use (see :func:`_dp`)."""
    return importlib.import_module("dp_accounting.rdp.rdp_privacy_accountant")


@dataclass(frozen=True)
class RoundEvent:
    """One released round: ``sampled`` of ``population`` clients, noise std ``multiplier * C`` on the sum."""

    population: int
    sampled: int
    multiplier: float  # z: noise std over the bound C (so the replace-one multiplier is z / 2)

    def __post_init__(self) -> None:
        if not 1 <= self.sampled <= self.population:
            raise ValueError(f"sampled {self.sampled} of a population of {self.population}")
        if not (self.multiplier >= 0 and math.isfinite(self.multiplier)):
            raise ValueError(f"noise multiplier {self.multiplier}")

    def dp_event(self) -> dp_accounting.DpEvent:
        """The event ``dp-accounting`` composes (replace-one relation)."""
        dp = _dp()
        if self.multiplier == 0:
            return dp.NonPrivateDpEvent()
        gaussian = dp.GaussianDpEvent(self.multiplier / 2)
        return dp.SampledWithoutReplacementDpEvent(self.population, self.sampled, gaussian)

    def to_list(self) -> list[float]:
        return [self.population, self.sampled, self.multiplier]


# Renyi orders: the optimum for epsilon between about 0.2 and 100 at delta >= 1e-6 lies inside. Fewer orders
# than the library's default (which reaches 1024) cost a sampled-without-replacement round 0.1 s instead of
# 0.7-1 s; any order gives a valid bound, so a coarser grid can only overstate epsilon, never understate it.
ORDERS: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0,
                             14.0, 16.0, 20.0, 24.0, 28.0, 32.0, 40.0, 48.0, 64.0, 96.0, 128.0)


@functools.lru_cache(maxsize=512)
def round_rdp(event: RoundEvent) -> tuple[float, ...]:
    """Renyi divergences of one round at :data:`ORDERS` (inf for no noise)."""
    accountant = _rdp().RdpAccountant(orders=ORDERS, neighboring_relation=_dp().NeighboringRelation.REPLACE_ONE)
    accountant.compose(event.dp_event())
    return tuple(float(v) for v in accountant.rdp)


def epsilon_of(counts: Mapping[RoundEvent, int], delta: float) -> float:
    """Epsilon at ``delta`` of the composition of ``counts`` rounds of each event (0 for none)."""
    if not counts:
        return 0.0
    total = np.zeros(len(ORDERS))
    for event, count in counts.items():
        total += count * np.asarray(round_rdp(event))
    if not np.all(np.isfinite(total)):
        return math.inf
    return float(_rdp().compute_epsilon(ORDERS, total, delta)[0])


@dataclass
class Ledger:
    """The rounds released so far and epsilon at a delta."""

    counts: dict[RoundEvent, int] = field(default_factory=dict)

    def compose(self, event: RoundEvent, count: int = 1) -> None:
        self.counts[event] = self.counts.get(event, 0) + count

    @property
    def rounds(self) -> int:
        return sum(self.counts.values())

    def epsilon(self, delta: float) -> float:
        return epsilon_of(self.counts, delta)

    def epsilon_after(self, event: RoundEvent, delta: float) -> float:
        """Epsilon if one more round of ``event`` were released."""
        return epsilon_of({**self.counts, event: self.counts.get(event, 0) + 1}, delta)

    def to_state(self) -> list[list[float]]:
        return [[*e.to_list(), c] for e, c in self.counts.items()]

    @classmethod
    def from_state(cls, state: Any) -> Ledger:
        ledger = cls()
        for population, sampled, multiplier, count in state:
            ledger.compose(RoundEvent(int(population), int(sampled), float(multiplier)), int(count))
        return ledger


@functools.lru_cache(maxsize=64)
def calibrate(population: int, sampled: int, rounds: int, target_epsilon: float, delta: float,
              rel_tol: float = 1e-2) -> float:
    """The smallest ``z`` (to ``rel_tol``) for which ``rounds`` rounds of ``RoundEvent(population, sampled, z)``
    spend at most ``target_epsilon`` at ``delta`` (epsilon falls as ``z`` grows)."""
    if target_epsilon <= 0 or rounds < 1:
        raise ValueError(f"calibration needs a target epsilon > 0 and rounds >= 1, got {target_epsilon}, {rounds}")

    def spent(z: float) -> float:
        return epsilon_of({RoundEvent(population, sampled, z): rounds}, delta)

    lo, hi = 0.0, 1.0
    while spent(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"no noise multiplier below 1e6 reaches epsilon {target_epsilon} at delta {delta}")
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if spent(mid) <= target_epsilon else (mid, hi)
    return hi


def local_epsilon(inverse_variance: float, delta: float) -> float:
    """Epsilon at ``delta`` of Gaussian releases whose multipliers satisfy ``sum_r sigma_r^-2 = inverse_variance``."""
    if inverse_variance <= 0:
        return 0.0
    if math.isinf(inverse_variance):
        return math.inf
    return float(_dp().get_epsilon_gaussian(inverse_variance ** -0.5, delta))


def poisson_epsilon(sampling_probability: float, multiplier: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps (add-or-remove neighbours): DP-SGD's accounting, as in
    the published figures the accountant is checked against (fedshrink itself samples without replacement)."""
    dp = _dp()
    accountant = _rdp().RdpAccountant(orders=ORDERS)
    accountant.compose(dp.PoissonSampledDpEvent(sampling_probability, dp.GaussianDpEvent(multiplier)), steps)
    return float(accountant.get_epsilon(delta))
