"""The server's privacy state across rounds: the bound, the noise multipliers, the ledger, the budget.

One :class:`PrivacyController` per run. Each round:

1. :meth:`~PrivacyController.plan_round` (when the strategy has counted the
   ``N`` connected clients and knows it samples ``m``): resolves ``delta``
   (``1 / N`` unless set) and, in round 1, the noise multiplier ``z`` (given,
   or :func:`~.accountant.calibrate`\\ d to the target over the run's rounds);
   with ``dp-at-target = stop`` it raises :class:`PrivacyBudgetSpent` before a
   round whose release would pass the target;
2. :meth:`~PrivacyController.client_privacy` goes into each train instruction;
3. the stages clip and add noise (:mod:`.stages`) and call
   :meth:`~PrivacyController.record_release`;
4. :meth:`~PrivacyController.end_round` composes the round's event into the
   ledger if the round released a model, moves an adaptive bound, and returns
   the round's notes (epsilon among them).

Noise multipliers, as in Andrew et al. (see :mod:`.clipping`): ``z`` is the
round's total; the updates get ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``
with adaptive clipping (``z`` otherwise), the count of clients within the
bound gets ``sigma_b``. Epsilon (see :mod:`.accountant`):

* central: one event ``(N, m, z)`` per released round;
* distributed, aggregate: coordinate ``j`` got noise from its ``n_j`` holders,
  variance ``n_j (z_delta C)^2 / m``, so the round's multiplier is
  ``((z_delta sqrt(n_min / m))^-2 + (2 sigma_b sqrt(k / m))^-2)^(-1/2)`` for the
  fewest holders ``n_min`` and ``k`` replies. It holds for lossless uplinks:
  a lossy chain compresses each client's noisy update before the noise adds up;
* distributed, local: each reply is a Gaussian release of one client's
  clipped update (sensitivity ``2C``, std ``z_delta C / sqrt(m)``), valid
  against whoever sees the replies (the server too) and whatever the chain;
  the client sampled most often sets it. The headline epsilon of a
  distributed run is the aggregate one with lossless uplinks, else the local one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedshrink.errors import ConfigError, FedShrinkError
from fedshrink.privacy.accountant import Ledger, RoundEvent, calibrate, local_epsilon
from fedshrink.privacy.client import ClientPrivacy
from fedshrink.privacy.clipping import adaptive_clip, default_count_std, update_noise_multiplier
from fedshrink.privacy.settings import PrivacySettings

log = logging.getLogger("fedshrink.privacy")


class PrivacyBudgetSpent(FedShrinkError):
    """The next round would spend more than the run's target epsilon (``dp-at-target = stop``)."""


def combine(*multipliers: float) -> float:
    """The multiplier of independent Gaussian releases together: ``(sum z_i^-2)^(-1/2)`` (0 if any is 0)."""
    if any(z == 0 for z in multipliers):
        return 0.0
    return float(sum(z ** -2 for z in multipliers) ** -0.5)


@dataclass(frozen=True)
class RoundPlan:
    server_round: int
    population: int  # N: connected clients
    sampled: int  # m: clients sampled


class PrivacyController:
    """See the module doc."""

    def __init__(self, settings: PrivacySettings, *, rounds: int, seed: int) -> None:
        self.settings = settings
        self.rounds = rounds
        self.seed = seed
        self.clip = settings.dp_clip
        self.multiplier: float | None = None  # z, resolved in round 1
        self.delta = settings.dp_delta or None
        self.ledger = Ledger()
        self.local: dict[int, float] = {}  # node -> sum of its replies' inverse squared multipliers
        self.lossy = False  # any uplink chain lossy (distributed: the aggregate epsilon does not hold)
        self.plan: RoundPlan | None = None
        self.warned = False
        self._release: tuple[int, int] | None = None  # (fewest holders, replies) of the round's aggregate

    # -- the round's parameters ------------------------------------------------------------------
    @property
    def central(self) -> bool:
        return self.settings.dp_mode == "central"

    @property
    def sampled(self) -> int:
        return self.plan.sampled if self.plan is not None else 1

    @property
    def count_std(self) -> float:
        """sigma_b: noise std on the count of clients within the bound (0 without adaptive clipping)."""
        if not self.settings.adaptive or not self.multiplier:
            return 0.0
        return self.settings.dp_count_noise or default_count_std(self.sampled)

    @property
    def update_multiplier(self) -> float:
        """z_delta: the updates' share of the round's multiplier z."""
        z = self.multiplier or 0.0
        if not self.settings.adaptive:
            return z
        try:
            return update_noise_multiplier(z, self.count_std)
        except ValueError as exc:
            raise ConfigError("dp-noise-multiplier", z, f"a value with adaptive clipping and {self.sampled} clients "
                              f"per round: {exc} (raise dp-count-noise)") from None

    def client_privacy(self) -> ClientPrivacy:
        """What each client of this round is asked to do (the train instruction's private step)."""
        adaptive = self.settings.adaptive
        if self.central:
            return ClientPrivacy(self.clip, report_within=adaptive)
        root = math.sqrt(self.sampled)
        return ClientPrivacy(self.clip, self.update_multiplier * self.clip / root, self.count_std / root, adaptive)

    def plan_round(self, server_round: int, population: int, sampled: int) -> None:
        """Fix the round's ``N`` and ``m`` (and in round 1 delta and z); stop before passing the target."""
        self.plan = RoundPlan(server_round, population, sampled)
        self._release = None
        if self.delta is None:
            self.delta = 1.0 / population
        if self.multiplier is None:
            self.multiplier = self._resolve_multiplier(population, sampled)
            _ = self.update_multiplier  # refuse an impossible split now, not mid-run
        target = self.settings.dp_target_epsilon
        if target > 0 and self.settings.dp_at_target == "stop":
            after = self.ledger.epsilon_after(RoundEvent(population, sampled, self.multiplier), self.delta)
            if after > target:
                raise PrivacyBudgetSpent(f"round {server_round} would spend epsilon {after:.3g} > the target "
                                         f"{target:g} at delta {self.delta:.3g} (dp-at-target = stop)")

    def _resolve_multiplier(self, population: int, sampled: int) -> float:
        s = self.settings
        if s.dp_noise_multiplier > 0 or s.dp_target_epsilon == 0:
            return s.dp_noise_multiplier
        assert self.delta is not None
        z = calibrate(population, sampled, self.rounds, s.dp_target_epsilon, self.delta)
        log.info("noise multiplier %.4g: %d rounds of %d of %d clients spend epsilon %g at delta %.3g", z,
                 self.rounds, sampled, population, s.dp_target_epsilon, self.delta)
        return z

    def note_assignment(self, node: int, lossy: bool) -> None:
        """A node was sent this round's instruction (its chain lossy or not)."""
        self.lossy = self.lossy or lossy
        if not self.central:
            m = self.sampled
            z, sb = self.update_multiplier, self.count_std
            inv = math.inf if z == 0 else 4 * m / z ** 2  # std z C / sqrt(m) over sensitivity 2C
            inv += m / sb ** 2 if sb > 0 else 0.0  # its bit: std sigma_b / sqrt(m), sensitivity 1
            self.local[node] = self.local.get(node, 0.0) + inv

    def standard_normal(self, server_round: int, size: int) -> np.ndarray:
        """``size`` N(0, 1) draws for the server's noise (the OS's entropy unless dp-reproducible-noise)."""
        return self.rng(server_round, 0).standard_normal(size)

    def rng(self, server_round: int, stream: int) -> np.random.Generator:
        if self.settings.dp_reproducible_noise:
            return np.random.default_rng([self.seed, server_round, 0xD9, stream])
        return np.random.default_rng()

    def record_release(self, *, fewest_holders: int, replies: int) -> None:
        self._release = (fewest_holders, replies)

    # -- the end of a round ------------------------------------------------------------------------
    def round_event(self) -> RoundEvent:
        """The event of the round just aggregated (see the module doc)."""
        assert self.plan is not None and self.multiplier is not None
        n, m = self.plan.population, self.plan.sampled
        if self.central or self._release is None:
            return RoundEvent(n, m, self.multiplier)
        fewest, replies = self._release
        z = self.update_multiplier * math.sqrt(fewest / m)
        if self.count_std > 0:
            z = combine(z, 2 * self.count_std * math.sqrt(replies / m))
        return RoundEvent(n, m, z)

    def end_round(self, server_round: int, *, released: bool, within: list[float | None]) -> dict[str, Any]:
        """Account a released round, move an adaptive bound; the round's notes."""
        notes: dict[str, Any] = {"mode": self.settings.dp_mode, "clip": self.clip, "z": self.multiplier}
        if released and self.plan is not None:
            event = self.round_event()
            self.ledger.compose(event)
            notes["event"] = {"population": event.population, "sampled": event.sampled,
                              "multiplier": event.multiplier, "sampling": "without replacement, replace-one"}
            if self.settings.adaptive:
                notes["within-share"], self.clip = self._adapt(server_round, within)
        notes.update(self.epsilons())
        self._warn_at_target(notes.get("epsilon"))
        return notes

    def _adapt(self, server_round: int, within: list[float | None]) -> tuple[float, float]:
        """Andrew et al.'s update: noisy share of clients within the bound, then the geometric step.

        The share is over the replies that carried a bit, not the clients sampled: devices offline, declining
        or cut as the fleet's surplus are sampled but never reply (which does not depend on their data).
        """
        bits = [float(b) for b in within if b is not None]
        count = sum(bits)
        if self.central and self.count_std > 0:
            count += float(self.rng(server_round, 1).normal(0.0, self.count_std))
        share = count / (len(bits) or self.sampled)
        return share, adaptive_clip(self.clip, share, self.settings.dp_clip_quantile, self.settings.dp_clip_lr)

    def epsilons(self) -> dict[str, Any]:
        """``epsilon`` (None: infinite) and ``delta``; in distributed mode also the aggregate and local ones."""
        delta = self.delta or 0.0
        aggregate = self.ledger.epsilon(delta) if delta else 0.0
        out: dict[str, Any] = {"delta": delta}
        if self.central:
            out["epsilon"] = _finite(aggregate)
            return out
        local = local_epsilon(max(self.local.values(), default=0.0), delta) if delta else 0.0
        out.update({"epsilon-aggregate": _finite(aggregate), "epsilon-local": _finite(local),
                    "epsilon": _finite(local if self.lossy else aggregate)})
        return out

    def _warn_at_target(self, epsilon: float | None) -> None:
        target = self.settings.dp_target_epsilon
        spent = math.inf if epsilon is None else epsilon
        if target > 0 and spent > target and not self.warned:
            self.warned = True
            log.warning("privacy budget passed: epsilon %.3g > target %g at delta %.3g", spent, target,
                        self.delta or 0.0)

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "multiplier": self.multiplier, "delta": self.delta,
                "ledger": self.ledger.to_state(), "local": {str(k): v for k, v in self.local.items()},
                "lossy": self.lossy, "warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip, self.multiplier, self.delta = float(state["clip"]), state["multiplier"], state["delta"]
        self.ledger = Ledger.from_state(state["ledger"])
        self.local = {int(k): float(v) for k, v in state["local"].items()}
        self.lossy, self.warned = bool(state["lossy"]), bool(state["warned"])


def _finite(value: float) -> float | None:
    """JSON-ready: None for an infinite epsilon (no noise)."""
    return value if math.isfinite(value) else None
