"""Settings of simulated devices: the fleet clock, per-client draws or a trace, budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.devices.budget import Budget, parse_budget_mix
from fedshrink.devices.clock import parse_over_select
from fedshrink.devices.model import DEVICE_MODELS
from fedshrink.devices.profiles import parse_shares, seeded_shares
from fedshrink.settings import Section, accepted_by, at_least, between, greater_than, one_of, option

ABSENT_UPDATES = ("auto", "reuse", "drop")


def _budget_mix(text: str) -> object:
    return parse_budget_mix(text) if text else ()


def _device_mix(text: str) -> object:
    return parse_shares(text, DEVICE_MODELS, key="device-mix", what="device models") if text else {}


def _device_mix_words() -> str:
    return ("'' or device models with shares such as 'phone:0.4,laptop:0.6' (known: "
            + ", ".join(sorted(DEVICE_MODELS)) + ")")


@dataclass(frozen=True)
class DeviceSettings(Section):
    title: ClassVar[str] = "devices"

    round_deadline: float = option(
        0.0, "seconds of modelled device time a round waits for updates; later ones are dropped (0 = no deadline)",
        rule=at_least(0))
    over_select: float = option(
        0.0, "extra clients sampled per round, a fraction (< 1) of the wanted count or a whole count; "
        "the first to finish are kept", rule=accepted_by(parse_over_select, "a fraction in [0, 1) or a whole count"))
    device_availability: bool = option(
        True, "model each device's availability: a client offline in a round (its seeded draw) is not reached")
    absent_updates: str = option(
        "auto", "a sampled client that is offline or misses the round deadline: `reuse` counts its latest "
        "accepted update again, at most reuse-rounds old (MIFA); `drop` leaves it out; `auto`: reuse, unless "
        "dp-mode, a defence or the norm guard is set (each assumes an update counts once)", rule=one_of(ABSENT_UPDATES))
    reuse_rounds: int = option(10, "oldest update, in rounds, that absent-updates reuses", rule=at_least(1))
    reuse_memory_mb: float = option(
        256.0, "server memory for the updates absent-updates keeps (sent values and masks); past it the oldest "
        "are forgotten", rule=greater_than(0))
    device_spread: float = option(
        0.5, "sigma of the log-normal draw of each client's throughput, links and latency around its profile's "
        "medians (0: every client at the medians)", rule=between(0, 3))
    device_trace: str = option(
        "", "CSV of per-client device figures (client,throughput,uplink,downlink,latency,availability; "
        "docs/devices.md) instead of draws; '' = draws")
    device_mix: str = option(
        "", "each client's device when neither its profile nor its budget names one, e.g. `phone:0.4,laptop:0.6` "
        "(the same fleet under full-width FedAvg); '' = none (host figures only)",
        rule=accepted_by(_device_mix, _device_mix_words))
    budget_mix: str = option(
        "", "`''`, or budgets with shares, e.g. `mem=2,up=50,device=iot:0.5;time=30,device=phone:0.5`: "
        "clients state a budget and the planner picks their profile",
        rule=accepted_by(_budget_mix, "'' or <budget>:<share> entries joined by ';' (docs/devices.md)"))

    def device_for(self, partition_id: int, num_partitions: int, seed: int) -> str | None:
        """The device model the device mix gives a partition (None without a device mix)."""
        if not self.device_mix:
            return None
        mix = parse_shares(self.device_mix, DEVICE_MODELS, key="device-mix", what="device models")
        names = list(mix)
        return names[seeded_shares([mix[n] for n in names], num_partitions, seed)[partition_id]]

    def budgets(self) -> tuple[tuple[Budget, float], ...]:
        """The parsed budget mix (empty when none)."""
        return parse_budget_mix(self.budget_mix) if self.budget_mix else ()
