"""What a run spent to reach target accuracies, and its savings against a baseline run (pure functions).

Definitions (written into ``summary.json`` under ``targets`` and into the reports):

* **target**: a test accuracy in (0, 1]. By default, with a baseline run, the baseline's final accuracy
  minus 1 point (``final - 0.01``); without a baseline and without levels from the user, the run's own final
  accuracy minus 1 point. Levels the user lists are added to the default baseline one.
* **reach**: the first round whose ``accuracy`` is ``>= target`` (ties within 1e-12 count, for float
  rounding); "never" when no round is.
* **bytes up to the target**: the running sum of the rounds' uplink bytes up to and including that round:
  ``bytes-up-received`` (every reply the server received, dropped ones included) where every round records
  it, else ``bytes-up`` (accepted replies). **bytes up + down**: that plus the running sum of ``bytes-down``
  (every message the server sent).
* **rounds to the target**: the reaching round's number (rounds count from 1).
* **modelled device time / energy to the target**: running sums of the rounds' ``device-time-s`` /
  ``device-energy-j`` (figures of a simulated device, modelled, not measured), when every round up to the
  reaching one carries the key.
* **savings against a baseline** at one target: ``baseline bytes / run bytes`` (above 1: the run needed fewer
  bytes), for bytes up and for bytes up + down, and both rounds to the target; n/a when either run never
  reaches it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedshrink.errors import ConfigError

ONE_POINT = 0.01  # accuracy is a fraction in [0, 1]; 1 point = 0.01
TIE = 1e-12
UP_KEYS = ("bytes-up-received", "bytes-up")  # preferred first
DEVICE_KEYS = {"device_time_s": "device-time-s", "device_energy_j": "device-energy-j"}
DEFINITION = ("reach = the first round whose accuracy >= target; bytes = running sums up to and including that "
              "round (up: bytes-up-received, or bytes-up where not recorded; down: bytes-down); "
              "device time / energy: running sums of the modelled device-time-s / device-energy-j; "
              "null = never reached or not recorded")


@dataclass(frozen=True)
class Target:
    """An accuracy level and where it came from (``"0.9 (given)"``, ``"baseline final - 1 point"``)."""

    level: float
    source: str

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int | float) or not 0 < self.level <= 1:
            raise ConfigError("target", self.level, "an accuracy in (0, 1] (a fraction, e.g. 0.95)")


@dataclass(frozen=True)
class Reach:
    """What one run spent to reach one target; every figure is None when it never did."""

    target: Target
    round: int | None
    bytes_up: int | None
    bytes_total: int | None  # up + down
    device_time_s: float | None = None  # modelled
    device_energy_j: float | None = None  # modelled
    up_key: str | None = None  # which uplink key was summed

    @property
    def reached(self) -> bool:
        return self.round is not None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target.level, "source": self.target.source, "reached": self.reached,
                "round": self.round, "bytes-up": self.bytes_up, "bytes-up-down": self.bytes_total,
                "bytes-up-key": self.up_key, "device-time-s": self.device_time_s,
                "device-energy-j": self.device_energy_j}


@dataclass(frozen=True)
class Saving:
    """One run against the baseline at one target (ratios: baseline / run; None: n/a)."""

    run: Reach
    baseline: Reach

    @staticmethod
    def _ratio(base: float | None, mine: float | None) -> float | None:
        return base / mine if base is not None and mine is not None and mine > 0 else None

    @property
    def bytes_up_ratio(self) -> float | None:
        return self._ratio(self.baseline.bytes_up, self.run.bytes_up)

    @property
    def bytes_total_ratio(self) -> float | None:
        return self._ratio(self.baseline.bytes_total, self.run.bytes_total)

    @property
    def device_time_ratio(self) -> float | None:
        return self._ratio(self.baseline.device_time_s, self.run.device_time_s)

    @property
    def device_energy_ratio(self) -> float | None:
        return self._ratio(self.baseline.device_energy_j, self.run.device_energy_j)


def check_levels(levels: Iterable[float], key: str = "--targets") -> list[float]:
    """``levels`` as floats in (0, 1]; a :class:`ConfigError` naming ``key`` otherwise."""
    out = []
    for v in levels:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
            raise ConfigError(key, v, "accuracies in (0, 1] (fractions, e.g. 0.9 0.95)")
        out.append(float(v))
    return out


def final_accuracy(rounds: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> float | None:
    """``summary["accuracy"]`` when recorded, else the last round's accuracy, else None."""
    if summary and isinstance(summary.get("accuracy"), int | float):
        return float(summary["accuracy"])
    accs = [float(r["accuracy"]) for r in rounds if isinstance(r.get("accuracy"), int | float)]
    return accs[-1] if accs else None


def choose_targets(levels: Sequence[float], *, baseline_final: float | None = None,
                   own_final: float | None = None, baseline_name: str = "baseline") -> list[Target]:
    """The targets of a report: ``levels`` (given) plus the default (see the module doc), sorted, no repeats."""
    out = [Target(v, "given") for v in check_levels(levels)]
    if baseline_final is not None:
        out.append(Target(max(baseline_final - ONE_POINT, TIE),
                          f"{baseline_name} final accuracy {baseline_final:.4f} - 1 point"))
    elif not out and own_final is not None:
        out.append(Target(max(own_final - ONE_POINT, TIE), f"this run's final accuracy {own_final:.4f} - 1 point"))
    seen: dict[float, Target] = {}
    for t in out:
        seen.setdefault(round(t.level, 12), t)
    return sorted(seen.values(), key=lambda t: t.level)


def _running(rounds: Sequence[Mapping[str, Any]], key: str, upto: int) -> float | None:
    """Sum of ``key`` over ``rounds[:upto + 1]``, or None if one of them lacks it."""
    head = rounds[: upto + 1]
    if any(not isinstance(r.get(key), int | float) for r in head):
        return None
    return float(sum(float(r[key]) for r in head))


def up_key(rounds: Sequence[Mapping[str, Any]]) -> str | None:
    """The uplink key every round records: ``bytes-up-received`` if possible, else ``bytes-up``."""
    for key in UP_KEYS:
        if rounds and all(isinstance(r.get(key), int | float) for r in rounds):
            return key
    return None


def reach(rounds: Sequence[Mapping[str, Any]], target: Target) -> Reach:
    """What the run (round records in order) spent up to the first round with accuracy >= the target."""
    for i, r in enumerate(rounds):
        acc = r.get("accuracy")
        if isinstance(acc, int | float) and acc >= target.level - TIE:
            key = up_key(rounds)
            up = _running(rounds, key, i) if key else None
            down = _running(rounds, "bytes-down", i)
            extra = {field: _running(rounds, k, i) for field, k in DEVICE_KEYS.items()}
            return Reach(target, int(r.get("round", i + 1)), None if up is None else int(up),
                         None if up is None or down is None else int(up + down), up_key=key, **extra)
    return Reach(target, None, None, None)


def reach_all(rounds: Sequence[Mapping[str, Any]], targets: Sequence[Target]) -> list[Reach]:
    return [reach(rounds, t) for t in targets]


def savings(run: Sequence[Reach], baseline: Sequence[Reach]) -> list[Saving]:
    """Pairs of reaches of the same targets, in order."""
    if [r.target.level for r in run] != [b.target.level for b in baseline]:
        raise ValueError("savings need the same targets for the run and the baseline")
    return [Saving(r, b) for r, b in zip(run, baseline, strict=True)]


def targets_json(reaches: Sequence[Reach], baseline: str | None = None,
                 baseline_reaches: Sequence[Reach] | None = None) -> dict[str, Any]:
    """``summary.json``'s ``targets`` entry; with a baseline, each level also gives the baseline's round and
    bytes and the savings (baseline / run; null = n/a)."""
    levels = [r.to_json() for r in reaches]
    if baseline_reaches is not None:
        for level, s in zip(levels, savings(reaches, baseline_reaches), strict=True):
            level.update({"baseline-round": s.baseline.round, "baseline-bytes-up": s.baseline.bytes_up,
                          "baseline-bytes-up-down": s.baseline.bytes_total, "bytes-up-saving": s.bytes_up_ratio,
                          "bytes-up-down-saving": s.bytes_total_ratio})
    return {"baseline": baseline, "definition": DEFINITION, "levels": levels}


def has_device(reaches: Sequence[Reach]) -> dict[str, bool]:
    """Which modelled device figures any reach carries (for table columns)."""
    return {f: any(getattr(r, f) is not None for r in reaches) for f in DEVICE_KEYS}
