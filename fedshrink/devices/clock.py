"""Fleet clock: who a round accepts, how long it lasts and what the fleet spends (modelled, pure).

The server samples ``sample_size(wanted, over_select)`` clients for a round
that wants ``wanted`` updates (over-selection: Bonawitz et al., "Towards
Federated Learning at Scale: System Design", SysML 2019, select more devices
than the round needs, close the round once enough have reported and ignore
stragglers). Each sampled client is a :class:`Candidate`: its device (its
draw, :mod:`fedshrink.devices.draws`) and its modelled round cost
(:mod:`fedshrink.devices.cost`). :func:`run_round` then decides, in order:

1. ``unavailable``: the client is offline this round (a Bernoulli draw with
   its availability, seeded by (seed, round, client)); it is never reached.
2. ``memory``: its modelled round memory exceeds its device's memory; it
   declines at once.
3. The rest train; client ``i`` reports at its device time ``t_i``
   (download + compute + upload). ``deadline``: ``t_i`` exceeds
   ``round-deadline`` (when > 0).
4. Of those on time, the ``wanted`` earliest (ties by client id) are
   ``accepted``; later ones are ``surplus``.

The round lasts (simulated seconds of device time)::

    t of the wanted-th accepted client        when ``wanted`` updates arrived
    deadline                                  else, when some trained client missed the deadline
    t of the last accepted client             else (everyone who trained reported; 0 if none did)

Fleet energy counts every client that trained, accepted or not: stragglers
and surplus clients spent their energy even though the server ignores their
updates (they do not learn that it does). Unavailable and memory-declined
clients spend nothing. All figures are modelled device figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedshrink.devices.cost import RoundCost
from fedshrink.devices.draws import is_available
from fedshrink.devices.model import DeviceModel
from fedshrink.errors import ConfigError

ACCEPTED = "accepted"
REASONS = ("unavailable", "memory", "deadline", "surplus")
# integer codes of a client's status (metric records hold numbers only); stable
STATUS_CODES: dict[str, int] = {ACCEPTED: 0, "unavailable": 1, "memory": 2, "deadline": 3, "surplus": 4}


def parse_over_select(value: float) -> float:
    """``value`` if it is a fraction in [0, 1) or a whole count >= 1, else :class:`ConfigError`."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok or (value >= 1 and value != int(value)):
        raise ConfigError("over-select", value, "a fraction in [0, 1) of the wanted clients, or a whole count >= 1")
    return float(value)


def sample_size(wanted: int, over_select: float) -> int:
    """Clients to sample: ``wanted + ceil(over_select x wanted)`` (a fraction) or ``wanted + over_select`` (a count)."""
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 0:
        raise ConfigError("wanted-clients", wanted, "an integer >= 0")
    extra = parse_over_select(over_select)
    return wanted + (math.ceil(extra * wanted) if extra < 1 else int(extra))


@dataclass(frozen=True)
class Candidate:
    """A sampled client: its id, its device and its modelled round cost."""

    client: int
    device: DeviceModel
    cost: RoundCost


@dataclass(frozen=True)
class ClientOutcome:
    """What happened to one sampled client (modelled device figures)."""

    client: int
    status: str  # "accepted" or one of REASONS
    time_s: float  # device time it spent (0 when it did not train)
    energy_j: float  # energy it spent (0 when it did not train)
    memory_bytes: int  # its modelled round memory

    @property
    def trained(self) -> bool:
        return self.status in (ACCEPTED, "deadline", "surplus")


@dataclass(frozen=True)
class RoundOutcome:
    """A round on the fleet clock: per-client outcomes (in sampling order), duration and energy."""

    clients: tuple[ClientOutcome, ...]
    duration_s: float

    @property
    def accepted(self) -> tuple[int, ...]:
        """Accepted clients, earliest report first."""
        done = [c for c in self.clients if c.status == ACCEPTED]
        return tuple(c.client for c in sorted(done, key=lambda c: (c.time_s, c.client)))

    def dropped(self, reason: str) -> tuple[int, ...]:
        if reason not in REASONS:
            raise ConfigError("drop-reason", reason, "one of " + ", ".join(map(repr, REASONS)))
        return tuple(c.client for c in self.clients if c.status == reason)

    @property
    def energy_j(self) -> float:
        """Fleet energy: every client that trained (accepted, late or surplus)."""
        return math.fsum(c.energy_j for c in self.clients if c.trained)

    @property
    def accepted_energy_j(self) -> float:
        return math.fsum(c.energy_j for c in self.clients if c.status == ACCEPTED)

    def metrics(self) -> dict[str, float]:
        """The round's modelled figures under ``device-`` keys (numbers only, for a metric record)."""
        out: dict[str, float] = {"device-round-s": self.duration_s, "device-fleet-energy-j": self.energy_j,
                                 "device-accepted-energy-j": self.accepted_energy_j,
                                 "device-accepted": float(len(self.accepted))}
        for reason in REASONS:
            out[f"device-dropped-{reason}"] = float(len(self.dropped(reason)))
        return out


def client_metrics(cost: RoundCost, status: str) -> dict[str, float]:
    """One client-round's modelled figures under ``device-`` keys (0 s and 0 J when it did not train)."""
    if status not in STATUS_CODES:
        raise ConfigError("client-status", status, "one of " + ", ".join(map(repr, STATUS_CODES)))
    spent = 1.0 if status in (ACCEPTED, "deadline", "surplus") else 0.0
    return {"device-status": float(STATUS_CODES[status]), "device-time-s": spent * cost.time_s,
            "device-download-s": spent * cost.download_s, "device-compute-s": spent * cost.compute_s,
            "device-upload-s": spent * cost.upload_s, "device-energy-j": spent * cost.energy_j,
            "device-compute-j": spent * cost.compute_j, "device-radio-j": spent * cost.radio_j,
            "device-memory-mb": cost.memory_bytes / 1e6}


def _check(candidates: Sequence[Candidate], wanted: int, deadline_s: float) -> None:
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 0:
        raise ConfigError("wanted-clients", wanted, "an integer >= 0")
    ok = isinstance(deadline_s, int | float) and not isinstance(deadline_s, bool)
    if not ok or not math.isfinite(deadline_s) or deadline_s < 0:
        raise ConfigError("round-deadline", deadline_s, "a number of seconds >= 0 (0 = no deadline)")
    ids = [c.client for c in candidates]
    if len(set(ids)) != len(ids):
        raise ConfigError("round-candidates", ids, "each client sampled once")


def run_round(candidates: Sequence[Candidate], *, wanted: int, server_round: int, seed: int,
              deadline_s: float = 0.0) -> RoundOutcome:
    """Accept, drop and time one round (rules in the module doc)."""
    _check(candidates, wanted, deadline_s)
    status: dict[int, str] = {}
    for c in candidates:
        if not is_available(c.device, c.client, seed, server_round):
            status[c.client] = "unavailable"
        elif not c.cost.fits(c.device):
            status[c.client] = "memory"
    trained = sorted((c for c in candidates if c.client not in status), key=lambda c: (c.cost.time_s, c.client))
    on_time = [c for c in trained if not deadline_s or c.cost.time_s <= deadline_s]
    for i, c in enumerate(on_time):
        status[c.client] = ACCEPTED if i < wanted else "surplus"
    late = [c for c in trained if c.client not in status]
    for c in late:
        status[c.client] = "deadline"
    accepted = on_time[:wanted]
    if wanted and len(accepted) == wanted:
        duration = accepted[-1].cost.time_s
    elif late:
        duration = float(deadline_s)
    else:
        duration = accepted[-1].cost.time_s if accepted else 0.0
    outcomes = []
    for c in candidates:
        s = status[c.client]
        spent = s in (ACCEPTED, "deadline", "surplus")
        outcomes.append(ClientOutcome(c.client, s, c.cost.time_s if spent else 0.0,
                                      c.cost.energy_j if spent else 0.0, c.cost.memory_bytes))
    return RoundOutcome(tuple(outcomes), duration)
