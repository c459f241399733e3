"""Device models: what a simulated device can compute, hold, send and spend.

A :class:`DeviceModel` is a set of *modelled* figures of one device (never
measured on the host that runs the simulation)::

    gflops         sustained training throughput          GFLOP/s (10**9 FLOP/s)
    memory_mb      memory available for training          MB (10**6 bytes)
    uplink_mbps    uplink bandwidth                       Mbit/s (10**6 bit/s)
    downlink_mbps  downlink bandwidth                     Mbit/s
    latency_s      round-trip latency                     s
    compute_w      power while training                   W
    radio_up_w     radio power while sending              W
    radio_down_w   radio power while receiving            W
    availability   probability the device is online when sampled, in [0, 1]

Radio energy uses the "power while transferring" form: sending ``b`` bytes
costs ``radio_up_w x 8 b / (uplink_mbps x 10**6)`` joules (receiving alike);
the formulas are in :mod:`fedshrink.devices.cost`.

Shipped defaults (medians of a profile's clients; each client draws around
them, :mod:`fedshrink.devices.draws`). Every figure names its source; a figure
marked *assumption* is an engineering choice, not a measurement:

======  ======  ======  =====  =====  ======  =====  =====  =====  =====
name    GFLOP/s MB      up     down   RTT s   W      up W   down W avail
======  ======  ======  =====  =====  ======  =====  =====  =====  =====
iot     0.05    1       0.25   0.25   0.1     0.2    0.1    0.06   0.9
phone   10      512     6      13     0.04    3      3.92   1.96   0.5
edge    4       1024    45.74  85.73  0.021   5.4    0.5    0.5    0.95
laptop  50      4096    45.74  85.73  0.021   15     1.5    1      0.8
======  ======  ======  =====  =====  ======  =====  =====  =====  =====

Sources (see docs/devices.md for the derivations):

* phone throughput: Das et al., "Enabling On-Device Smartphone GPU based
  Training: Lessons Learned" (2022, arXiv:2202.10100) measure 15-30 GFLOP/s for
  training kernels on the CPUs of Snapdragon 8-series phones (MNN) and find
  whole-model training slower than its kernels (memory-bound); 10 GFLOP/s
  sustained is two thirds of the low end (the derating is an assumption).
* phone links: Huang et al., "A Close Examination of Performance and Power
  Characteristics of 4G LTE Networks" (MobiSys 2012): median LTE downlink
  13 Mbit/s and uplink 6 Mbit/s (4GTest, 3000+ users). Radio power from the
  same paper's LTE power model ``P = a_u t_u + a_d t_d + b`` (a_u = 438.39
  mW/Mbit/s, a_d = 51.97 mW/Mbit/s, b = 1288.04 mW) at those medians:
  3.92 W sending, 1.96 W receiving (tail energy after a transfer is not
  modelled, so radio energy is a lower bound).
* phone latency and the fixed-broadband links of edge and laptop: Ookla
  Speedtest Global Index, September 2020, as quoted by a secondary report:
  mobile 40 ms; fixed broadband 85.73 Mbit/s down, 45.74 Mbit/s up, 21 ms.
* edge throughput: a Raspberry Pi 4 measured about 8 GFLOP/s on HPL (fp64)
  (W. Feiereisen, "Benchmarking the Raspberry Pi 4 with Raspberry Pi OS64",
  2022); training taken at half of that (assumption).
* edge power: a Raspberry Pi 4 drew 5.1-5.4 W at the USB supply under high
  CPU load (chipwired.com, "How much power a Raspberry Pi uses", 36
  measurements).
* phone memory: FedScale uses devices with more than 2 GB of RAM, as
  production FL does (FedScale's dataset README, after Bonawitz et al. 2019);
  512 MB of it for training is an assumption.
* availability: production FL trains only on idle, charging devices on
  unmetered networks (Bonawitz et al., "Towards Federated Learning at Scale",
  2019); FedScale's availability trace (from FLASH, 136k phones) counts a
  charging device as available. The shares used here are assumptions.
* every other figure (iot everything, laptop throughput, memory and power,
  edge memory and radio power) is an assumption, stated in docs/devices.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedshrink.errors import ConfigError
from fedshrink.registry import Registry

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

# field -> (unit, lower bound, whether the bound is open, upper bound or None)
_LIMITS: dict[str, tuple[str, float, bool, float | None]] = {
    "gflops": ("GFLOP/s", 0.0, True, None),
    "memory_mb": ("MB", 0.0, True, None),
    "uplink_mbps": ("Mbit/s", 0.0, True, None),
    "downlink_mbps": ("Mbit/s", 0.0, True, None),
    "latency_s": ("s", 0.0, False, None),
    "compute_w": ("W", 0.0, False, None),
    "radio_up_w": ("W", 0.0, False, None),
    "radio_down_w": ("W", 0.0, False, None),
    "availability": ("", 0.0, False, 1.0),
}


def _check_number(key: str, value: object, lo: float, lo_open: bool, hi: float | None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]  # checked to be a real number above
        ok = (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
        raise ConfigError(key, value, f"a finite number {bound}")
    return float(value)  # type: ignore[arg-type]  # checked to be a real number above


@dataclass(frozen=True)
class DeviceModel:
    """Modelled figures of one device (units in the module doc); validated, JSON round-trip."""

    name: str
    gflops: float
    memory_mb: float
    uplink_mbps: float
    downlink_mbps: float
    latency_s: float
    compute_w: float
    radio_up_w: float
    radio_down_w: float
    availability: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError("device.name", self.name, "1-64 characters of letters, digits, '_', '-', '.'")
        for key, (_, lo, lo_open, hi) in _LIMITS.items():
            object.__setattr__(self, key, _check_number(f"device.{self.name}.{key}", getattr(self, key),
                                                        lo, lo_open, hi))

    @property
    def flops(self) -> float:
        """Sustained training throughput in FLOP/s."""
        return self.gflops * 1e9

    def replace(self, **changes: Any) -> DeviceModel:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceModel:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, Mapping) or set(data) != set(names):
            got = sorted(data) if isinstance(data, Mapping) else data
            raise ConfigError("device", got, "an object with exactly the fields " + ", ".join(names))
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> DeviceModel:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            raise ConfigError("device", str(text)[:80], "a JSON object") from None
        return cls.from_dict(data)


UNITS: dict[str, str] = {key: unit for key, (unit, *_) in _LIMITS.items()}
DEVICE_MODELS: Registry[DeviceModel] = Registry("device model", setting="device")


def register_device(model: DeviceModel) -> DeviceModel:
    return DEVICE_MODELS.add(model.name, model)


def get_device(name: str) -> DeviceModel:
    return DEVICE_MODELS.lookup(name)


# Sources and assumptions: module doc and docs/devices.md.
register_device(DeviceModel("iot", gflops=0.05, memory_mb=1.0, uplink_mbps=0.25, downlink_mbps=0.25, latency_s=0.1,
                            compute_w=0.2, radio_up_w=0.1, radio_down_w=0.06, availability=0.9))
register_device(DeviceModel("phone", gflops=10.0, memory_mb=512.0, uplink_mbps=6.0, downlink_mbps=13.0,
                            latency_s=0.04, compute_w=3.0,
                            radio_up_w=0.43839 * 6.0 + 1.28804,  # Huang et al. 2012 LTE model at 6 Mbit/s up
                            radio_down_w=0.05197 * 13.0 + 1.28804,  # ... and at 13 Mbit/s down
                            availability=0.5))
register_device(DeviceModel("edge", gflops=4.0, memory_mb=1024.0, uplink_mbps=45.74, downlink_mbps=85.73,
                            latency_s=0.021, compute_w=5.4, radio_up_w=0.5, radio_down_w=0.5, availability=0.95))
register_device(DeviceModel("laptop", gflops=50.0, memory_mb=4096.0, uplink_mbps=45.74, downlink_mbps=85.73,
                            latency_s=0.021, compute_w=15.0, radio_up_w=1.5, radio_down_w=1.0, availability=0.8))
