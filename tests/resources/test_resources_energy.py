"""Energy: RAPL counters (wrap-around, sub-domains), the CPU-time estimate and its label."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedshrink.errors import ConfigError
from fedshrink.resources.energy import (
    DEFAULT_WATTS_PER_CORE,
    ENERGY_METHODS,
    METHOD_ESTIMATED,
    METHOD_RAPL,
    EnergyProbe,
    counter_delta,
    estimate_cpu_energy_j,
    find_rapl_domains,
    is_estimated,
    method_code,
    method_label,
)


def fake_powercap(root: Path, domains: dict[str, tuple[int, int]]) -> None:
    for name, (energy, max_range) in domains.items():
        d = root / name
        d.mkdir(parents=True)
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")


def test_counter_delta_with_and_without_wrap() -> None:
    assert counter_delta(100, 250, 1000) == 150
    assert counter_delta(900, 50, 1000) == 150  # wrapped once: 100 to the top, 50 after
    with pytest.raises(ConfigError):
        counter_delta(1, 2, 0)


@given(st.integers(1, 2**40), st.data())
def test_counter_delta_recovers_any_increase_below_the_range(max_range: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, max_range - 1))
    inc = data.draw(st.integers(0, max_range - 1))
    assert counter_delta(start, (start + inc) % max_range, max_range) == inc


def test_rapl_probe_reads_packages_only_and_handles_wrap(tmp_path: Path) -> None:
    fake_powercap(tmp_path, {
        "intel-rapl:0": (999_000_000, 1_000_000_000),  # about to wrap
        "intel-rapl:0:0": (5, 1_000_000_000),  # a sub-domain (core): part of package 0
        "intel-rapl:1": (10_000_000, 1_000_000_000),
    })
    assert [d.name for d in find_rapl_domains(tmp_path)] == ["intel-rapl:0", "intel-rapl:1"]
    probe = EnergyProbe(powercap_root=tmp_path, use_nvml=False)
    assert probe.method == METHOD_RAPL
    snap = probe.start()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("1000000\n")  # +2 J after a wrap
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("999999999\n")  # ignored
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("13500000\n")  # +3.5 J
    reading = probe.stop(snap, cpu_seconds=100.0)  # CPU time unused when measured
    assert reading.joules == pytest.approx(5.5)
    assert reading.label == "measured:rapl" and not reading.estimated


def test_unreadable_rapl_falls_back_to_the_estimate(tmp_path: Path) -> None:
    fake_powercap(tmp_path, {"intel-rapl:0": (1, 100)})
    (tmp_path / "intel-rapl:0" / "energy_uj").unlink()  # as if root-only
    (tmp_path / "intel-rapl:0" / "energy_uj").mkdir()  # reading it fails with an OSError
    probe = EnergyProbe(watts_per_core=2.5, powercap_root=tmp_path, use_nvml=False)
    assert probe.rapl == [] and probe.method == METHOD_ESTIMATED
    reading = probe.stop(probe.start(), cpu_seconds=4.0)
    assert reading.joules == pytest.approx(10.0)  # 4 core-s x 2.5 W/core
    assert reading.estimated and reading.label == "estimated:cpu-time x W/core"


def test_estimate_and_labels() -> None:
    assert estimate_cpu_energy_j(3.0) == pytest.approx(3.0 * DEFAULT_WATTS_PER_CORE)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            estimate_cpu_energy_j(1.0, bad)
    with pytest.raises(ConfigError):
        EnergyProbe(watts_per_core=0)
    for code, label in ENERGY_METHODS.items():
        assert method_code(label) == code and method_label(code) == label
        assert is_estimated(code) == ("estimated" in label)
    with pytest.raises(ConfigError):
        method_label(99)
