"""Device models, per-client draws, availability and trace files."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest

from fedshrink.devices import (
    DEVICE_MODELS,
    DeviceModel,
    client_device,
    draw_device,
    get_device,
    get_profile,
    is_available,
    load_trace,
    parse_trace,
)
from fedshrink.errors import ConfigError


@pytest.mark.parametrize("name", sorted(DEVICE_MODELS))
def test_device_json_round_trip(name: str) -> None:
    dev = get_device(name)
    assert DeviceModel.from_json(dev.to_json()) == dev
    assert DeviceModel.from_dict(dev.to_dict()) == dev


def test_shipped_devices_and_profiles_agree() -> None:
    assert {"iot", "phone", "edge", "laptop"} <= set(DEVICE_MODELS)
    for name in ("iot", "phone", "edge", "laptop"):
        assert get_profile(name).device == name
    phone = get_device("phone")
    assert (phone.uplink_mbps, phone.downlink_mbps) == (6.0, 13.0)  # Huang et al. 2012 LTE medians
    assert phone.radio_up_w == pytest.approx(0.43839 * 6 + 1.28804)  # their LTE power model
    speeds = [get_device(n).gflops for n in ("iot", "edge", "phone", "laptop")]
    assert speeds == sorted(speeds)


@pytest.mark.parametrize(
    ("change", "key"),
    [({"gflops": 0.0}, "gflops"), ({"memory_mb": -1.0}, "memory_mb"), ({"uplink_mbps": float("inf")}, "uplink_mbps"),
     ({"latency_s": -0.1}, "latency_s"), ({"compute_w": True}, "compute_w"), ({"availability": 1.5}, "availability"),
     ({"name": "a b"}, "name")],
)
def test_device_validation(change: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(get_device("phone"), **change)
    assert err.value.key.endswith(key) and "\n" not in str(err.value)


def test_device_json_errors() -> None:
    with pytest.raises(ConfigError):
        DeviceModel.from_json("[")
    with pytest.raises(ConfigError, match="exactly the fields"):
        DeviceModel.from_dict({"name": "x"})
    with pytest.raises(ConfigError, match="one of"):
        get_device("toaster")


def test_draws_are_seeded_log_normal_around_the_median() -> None:
    phone = get_device("phone")
    assert draw_device(phone, 3, seed=7, spread=0.5) == draw_device(phone, 3, seed=7, spread=0.5)
    assert draw_device(phone, 3, seed=7, spread=0.5) != draw_device(phone, 3, seed=8, spread=0.5)
    assert draw_device(phone, 3, seed=7, spread=0.0) == phone
    draws = [draw_device(phone, c, seed=1, spread=0.5) for c in range(2000)]
    assert statistics.median(d.gflops for d in draws) == pytest.approx(phone.gflops, rel=0.1)
    assert statistics.median(d.uplink_mbps for d in draws) == pytest.approx(phone.uplink_mbps, rel=0.1)
    assert all(d.memory_mb == phone.memory_mb and d.compute_w == phone.compute_w for d in draws)
    wide = [draw_device(phone, c, seed=1, spread=1.0).gflops for c in range(200)]
    narrow = [draw_device(phone, c, seed=1, spread=0.2).gflops for c in range(200)]
    assert statistics.pstdev(wide) > statistics.pstdev(narrow)
    with pytest.raises(ConfigError):
        draw_device(phone, -1, seed=1, spread=0.5)
    with pytest.raises(ConfigError):
        draw_device(phone, 1, seed=1, spread=5.0)


def test_availability_is_seeded_per_round_and_client() -> None:
    half = get_device("phone").replace(availability=0.5)
    online = [is_available(half, c, seed=3, server_round=r) for r in range(1, 21) for c in range(50)]
    assert 0.4 < sum(online) / len(online) < 0.6
    assert online == [is_available(half, c, seed=3, server_round=r) for r in range(1, 21) for c in range(50)]
    assert all(is_available(half.replace(availability=1.0), c, 0, 1) for c in range(50))
    assert not any(is_available(half.replace(availability=0.0), c, 0, 1) for c in range(50))


HEADER = "client,throughput,uplink,downlink,latency,availability\n"


def test_trace_parses_and_applies() -> None:
    trace = parse_trace(HEADER + "0,2.5,1,4,0.05,0.7\n\n3,8,2,8,0,1\n", "t.csv")
    dev = trace.device_for(3, get_device("phone"))
    assert (dev.gflops, dev.uplink_mbps, dev.downlink_mbps, dev.latency_s, dev.availability) == (8, 2, 8, 0, 1)
    assert dev.memory_mb == get_device("phone").memory_mb  # not in the trace: the profile's
    with pytest.raises(ConfigError, match="client 1 has none"):
        trace.device_for(1, get_device("phone"))
    phone = get_device("phone")
    assert client_device(phone, 3, seed=1, spread=0.5, trace=trace) == dev  # the trace wins over draws
    assert client_device(phone, 3, seed=1, spread=0.5) == draw_device(phone, 3, seed=1, spread=0.5)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "header"),
        ("client,throughput\n0,1\n", "header"),
        (HEADER, "at least one row"),
        (HEADER + "0,1,1,1,0\n", "6 comma-separated values"),
        (HEADER + "x,1,1,1,0,1\n", "'client'"),
        (HEADER + "-1,1,1,1,0,1\n", "'client'"),
        (HEADER + "0,abc,1,1,0,1\n", "'throughput'"),
        (HEADER + "0,0,1,1,0,1\n", "'throughput'"),
        (HEADER + "0,1,-2,1,0,1\n", "'uplink'"),
        (HEADER + "0,1,1,nan,0,1\n", "'downlink'"),
        (HEADER + "0,1,1,1,-1,1\n", "'latency'"),
        (HEADER + "0,1,1,1,0,1.5\n", "'availability'"),
        (HEADER + "0,1,1,1,0,1\n0,2,2,2,0,1\n", "client 0 repeats"),
    ],
)
def test_trace_errors_are_one_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_trace(text, "t.csv")
    message = str(err.value)
    assert err.value.key == "device-trace" and "\n" not in message and fragment in message and "t.csv" in message


def test_trace_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(HEADER + "0,1,1,1,0,1\n1,1,1,1,0,2\n")
    with pytest.raises(ConfigError, match=r"trace\.csv:3"):
        load_trace(path)
    with pytest.raises(ConfigError, match="readable"):
        load_trace(tmp_path / "missing.csv")
