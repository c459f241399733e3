"""A SuperNode's own device figures and budget, read from its node-config.

In deployment a SuperNode states what it is with ``--node-config``::

    flower-supernode ... --node-config "partition-id=0 num-partitions=10 device='phone' device-gflops=6.5
                                        device-uplink-mbps=2 budget-memory-mb=256 budget-upload-kb=80"

Device keys (units as in :mod:`fedshrink.devices.model`): ``device`` names the
registered device model the others change (default: the node's profile's);
``device-gflops``, ``device-memory-mb``, ``device-uplink-mbps``,
``device-downlink-mbps``, ``device-latency-s``, ``device-compute-w``,
``device-radio-up-w``, ``device-radio-down-w``, ``device-availability``.
Budget keys: ``budget-memory-mb``, ``budget-upload-kb``, ``budget-time-s``,
``budget-energy-j`` (see :mod:`fedshrink.devices.budget`). A key starting
with ``device-`` or ``budget-`` that is not one of these, or a value that is
not a number in range, is a one-line :class:`~fedshrink.errors.ConfigError`.
Other keys are left alone (they belong to other parts of the node-config).
"""

from __future__ import annotations

from collections.abc import Mapping

from fedshrink.devices.budget import Budget
from fedshrink.devices.model import DeviceModel, get_device
from fedshrink.errors import ConfigError

DEVICE_KEYS: dict[str, str] = {
    "device-gflops": "gflops",
    "device-memory-mb": "memory_mb",
    "device-uplink-mbps": "uplink_mbps",
    "device-downlink-mbps": "downlink_mbps",
    "device-latency-s": "latency_s",
    "device-compute-w": "compute_w",
    "device-radio-up-w": "radio_up_w",
    "device-radio-down-w": "radio_down_w",
    "device-availability": "availability",
}
BUDGET_KEYS: dict[str, str] = {
    "budget-memory-mb": "memory_mb",
    "budget-upload-kb": "upload_kb",
    "budget-time-s": "time_s",
    "budget-energy-j": "energy_j",
}


def _unknown(node_config: Mapping[str, object], prefix: str, known: Mapping[str, str]) -> None:
    for key, value in node_config.items():
        if key.startswith(prefix) and key not in known:
            raise ConfigError(f"node-config {key}", value, "one of " + ", ".join(sorted(known)))


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"node-config {key}", value, "a number")
    return float(value)


def device_from_node_config(node_config: Mapping[str, object], default: str) -> DeviceModel:
    """The node's device: the model named ``device`` (else ``default``) with the ``device-*`` values it states."""
    _unknown(node_config, "device-", DEVICE_KEYS)
    name = node_config.get("device", default)
    if not isinstance(name, str):
        raise ConfigError("node-config device", name, "the name of a device model")
    base = get_device(name)
    changes = {field: _number(key, node_config[key]) for key, field in DEVICE_KEYS.items() if key in node_config}
    if not changes:
        return base
    try:
        return base.replace(name=f"{base.name}-node", **changes)
    except ConfigError as exc:  # name the node-config key, not the dataclass field
        field = exc.key.rsplit(".", 1)[-1]
        key = next(k for k, f in DEVICE_KEYS.items() if f == field)
        raise ConfigError(f"node-config {key}", exc.value, exc.allowed) from None


def budget_from_node_config(node_config: Mapping[str, object], default_device: str = "") -> Budget | None:
    """The node's budget from its ``budget-*`` keys, or None when it states none.

    Its device is the node-config's ``device`` key, else ``default_device`` (e.g. the node's profile's).
    """
    _unknown(node_config, "budget-", BUDGET_KEYS)
    limits = {field: _number(key, node_config[key]) for key, field in BUDGET_KEYS.items() if key in node_config}
    if not limits:
        return None
    device = node_config.get("device", default_device)
    if not isinstance(device, str):
        raise ConfigError("node-config device", device, "the name of a device model")
    try:
        return Budget(**limits, device=device)
    except ConfigError as exc:
        raise ConfigError("node-config budget", exc.value, exc.allowed) from None
