"""Device-side cost of one client-round: time, energy and memory, modelled (pure functions).

With ``F`` training FLOPs, ``D`` / ``U`` bytes down / up and a device model
(:class:`~fedshrink.devices.model.DeviceModel`)::

    compute_s  = F / (gflops x 10**9)                         s
    download_s = 8 D / (downlink_mbps x 10**6) + latency_s    s   (one round trip per transfer)
    upload_s   = 8 U / (uplink_mbps x 10**6) + latency_s      s
    time_s     = download_s + compute_s + upload_s            s   (the device's part of the round)

    compute_j  = compute_w x compute_s                        J
    radio_j    = radio_down_w x 8 D / (downlink_mbps x 10**6)
               + radio_up_w   x 8 U / (uplink_mbps x 10**6)   J   (radio on while bytes move)
    energy_j   = compute_j + radio_j                          J

``F`` counts forward + backward as 3 x the forward MACs x 2 FLOP/MAC x
samples (:func:`fedshrink.resources.flops.training_flops`; the MACs are
those of every Conv2d / Linear, :func:`fedshrink.resources.flops.macs_per_sample`).
Not counted: the waits of a latency (no energy), the LTE radio's tail after a
transfer (Huang et al., MobiSys 2012, find it a large share of a short
transfer's energy, so radio energy is a lower bound), encoding and decoding
time, idle power. Every figure here is *modelled*; the host's measured
figures live in :mod:`fedshrink.resources`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fedshrink.devices.model import DeviceModel
from fedshrink.errors import ConfigError


def _non_negative(key: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(key, value, "a finite number >= 0")
    return float(value)


def compute_seconds(train_flops: float, device: DeviceModel) -> float:
    """``F / (gflops x 10**9)``: seconds to train ``train_flops`` FLOPs."""
    return _non_negative("train-flops", train_flops) / device.flops


def transfer_seconds(nbytes: float, mbps: float, latency_s: float) -> float:
    """``8 nbytes / (mbps x 10**6) + latency_s``: seconds to move ``nbytes`` over one link, one round trip."""
    return 8.0 * _non_negative("bytes", nbytes) / (mbps * 1e6) + latency_s


def radio_joules(nbytes: float, mbps: float, watts: float) -> float:
    """``watts x 8 nbytes / (mbps x 10**6)``: energy of the radio while ``nbytes`` move."""
    return watts * 8.0 * _non_negative("bytes", nbytes) / (mbps * 1e6)


@dataclass(frozen=True)
class RoundCost:
    """Modelled device figures of one client-round (s, J, bytes)."""

    download_s: float
    compute_s: float
    upload_s: float
    compute_j: float
    radio_j: float
    memory_bytes: int

    @property
    def time_s(self) -> float:
        return self.download_s + self.compute_s + self.upload_s

    @property
    def energy_j(self) -> float:
        return self.compute_j + self.radio_j

    def fits(self, device: DeviceModel) -> bool:
        """Whether the round's memory fits the device's memory for training."""
        return self.memory_bytes <= device.memory_mb * 1e6

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "time_s": self.time_s, "energy_j": self.energy_j}


def round_cost(device: DeviceModel, *, train_flops: float, download_bytes: float, upload_bytes: float,
               memory_bytes: int) -> RoundCost:
    """One client-round on ``device`` (formulas in the module doc)."""
    compute_s = compute_seconds(train_flops, device)
    return RoundCost(
        download_s=transfer_seconds(download_bytes, device.downlink_mbps, device.latency_s),
        compute_s=compute_s,
        upload_s=transfer_seconds(upload_bytes, device.uplink_mbps, device.latency_s),
        compute_j=device.compute_w * compute_s,
        radio_j=radio_joules(download_bytes, device.downlink_mbps, device.radio_down_w)
        + radio_joules(upload_bytes, device.uplink_mbps, device.radio_up_w),
        memory_bytes=int(memory_bytes),
    )
