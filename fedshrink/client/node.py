"""Who a node is: its partition (node config), what it trains with (profile or budget), and its device.

In simulation all three follow from the run's settings and the partition id
(seeded, so every engine agrees); in deployment a SuperNode's node config may
name them itself (``profile=``, ``budget-*=``, ``device=`` and ``device-*=``,
see :mod:`fedshrink.devices.nodeconfig`), which wins over the run's mixes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass

from fedshrink.compression.chain import ChainConfig
from fedshrink.config import RunConfig
from fedshrink.devices import (
    Budget,
    DeviceModel,
    DeviceTrace,
    assign_budgets,
    budget_from_node_config,
    client_device,
    device_from_node_config,
    get_device,
    load_trace,
)
from fedshrink.devices.nodeconfig import DEVICE_KEYS
from fedshrink.devices.profiles import DeviceProfile, assign_profiles, get_profile
from fedshrink.errors import ConfigError


@dataclass(frozen=True)
class NodeIdentity:
    partition_id: int
    num_partitions: int

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> NodeIdentity:
        values = []
        for key in ("partition-id", "num-partitions"):
            value = node_config.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"node-config {key}", value, "an integer set by the simulation or --node-config")
            values.append(value)
        pid, n = values
        if n < 1:
            raise ConfigError("num-partitions", n, "an integer >= 1")
        if not 0 <= pid < n:
            raise ConfigError("partition-id", pid, f"an integer in [0, {n})")
        return cls(pid, n)


def node_budget(cfg: RunConfig, node: NodeIdentity, node_config: Mapping[str, object]) -> Budget | None:
    """The node's budget: its node config's ``budget-*`` keys, else its share of the run's budget mix, else None."""
    stated = budget_from_node_config(node_config, default_device=str(node_config.get("device", "")))
    if stated is not None:
        return stated
    if "profile" in node_config or not cfg.devices.budget_mix:
        return None
    return assign_budgets(cfg.devices.budget_mix, node.num_partitions, cfg.seed)[node.partition_id]


def node_profile(cfg: RunConfig, node: NodeIdentity, node_config: Mapping[str, object],
                 budget: Budget | None) -> DeviceProfile | None:
    """The node's device profile: ``profile=...`` in its node config, else its share of the run's mix.

    None when it states a budget instead (the server plans its profile) or neither names one (the run then
    trains the whole model everywhere).
    """
    if "profile" in node_config:
        profile = get_profile(str(node_config["profile"]))
    elif budget is not None or not cfg.fragments.profile_mix:
        return None
    else:
        profile = get_profile(assign_profiles(cfg.fragments.profile_mix, node.num_partitions,
                                              cfg.seed)[node.partition_id])
    if cfg.fragments.profile_uplink:  # one codec for the whole fleet
        profile = dataclasses.replace(profile, uplink=ChainConfig.parse(cfg.fragments.profile_uplink).to_string())
    return profile


@functools.lru_cache(maxsize=4)
def _trace(path: str) -> DeviceTrace:
    return load_trace(path)


def node_device(cfg: RunConfig, node: NodeIdentity, node_config: Mapping[str, object],
                profile: DeviceProfile | None, budget: Budget | None) -> DeviceModel | None:
    """The node's simulated device: its profile's (or budget's, or the device mix's) model, drawn around its
    medians for this partition (or its trace row); values the node config states win. None: no device model."""
    base = profile.device if profile is not None else (budget.device if budget is not None and budget.device
                                                       else cfg.devices.device_for(node.partition_id,
                                                                                   node.num_partitions, cfg.seed))
    if "device" in node_config or any(k in node_config for k in DEVICE_KEYS):
        return device_from_node_config(node_config, default=base or "laptop")
    if base is None:
        return None
    trace = _trace(cfg.devices.device_trace) if cfg.devices.device_trace else None
    return client_device(get_device(base), node.partition_id, cfg.seed, cfg.devices.device_spread, trace)
