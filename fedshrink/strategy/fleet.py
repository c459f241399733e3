"""The fleet clock inside a round: who is reached, who reports in time, and what the devices spend (modelled).

Every figure here is modelled from each node's simulated device
(:mod:`fedshrink.devices`), never measured on the host. A node's device and
profile come from its hello; a node without a profile trains the whole model
in fp32 with the run's chains (FedAvg on that device).

* :meth:`Fleet.reachable` (before sending): a node that is offline this round
  (its availability draw) is not reached; one whose modelled round memory
  exceeds its device's memory declines. Neither trains.
* :meth:`Fleet.settle` (after replies): each reply's modelled device time
  (download + compute + upload, from the bytes actually sent each way and the
  training FLOPs of its round) decides, through
  :func:`fedshrink.devices.clock.run_round`, which replies the round accepts:
  the ``wanted`` earliest within ``round-deadline``; later ones are dropped
  as stragglers or as over-selection surplus. The round lasts until the last
  accepted one (or the deadline), and its fleet energy counts every device
  that trained.

Each accepted client's record also carries what full-width fp32 FedAvg would
have cost the same device (``device-fedavg-*``), for comparison.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedshrink.devices import (
    Candidate,
    DeviceModel,
    RoundCost,
    client_metrics,
    estimate,
    is_available,
    round_cost,
    run_round,
)
from fedshrink.devices.clock import REASONS, RoundOutcome
from fedshrink.devices.profiles import DeviceProfile, Estimate
from fedshrink.fakequant import OFF
from fedshrink.models import ModelSpec
from fedshrink.protocol import Hello
from fedshrink.training import TrainSettings

WHOLE = "whole-model"  # the profile of a node that trains the whole model (no fragment)
OFFLINE = "unavailable this round (its modelled availability draw); not reached"


@dataclass(frozen=True)
class Trained:
    """A reply the fleet clock times: who sent it and what it cost on the wire and in compute."""

    node: int
    hello: Hello
    download_bytes: int
    upload_bytes: int
    train_flops: float


@dataclass
class Settlement:
    """The clock's verdict on a round."""

    accepted: set[int]  # nodes whose replies count
    dropped: dict[int, str]  # node -> reason, for nodes that trained but do not count
    round_metrics: dict[str, float]
    client_metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # accepted nodes' figures
    stragglers: set[int] = field(default_factory=set)  # dropped nodes that missed the round deadline


class Fleet:
    """The fleet clock for a strategy (see the module doc)."""

    def __init__(self, spec: ModelSpec, training: TrainSettings, *, uplink: str, downlink: str, seed: int,
                 deadline_s: float, over_select: float, availability: bool = True) -> None:
        self.spec = spec
        self.availability = availability
        self.training = training
        self.seed = seed
        self.deadline_s = deadline_s
        self.over_select = over_select
        self.whole = DeviceProfile(WHOLE, 1.0, 0.0, "none", OFF, uplink, downlink, training.epochs,
                                   training.batch_size)
        self.fedavg = DeviceProfile("fedavg-fp32", 1.0, 0.0, "none", OFF, "raw", "raw", training.epochs,
                                    training.batch_size)

    def profile_of(self, hello: Hello) -> DeviceProfile:
        return hello.profile if hello.profile is not None else self.whole

    @functools.lru_cache(maxsize=256)  # noqa: B019  (one fleet per run; profiles are few)
    def estimate(self, profile: DeviceProfile) -> Estimate:
        return estimate(self.spec, profile, momentum=self.training.momentum > 0)

    def samples(self, hello: Hello, profile: DeviceProfile) -> int:
        return hello.num_examples * profile.local_epochs

    def planned_cost(self, hello: Hello, device: DeviceModel) -> RoundCost:
        profile = self.profile_of(hello)
        return self.estimate(profile).cost(device, self.samples(hello, profile))

    def reachable(self, server_round: int, nodes: Sequence[int], hellos: Mapping[int, Hello]
                  ) -> tuple[list[int], dict[int, str]]:
        """The nodes to send to, and the others with their reason (offline, or not enough memory)."""
        keep, dropped = [], {}
        for node in nodes:
            hello = hellos[node]
            device = hello.device
            if device is None:
                keep.append(node)
            elif self.availability and not is_available(device, hello.partition_id, self.seed, server_round):
                dropped[node] = OFFLINE
            elif not (cost := self.planned_cost(hello, device)).fits(device):
                dropped[node] = (f"declined: its modelled round memory {cost.memory_bytes / 1e6:.3g} MB is over its "
                                 f"device's {device.memory_mb:g} MB")
            else:
                keep.append(node)
        return keep, dropped

    def settle(self, server_round: int, wanted: int, skipped: Sequence[int], hellos: Mapping[int, Hello],
               trained: Sequence[Trained]) -> Settlement:
        """Which trained replies count, the round's modelled time and energy, and each accepted client's figures.

        ``skipped``: the sampled nodes :meth:`reachable` left out (the clock repeats their draws, so the
        round's counts include them); ``trained``: the valid replies. A node reached whose reply is missing
        or was refused is neither.
        """
        costs = {t.node: self._cost(t) for t in trained if t.hello.device is not None}
        candidates, node_of = [], {}
        for node in [*skipped, *costs]:
            hello = hellos[node]
            assert hello.device is not None
            cost = costs.get(node) or self.planned_cost(hello, hello.device)
            device = hello.device if self.availability else hello.device.replace(availability=1.0)
            candidates.append(Candidate(hello.partition_id, device, cost))
            node_of[hello.partition_id] = node
        outcome = run_round(candidates, wanted=wanted, server_round=server_round, seed=self.seed,
                            deadline_s=self.deadline_s)
        untimed = {t.node for t in trained if t.hello.device is None}  # no device model: nothing to time
        return self._settlement(outcome, node_of, costs, untimed, hellos)

    def _cost(self, t: Trained) -> RoundCost:
        assert t.hello.device is not None
        memory = self.estimate(self.profile_of(t.hello)).train_memory_bytes
        return round_cost(t.hello.device, train_flops=t.train_flops, download_bytes=t.download_bytes,
                          upload_bytes=t.upload_bytes, memory_bytes=memory)

    def _settlement(self, outcome: RoundOutcome, node_of: Mapping[int, int], costs: Mapping[int, RoundCost],
                    untimed: set[int], hellos: Mapping[int, Hello]) -> Settlement:
        accepted, dropped, clients, stragglers = set(untimed), {}, {}, set()
        for c in outcome.clients:
            node = node_of[c.client]
            if node not in costs:
                continue  # not reached or declined: recorded before sending
            if c.status == "accepted":
                accepted.add(node)
                hello = hellos[node]
                clients[node] = {**client_metrics(costs[node], "accepted"), **self._fedavg(hello)}
            elif c.status == "deadline":
                stragglers.add(node)
                dropped[node] = (f"straggler: its modelled device time {c.time_s:.3g} s is past the round deadline "
                                 f"{self.deadline_s:g} s")
            elif c.status == "surplus":
                dropped[node] = (f"over-selected: enough updates arrived before this one (its modelled device time "
                                 f"{c.time_s:.3g} s)")
        metrics = outcome.metrics()
        round_metrics = {"device-time-s": metrics.pop("device-round-s"),
                         "device-energy-j": metrics.pop("device-fleet-energy-j"), **metrics}
        return Settlement(accepted, dropped, round_metrics, clients, stragglers)

    def _fedavg(self, hello: Hello) -> dict[str, float]:
        """What full-width fp32 FedAvg would cost this device this round (modelled, for comparison)."""
        assert hello.device is not None
        est = self.estimate(dataclasses.replace(self.fedavg, local_epochs=self.profile_of(hello).local_epochs))
        cost = est.cost(hello.device, self.samples(hello, self.profile_of(hello)))
        return {"device-fedavg-time-s": cost.time_s, "device-fedavg-energy-j": cost.energy_j,
                "device-fedavg-memory-mb": cost.memory_bytes / 1e6,
                "device-fedavg-bytes": float(est.upload_bytes + est.download_bytes),
                "device-fedavg-fits": float(cost.fits(hello.device))}


__all__ = ["OFFLINE", "REASONS", "WHOLE", "Fleet", "Settlement", "Trained"]
