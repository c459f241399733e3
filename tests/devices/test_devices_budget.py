"""Budgets: parsing, mixes, the planner's choices and its one-line failure; node-config; settings."""

from __future__ import annotations

from collections import Counter

import pytest

from fedshrink.config import RunConfig
from fedshrink.devices import (
    Budget,
    assign_budgets,
    budget_from_node_config,
    device_from_node_config,
    get_device,
    parse_budget,
    parse_budget_mix,
    plan_budget,
)
from fedshrink.devices.settings import DeviceSettings
from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec

SPEC = ModelSpec("cnn", (1, 8, 8), 10)


def test_budget_text_and_json_round_trip() -> None:
    b = parse_budget("mem=2,up=50,time=30,energy=5,device=phone")
    assert (b.memory_mb, b.upload_kb, b.time_s, b.energy_j, b.device) == (2, 50, 30, 5, "phone")
    assert parse_budget(b.to_text()) == b
    assert Budget.from_json(b.to_json()) == b
    assert Budget.from_dict(Budget(upload_kb=3).to_dict()) == Budget(upload_kb=3)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "key=value"), ("mem", "is not one"), ("ram=2", "is not one"), ("mem=x", "not one"),
     ("mem=2,mem=3", "repeats"), ("mem=0", "> 0"), ("device=phone", "at least one"), ("time=3", "device"),
     ("mem=2,device=toaster", "one of")],
)
def test_budget_errors_are_one_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_budget(text)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "<budget>:<share>"), ("mem=2,device=iot", "':share'"), ("mem=2:1", "device=<name> in every entry"),
     ("mem=2,device=iot:0", "> 0"), ("mem=2,device=iot:0.5;up=3,device=phone:0.4", "sum to 0.9"),
     ("mem=2,device=iot:x", "> 0")],
)
def test_budget_mix_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_budget_mix(text)
    assert err.value.key == "budget-mix" and fragment in str(err.value) and "\n" not in str(err.value)


def test_assign_budgets_is_seeded_largest_remainder() -> None:
    mix = "mem=2,device=iot:0.4;up=50,device=phone:0.6"
    plan = assign_budgets(mix, 7, seed=1)
    assert Counter(b.device for b in plan) == {"phone": 4, "iot": 3}  # quotas 2.8 and 4.2
    assert plan == assign_budgets(mix, 7, seed=1)
    assert any(assign_budgets(mix, 30, seed=s) != assign_budgets(mix, 30, seed=1) for s in (2, 3))


def test_planner_picks_widest_then_lightest() -> None:
    roomy = plan_budget(Budget(memory_mb=100), SPEC, batch_size=16)
    assert roomy.profile.width == 1.0 and roomy.profile.uplink == "raw"
    # an upload limit raw bytes exceed: still full width, compressed
    up = plan_budget(Budget(memory_mb=100, upload_kb=20), SPEC, batch_size=16)
    assert up.profile.width == 1.0 and up.profile.uplink != "raw" and up.estimate.upload_bytes <= 20e3
    # a memory limit the full width exceeds: a narrower width
    mem = plan_budget(Budget(memory_mb=1.0), SPEC, batch_size=16)
    assert mem.profile.width < 1.0 and mem.estimate.train_memory_bytes <= 1e6
    with pytest.raises(ConfigError, match="nearest is budget-w1-"):
        plan_budget(Budget(memory_mb=1.0), SPEC, batch_size=16, widths=(1.0,))  # no narrower width allowed
    line = mem.explain()
    assert "\n" not in line and "mem " in line and "<= 1 MB" in line and "(modelled)" in line


def test_time_and_energy_budgets_use_the_device() -> None:
    samples = 2 * 100  # 100 examples, 2 epochs
    iot = get_device("iot")
    full = plan_budget(Budget(memory_mb=100, upload_kb=1e4), SPEC, batch_size=16).estimate.cost(iot, samples)
    plan = plan_budget(Budget(time_s=full.time_s / 4, device="iot"), SPEC, samples=samples, batch_size=16)
    assert plan.cost is not None and plan.cost.time_s <= full.time_s / 4 and plan.profile.width < 1.0
    assert plan.profile.device == "iot"
    cheap = plan_budget(Budget(energy_j=full.energy_j / 4, device="iot"), SPEC, samples=samples, batch_size=16)
    assert cheap.cost is not None and cheap.cost.energy_j <= full.energy_j / 4
    with pytest.raises(ConfigError, match="samples"):
        plan_budget(Budget(time_s=1.0, device="iot"), SPEC)


def test_a_budget_nothing_fits_fails_in_one_line_naming_the_nearest() -> None:
    with pytest.raises(ConfigError) as err:
        plan_budget(Budget(memory_mb=0.01, upload_kb=0.1), SPEC, batch_size=16)
    message = str(err.value)
    assert "\n" not in message and "mem=0.01,up=0.1" in message and "nearest is budget-w0.125" in message
    assert "MB" in message and "kB" in message


def test_node_config_device_and_budget() -> None:
    node = {"partition-id": 0, "device": "phone", "device-gflops": 6.5, "device-uplink-mbps": 2,
            "budget-memory-mb": 256, "budget-time-s": 30}
    dev = device_from_node_config(node, default="laptop")
    assert (dev.gflops, dev.uplink_mbps, dev.downlink_mbps) == (6.5, 2.0, get_device("phone").downlink_mbps)
    assert device_from_node_config({}, default="edge") == get_device("edge")
    budget = budget_from_node_config(node)
    assert budget == Budget(memory_mb=256, time_s=30, device="phone")
    assert budget_from_node_config({"partition-id": 1}) is None
    assert budget_from_node_config({"budget-time-s": 5}, default_device="iot") == Budget(time_s=5, device="iot")


@pytest.mark.parametrize(
    ("node", "key"),
    [({"device-flops": 3}, "device-flops"), ({"device-gflops": "fast"}, "device-gflops"),
     ({"device-gflops": -1}, "device-gflops"), ({"device-availability": 2}, "device-availability"),
     ({"device": "toaster"}, "device")],
)
def test_node_config_device_errors(node: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        device_from_node_config(node, default="phone")
    assert err.value.key.endswith(key) and "\n" not in str(err.value)


def test_node_config_budget_errors() -> None:
    with pytest.raises(ConfigError, match="budget-upload-kb"):
        budget_from_node_config({"budget-upload": 3})
    with pytest.raises(ConfigError, match="device"):
        budget_from_node_config({"budget-energy-j": 3})  # energy needs a device


def test_device_settings() -> None:
    s = DeviceSettings.from_values({"round-deadline": 30, "over-select": 0.3, "budget-mix": "mem=2,device=iot:1"})
    assert s.round_deadline == 30.0 and s.budgets()[0][0] == Budget(memory_mb=2, device="iot")
    assert DeviceSettings.from_values(s.to_values()) == s
    for key, bad in [("over-select", 1.5), ("device-spread", -1), ("round-deadline", -2), ("budget-mix", "mem=2")]:
        with pytest.raises(ConfigError) as err:
            DeviceSettings.from_values({key: bad})
        assert err.value.key == key and "\n" not in str(err.value)
    cfg = RunConfig.from_mapping({"round-deadline": 12.5, "device-spread": 0})
    assert cfg.devices.round_deadline == 12.5 and RunConfig.from_json(cfg.to_json()) == cfg
