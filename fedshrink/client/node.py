"""Who a node is: its partition (from the node config) and the device profile it trains with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedshrink.config import RunConfig
from fedshrink.errors import ConfigError
from fedshrink.profiles import DeviceProfile, assign_profiles, get_profile


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


def node_profile(cfg: RunConfig, node: NodeIdentity, node_config: Mapping[str, object]) -> DeviceProfile | None:
    """The node's device profile: ``profile=...`` in its node config, else its share of the run's mix.

    None when neither names one (the run then trains the whole model everywhere).
    """
    if "profile" in node_config:
        return get_profile(str(node_config["profile"]))
    if not cfg.fragments.profile_mix:
        return None
    names = assign_profiles(cfg.fragments.profile_mix, node.num_partitions, cfg.seed)
    return get_profile(names[node.partition_id])
