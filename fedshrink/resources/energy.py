"""Energy of a block of work: measured (RAPL, NVML) where readable, else estimated.

Sources, in order of preference:

* **RAPL** (Intel/AMD "Running Average Power Limit") through Linux powercap:
  ``/sys/class/powercap/intel-rapl:<N>/energy_uj`` is a cumulative package
  energy counter in microjoules that wraps to 0 after ``max_energy_range_uj``.
  Only the top-level package domains (``intel-rapl:0``, ``intel-rapl:1`` ...)
  are summed; their sub-domains (``intel-rapl:0:0`` core, uncore, dram) are
  parts of the package and would be double-counted. Since Linux 5.10 the
  counter is root-only on most distributions (CVE-2020-8694), so it is often
  unreadable; then it is simply not used. RAPL counts the *whole package*
  (every process on it), not this process alone.
* **NVML** (NVIDIA GPUs), through ``pynvml`` only when it is importable:
  ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since driver load,
  Volta and newer). It covers the GPU only, so without RAPL the CPU share is
  added as an estimate and the method says so.
* **Estimate** from process CPU time::

      E [J] = cpu_seconds [core-s] x watts_per_core [W / core]

  with ``watts_per_core`` a setting. The default,
  :data:`DEFAULT_WATTS_PER_CORE` = 12 W per core, is the per-core power the
  Green Algorithms calculator uses for a CPU whose model is unknown
  (Lannelongue, Grealey & Inouye, "Green Algorithms: Quantifying the Carbon
  Footprint of Computation", Advanced Science 8(12), 2021; it is a
  TDP-per-core figure, i.e. server-class, full load). Phones and
  microcontrollers draw far less per core (roughly 0.5-2 W), so set it per
  device profile when the figure matters.

Every reading carries its method as an integer code (:data:`ENERGY_METHODS`
maps codes to labels) because Flower's MetricRecord holds numbers only.
Anything not measured is labelled ``estimated:...`` wherever it is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshrink.errors import ConfigError

DEFAULT_WATTS_PER_CORE = 12.0  # W per busy core; Green Algorithms' default (see module docstring)
POWERCAP_ROOT = Path("/sys/class/powercap")

# integer code -> label; codes are stable (they travel in MetricRecords and CSVs)
METHOD_RAPL = 1
METHOD_RAPL_NVML = 2
METHOD_NVML_ESTIMATED_CPU = 3
METHOD_ESTIMATED = 4
ENERGY_METHODS: dict[int, str] = {
    METHOD_RAPL: "measured:rapl",
    METHOD_RAPL_NVML: "measured:rapl+nvml",
    METHOD_NVML_ESTIMATED_CPU: "measured:nvml+estimated:cpu-time x W/core",
    METHOD_ESTIMATED: "estimated:cpu-time x W/core",
}
ESTIMATED_METHODS = frozenset({METHOD_NVML_ESTIMATED_CPU, METHOD_ESTIMATED})


def method_label(code: int) -> str:
    """The label of an energy method code (raises ConfigError for an unknown code)."""
    try:
        return ENERGY_METHODS[int(code)]
    except (KeyError, ValueError, TypeError):
        raise ConfigError("energy-method", code, "one of " + ", ".join(map(str, ENERGY_METHODS))) from None


def method_code(label: str) -> int:
    """Inverse of :func:`method_label`."""
    for code, lab in ENERGY_METHODS.items():
        if lab == label:
            return code
    raise ConfigError("energy-method", label, "one of " + ", ".join(map(repr, ENERGY_METHODS.values())))


def is_estimated(code: int) -> bool:
    """True when any part of the energy figure is an estimate rather than a measurement."""
    method_label(code)
    return int(code) in ESTIMATED_METHODS


def estimate_cpu_energy_j(cpu_seconds: float, watts_per_core: float = DEFAULT_WATTS_PER_CORE) -> float:
    """Energy [J] = CPU time [core-seconds] x power per busy core [W]."""
    if not (math.isfinite(cpu_seconds) and cpu_seconds >= 0):
        raise ConfigError("cpu-seconds", cpu_seconds, "a finite number >= 0")
    check_watts(watts_per_core)
    return cpu_seconds * watts_per_core


def check_watts(watts_per_core: float) -> float:
    if not (isinstance(watts_per_core, int | float) and math.isfinite(watts_per_core) and watts_per_core > 0):
        raise ConfigError("watts-per-core", watts_per_core, "a finite number of watts > 0")
    return float(watts_per_core)


def counter_delta(start: int, end: int, max_range: int) -> int:
    """Increase of a wrapping counter from ``start`` to ``end`` (same units as the counter).

    The counter counts up to ``max_range`` and restarts at 0; one wrap is
    assumed when ``end < start`` (RAPL's range is about 2^32 uJ to 2^38 uJ,
    minutes to hours at package power, far longer than a round). Two wraps
    cannot be told from one, as with any sampled counter.
    """
    if start < 0 or end < 0 or max_range <= 0:
        raise ConfigError("energy-counter", (start, end, max_range), "non-negative readings, a positive range")
    if end >= start:
        return end - start
    return max_range - start + end


@dataclass(frozen=True)
class RaplDomain:
    """One package domain of the powercap tree."""

    name: str
    energy_path: Path
    max_range_uj: int

    def read_uj(self) -> int:
        return int(self.energy_path.read_text().strip())


def find_rapl_domains(root: Path = POWERCAP_ROOT) -> list[RaplDomain]:
    """The readable top-level RAPL package domains under ``root`` (empty when none are)."""
    domains: list[RaplDomain] = []
    try:
        candidates = sorted(root.glob("intel-rapl:*"))
    except OSError:
        return []
    for path in candidates:
        if path.name.count(":") != 1:  # intel-rapl:0:0 etc. are parts of a package
            continue
        energy, max_range = path / "energy_uj", path / "max_energy_range_uj"
        try:
            domain = RaplDomain(path.name, energy, int(max_range.read_text().strip()))
            domain.read_uj()
        except (OSError, ValueError):
            continue  # root-only or absent: not usable
        domains.append(domain)
    return domains


class NvmlSource:
    """GPU energy via pynvml (millijoule counter of every visible device)."""

    def __init__(self, pynvml: Any, handles: list[Any]) -> None:
        self._nvml = pynvml
        self._handles = handles

    @classmethod
    def open(cls) -> NvmlSource | None:
        try:
            import pynvml  # optional; never a dependency
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            for h in handles:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        except Exception:  # no driver, no device, or a pre-Volta GPU
            return None
        return cls(pynvml, handles) if handles else None

    def read_mj(self) -> list[int]:
        return [int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles]


@dataclass(frozen=True)
class EnergySnapshot:
    rapl_uj: tuple[int, ...]
    nvml_mj: tuple[int, ...]


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    method: int  # a key of ENERGY_METHODS

    @property
    def label(self) -> str:
        return method_label(self.method)

    @property
    def estimated(self) -> bool:
        return is_estimated(self.method)


class EnergyProbe:
    """Reads energy counters at the start and end of a block; estimates when none is readable.

    Sources are discovered once, at construction (a directory listing and a
    few file reads); :meth:`start` and :meth:`stop` then cost one small file
    read per RAPL domain and one NVML call per GPU.
    """

    def __init__(
        self,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        *,
        powercap_root: Path = POWERCAP_ROOT,
        use_rapl: bool = True,
        use_nvml: bool = True,
    ) -> None:
        self.watts_per_core = check_watts(watts_per_core)
        self.rapl = find_rapl_domains(powercap_root) if use_rapl else []
        self.nvml = NvmlSource.open() if use_nvml else None

    @property
    def method(self) -> int:
        if self.rapl:
            return METHOD_RAPL_NVML if self.nvml else METHOD_RAPL
        return METHOD_NVML_ESTIMATED_CPU if self.nvml else METHOD_ESTIMATED

    def start(self) -> EnergySnapshot:
        return EnergySnapshot(
            tuple(d.read_uj() for d in self.rapl),
            tuple(self.nvml.read_mj()) if self.nvml else (),
        )

    def stop(self, start: EnergySnapshot, cpu_seconds: float) -> EnergyReading:
        """Energy since ``start``; ``cpu_seconds`` is the block's process CPU time (for estimates)."""
        joules = 0.0
        if self.rapl:
            for domain, s in zip(self.rapl, start.rapl_uj, strict=True):
                joules += counter_delta(s, domain.read_uj(), domain.max_range_uj) * 1e-6  # uJ -> J
        else:
            joules += estimate_cpu_energy_j(cpu_seconds, self.watts_per_core)
        if self.nvml:
            for s_mj, e_mj in zip(start.nvml_mj, self.nvml.read_mj(), strict=True):
                joules += max(0, e_mj - s_mj) * 1e-3  # mJ -> J
        return EnergyReading(joules, self.method)
