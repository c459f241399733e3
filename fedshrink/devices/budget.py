"""Budgets: a client states what it can afford and the planner picks a profile that fits.

A :class:`Budget` is any subset of, per round::

    mem     training memory      MB  (10**6 bytes; the round's modelled peak, TrainingMemory.round_peak)
    up      upload               kB  (10**3 bytes; the uplink chain's modelled bytes)
    time    round time           s   (the device's download + compute + upload, modelled)
    energy  energy              J   (compute + radio, modelled)

plus the device it runs on (``device``, a registered device model; needed for
time and energy). Its text form is ``"mem=2,up=50"`` or
``"time=30,energy=20,device=phone"``; a budget mix (the ``budget-mix`` run
setting) joins budgets with shares, ``"<budget>:<share>;<budget>:<share>"``,
e.g. ``"mem=2,up=50,device=iot:0.5;time=30,device=phone:0.5"`` (shares > 0
summing to 1; every entry names its device, since a simulated client needs
one for the fleet clock).

:func:`plan_budget` tries widths from the widest and, at each width,
compression levels from the lightest (:data:`WIDTH_LADDER`,
:data:`COMPRESSION_LADDER`); the first candidate whose every stated figure is
within the budget wins. :meth:`Plan.explain` says, in one line, what it
picked and each estimate against its limit. A budget nothing fits raises one
:class:`~fedshrink.errors.ConfigError` line naming the budget and the figures
of the nearest candidate (the one whose worst figure-to-limit ratio is least).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedshrink.devices.cost import RoundCost
from fedshrink.devices.model import DEVICE_MODELS, DeviceModel, get_device
from fedshrink.devices.profiles import DeviceProfile, Estimate, estimate, seeded_shares
from fedshrink.errors import ConfigError
from fedshrink.fakequant import OFF
from fedshrink.models.registry import ModelSpec

# text key -> (Budget field, unit)
LIMITS: dict[str, tuple[str, str]] = {"mem": ("memory_mb", "MB"), "up": ("upload_kb", "kB"),
                                      "time": ("time_s", "s"), "energy": ("energy_j", "J")}


def _limit(key: str, value: object) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ConfigError(f"budget.{key}", value, "a finite number > 0")
    return float(value)  # type: ignore[arg-type]  # checked above


@dataclass(frozen=True)
class Budget:
    """What a client can afford per round (any subset of the limits; units in the module doc)."""

    memory_mb: float | None = None
    upload_kb: float | None = None
    time_s: float | None = None
    energy_j: float | None = None
    device: str = ""  # a registered device model; needed with time or energy

    def __post_init__(self) -> None:
        for key, (name, _) in LIMITS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _limit(key, value))
        if not self.limits():
            raise ConfigError("budget", self.to_text(), "at least one of " + ", ".join(LIMITS))
        if self.device and self.device not in DEVICE_MODELS:
            raise ConfigError("budget.device", self.device, DEVICE_MODELS.allowed())
        if not self.device and (self.time_s is not None or self.energy_j is not None):
            raise ConfigError("budget", self.to_text(), "a device=<name> with a time or energy limit")

    def limits(self) -> dict[str, float]:
        """The stated limits under their text keys (``mem``, ``up``, ``time``, ``energy``)."""
        return {k: getattr(self, f) for k, (f, _) in LIMITS.items() if getattr(self, f) is not None}

    @property
    def memory_bytes(self) -> float:
        return math.inf if self.memory_mb is None else self.memory_mb * 1e6

    @property
    def upload_bytes(self) -> float:
        return math.inf if self.upload_kb is None else self.upload_kb * 1e3

    def to_text(self) -> str:
        parts = [f"{k}={v:g}" for k, v in self.limits().items()]
        return ",".join(parts + ([f"device={self.device}"] if self.device else []))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, Mapping) or set(data) - names:
            raise ConfigError("budget", data, "an object with fields among " + ", ".join(sorted(names)))
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> Budget:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            raise ConfigError("budget", str(text)[:80], "a JSON object") from None
        return cls.from_dict(data)


ProfileBudget = Budget  # the name the first planner used


def parse_budget(text: str, *, key: str = "budget") -> Budget:
    """``"mem=2,up=50,device=phone"`` -> :class:`Budget` (one-line :class:`ConfigError` naming the fault)."""
    form = "key=value pairs joined by ',' with keys " + ", ".join([*LIMITS, "device"])
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(key, text, form)
    values: dict[str, Any] = {}
    for part in text.split(","):
        k, sep, v = (x.strip() for x in part.partition("="))
        if not sep or (k not in LIMITS and k != "device"):
            raise ConfigError(key, text, f"{form}; {part.strip()!r} is not one")
        name = "device" if k == "device" else LIMITS[k][0]
        if name in values:
            raise ConfigError(key, text, f"each key once; {k!r} repeats")
        if k == "device":
            values[name] = v
            continue
        try:
            values[name] = float(v)
        except ValueError:
            raise ConfigError(key, text, f"numbers for the limits; {k}={v!r} is not one") from None
    try:
        return Budget(**values)
    except ConfigError as exc:
        raise ConfigError(key, text, exc.allowed) from None


def parse_budget_mix(text: str) -> tuple[tuple[Budget, float], ...]:
    """``"mem=2,device=iot:0.5;time=30,device=phone:0.5"`` -> ((budget, share), ...), validated."""
    form = "<budget>:<share> entries joined by ';' such as 'mem=2,up=50,device=iot:0.5;time=30,device=phone:0.5'"
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("budget-mix", text, form)
    mix: list[tuple[Budget, float]] = []
    for entry in text.split(";"):
        body, sep, share_text = entry.rpartition(":")
        if not sep:
            raise ConfigError("budget-mix", text, f"{form}; {entry.strip()!r} has no ':share'")
        budget = parse_budget(body, key="budget-mix")
        if not budget.device:
            raise ConfigError("budget-mix", text, f"a device=<name> in every entry; {body.strip()!r} has none")
        try:
            share = float(share_text)
        except ValueError:
            share = math.nan
        if not (math.isfinite(share) and share > 0):
            raise ConfigError("budget-mix", text, f"shares that are numbers > 0; {share_text.strip()!r} is not")
        mix.append((budget, share))
    total = math.fsum(s for _, s in mix)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError("budget-mix", text, f"shares summing to 1 (they sum to {total:g})")
    return tuple(mix)


def assign_budgets(mix: str, num_clients: int, seed: int) -> list[Budget]:
    """Budget of each client ``0..num_clients-1`` (largest remainder, then a seeded shuffle, as for profiles)."""
    entries = parse_budget_mix(mix)
    return [entries[i][0] for i in seeded_shares([s for _, s in entries], num_clients, seed)]


# ---- the planner ----------------------------------------------------------------------------------

WIDTH_LADDER: tuple[float, ...] = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125)


@dataclass(frozen=True)
class CompressionLevel:
    """One rung of the compression ladder the planner climbs (lightest first)."""

    name: str
    sparsity: float
    prune: str
    weight_bits: int
    uplink: str
    downlink: str


COMPRESSION_LADDER: tuple[CompressionLevel, ...] = (
    CompressionLevel("fp32", 0.0, "none", OFF, "raw", "raw"),
    CompressionLevel("fp16", 0.0, "none", OFF, "fp16|zstd", "fp16|zstd"),
    CompressionLevel("int8", 0.0, "none", 8, "int8|zstd", "int8|zstd"),
    CompressionLevel("top25-int8", 0.25, "unstructured", 8, "topk:0.25|int8|zstd", "int8|zstd"),
    CompressionLevel("top10-q4", 0.5, "unstructured", 4, "topk:0.1|q4|zstd", "int8|zstd"),
    CompressionLevel("top5-q2", 0.5, "unstructured", 4, "topk:0.05|q2|zstd", "int8|zstd"),
)


@dataclass(frozen=True)
class Check:
    """One stated limit against the candidate's modelled figure (in the limit's unit)."""

    key: str  # mem, up, time, energy
    limit: float
    value: float

    @property
    def fits(self) -> bool:
        return self.value <= self.limit

    @property
    def ratio(self) -> float:
        return self.value / self.limit

    def words(self) -> str:
        unit = LIMITS[self.key][1]
        return f"{self.key} {self.value:.4g} {unit} {'<=' if self.fits else '>'} {self.limit:g} {unit}"


@dataclass(frozen=True)
class Plan:
    """What the planner picked for a budget, with its modelled figures."""

    budget: Budget
    profile: DeviceProfile
    estimate: Estimate
    cost: RoundCost | None  # None without a device
    checks: tuple[Check, ...]

    def explain(self) -> str:
        """One line: the budget, what was picked, and each estimate against its limit."""
        p = self.profile
        pruning = "no pruning" if p.prune == "none" else f"{p.prune} pruning {p.sparsity:g}"
        bits = "fp32 weights" if p.weight_bits == OFF else f"{p.weight_bits}-bit weights"
        what = f"width {p.width:g}, {pruning}, {bits}, uplink {p.uplink!r}"
        figures = "; ".join(c.words() for c in self.checks)
        return f"budget {self.budget.to_text()}: picked {p.name} ({what}): {figures} (modelled)"


def _checks(budget: Budget, est: Estimate, cost: RoundCost | None) -> tuple[Check, ...]:
    value = {"mem": est.train_memory_bytes / 1e6, "up": est.upload_bytes / 1e3,
             "time": cost.time_s if cost else math.nan, "energy": cost.energy_j if cost else math.nan}
    return tuple(Check(k, limit, value[k]) for k, limit in budget.limits().items())


def _candidate(width: float, level: CompressionLevel, local_epochs: int, batch_size: int,
               device: str) -> DeviceProfile:
    return DeviceProfile(f"budget-w{width:g}-{level.name}", width, level.sparsity, level.prune, level.weight_bits,
                         level.uplink, level.downlink, local_epochs, batch_size, device)


def plan_budget(budget: Budget, model_spec: ModelSpec, *, device: DeviceModel | None = None,
                samples: int | None = None, widths: Sequence[float] = WIDTH_LADDER,
                levels: Sequence[CompressionLevel] = COMPRESSION_LADDER, local_epochs: int = 2,
                batch_size: int = 32, momentum: bool = True) -> Plan:
    """The widest, then least compressed, candidate whose every stated figure fits ``budget`` (module doc).

    ``device``: the client's device (default: the budget's named device model);
    ``samples``: examples x epochs of its round, needed for time and energy.
    """
    if not widths or not levels:
        raise ConfigError("budget.candidates", (tuple(widths), len(levels)), "at least one width and one level")
    if device is None and budget.device:
        device = get_device(budget.device)
    needs_cost = budget.time_s is not None or budget.energy_j is not None
    if needs_cost and (device is None or samples is None or samples < 0):
        raise ConfigError("budget", budget.to_text(), "a device and the round's samples with a time or energy limit")
    base = budget.device or "laptop"
    plans: list[Plan] = []
    for width in sorted(widths, reverse=True):
        for level in levels:
            profile = _candidate(width, level, local_epochs, batch_size, base)
            est = estimate(model_spec, profile, momentum=momentum)
            cost = est.cost(device, samples) if device is not None and samples is not None else None
            plan = Plan(budget, profile, est, cost, _checks(budget, est, cost))
            if all(c.fits for c in plan.checks):
                return plan
            plans.append(plan)
    nearest = min(plans, key=lambda p: max(c.ratio for c in p.checks))
    figures = ", ".join(c.words() for c in nearest.checks)
    raise ConfigError("budget", budget.to_text(),
                      f"a budget some candidate fits on model {model_spec.name}; nearest is {nearest.profile.name} "
                      f"(width {nearest.profile.width:g}, uplink {nearest.profile.uplink!r}): {figures} (modelled)")


def pick_profile(budget: Budget, model_spec: ModelSpec, **kwargs: Any) -> tuple[DeviceProfile, Estimate]:
    """:func:`plan_budget`'s profile and estimate (same arguments)."""
    plan = plan_budget(budget, model_spec, **kwargs)
    return plan.profile, plan.estimate
