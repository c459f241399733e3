"""Device profiles: registry, JSON, mixes, estimates and budgets."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
from fragment_helpers import MODEL_NAMES

from fedshrink.compression import Chain
from fedshrink.config import RunConfig
from fedshrink.devices.budget import ProfileBudget, pick_profile
from fedshrink.devices.profiles import (
    DEFAULT_MIX,
    PROFILES,
    DeviceProfile,
    assign_profiles,
    chain_bytes,
    estimate,
    get_profile,
    parse_mix,
)
from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec, build_model, count_parameters

SPEC = ModelSpec("cnn", (3, 32, 32), 10)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_json_round_trip(name: str) -> None:
    p = get_profile(name)
    assert DeviceProfile.from_json(p.to_json()) == p
    assert DeviceProfile.from_dict(p.to_dict()) == p


def test_shipped_profiles() -> None:
    assert {"iot", "phone", "edge", "laptop"} <= set(PROFILES)
    iot, laptop = get_profile("iot"), get_profile("laptop")
    assert iot.width == 0.25 and iot.sparsity == 0.5 and iot.weight_bits == 4 and iot.uplink.startswith("topk:0.1")
    assert laptop.width == 1.0 and laptop.weight_bits == 32 and laptop.downlink == "raw" and laptop.prune == "none"
    assert Chain.parse(laptop.uplink).lossy  # every uplink is compressed, with error feedback
    shipped = [get_profile(n) for n in ("iot", "phone", "edge", "laptop")]
    assert [p.width for p in shipped] == sorted(p.width for p in shipped)
    # the same local training as a full-width run with the default settings
    defaults = RunConfig()
    train = defaults.training
    assert all(p.local_epochs == train.epochs and p.batch_size == train.batch_size for p in shipped)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"width": 0.0}, "width"),
        ({"width": 1.5}, "width"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"prune": "magic"}, "prune"),
        ({"prune": "none"}, "sparsity"),  # sparsity > 0 without pruning
        ({"weight_bits": 1}, "weight_bits"),
        ({"weight_bits": 16}, "weight_bits"),
        ({"uplink": "topk:2"}, "uplink"),
        ({"downlink": "nope"}, "downlink"),
        ({"local_epochs": 0}, "local_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"name": "bad name"}, "name"),
    ],
)
def test_profile_validation(change: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(get_profile("phone"), **change)
    assert err.value.key.endswith(key)


def test_profile_json_errors() -> None:
    with pytest.raises(ConfigError):
        DeviceProfile.from_json("{")
    with pytest.raises(ConfigError):
        DeviceProfile.from_json('{"name": "x", "colour": 1}')
    with pytest.raises(ConfigError, match="profile"):
        get_profile("toaster")


@pytest.mark.parametrize(
    "text",
    ["", "iot", "iot:0.5,phone:0.4", "iot:0.5,toaster:0.5", "iot:0.5,iot:0.5", "iot:1.2,phone:-0.2", "iot:x,phone:1"],
)
def test_parse_mix_errors_are_one_line(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_mix(text)
    assert "\n" not in str(err.value) and err.value.key == "profile-mix"


def test_assign_profiles_largest_remainder_and_seeded() -> None:
    assert parse_mix(DEFAULT_MIX) == {"phone": 0.4, "laptop": 0.6}
    mix = "iot:0.4,phone:0.4,laptop:0.2"
    plan = assign_profiles(mix, 7, seed=1)
    assert Counter(plan) == {"iot": 3, "phone": 3, "laptop": 1}  # quotas 2.8, 2.8, 1.4
    assert plan == assign_profiles(mix, 7, seed=1)
    assert any(assign_profiles(mix, 50, seed=s) != assign_profiles(mix, 50, seed=1) for s in (2, 3))
    assert Counter(assign_profiles({"edge": 0.5, "laptop": 0.5}, 3, 0)) == {"edge": 2, "laptop": 1}
    assert assign_profiles(DEFAULT_MIX, 0, 0) == []
    for n in (5, 10, 100):
        small = sum(get_profile(p).width <= 0.5 for p in assign_profiles(DEFAULT_MIX, n, 0))
        assert small >= 0.4 * n


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_estimate_formula(name: str) -> None:
    spec = ModelSpec(name, (3, 32, 32), 10)
    laptop = DeviceProfile("full-raw")  # width 1, fp32, raw chains
    est = estimate(spec, laptop)
    params = count_parameters(build_model(spec))
    p4 = 4 * params
    mem = est.memory
    assert est.params == params
    assert (mem.weights, mem.momentum, mem.reference) == (p4, p4, p4)
    assert (mem.forward_copy, mem.masks, mem.residual) == (0, 0, 0)  # fp32, unpruned, lossless uplink
    assert mem.batch == 4 * 3 * 32 * 32 * laptop.batch_size + 8 * laptop.batch_size
    assert mem.working > mem.activations > 0
    n_tensors = len(build_model(spec).state_dict())
    assert est.upload_bytes == p4 + 32 * n_tensors  # raw chain
    assert mem.codec == p4 + est.upload_bytes
    assert est.train_memory_bytes == mem.round_peak == mem.step_peak + p4  # training (+ reference) dominates
    iot = estimate(spec, get_profile("iot"))
    assert iot.params < est.params and iot.upload_bytes < est.upload_bytes / 20
    assert iot.train_memory_bytes < est.train_memory_bytes
    pw = iot.prunable
    assert iot.memory.masks == math.ceil(pw / 8) and iot.memory.residual == 4 * iot.params  # 1-bit masks, EF
    assert math.ceil(4 * pw / 8) < iot.memory.forward_copy < math.ceil(4 * pw / 8) + 4 * pw  # 4-bit copy + scales


def test_chain_bytes() -> None:
    assert chain_bytes("raw", [(10,)]) == 40 + 32
    assert chain_bytes("int8", [(10,)]) == 10 + 8 + 32
    # top-k 10% of 1000 at 4 bits: 100 values in 50 bytes + index min(125, 100 * 1)
    assert chain_bytes("topk:0.1|q4|zlib", [(1000,)]) == 50 + 8 + 100 + 32


def test_pick_profile() -> None:
    big, est = pick_profile(ProfileBudget(1e4, 1e5), SPEC)
    assert big.width == 1.0 and big.uplink == "raw" and est.train_memory_bytes <= 1e10
    # enough memory for width 1, but an upload budget that needs compression
    mid, est_mid = pick_profile(ProfileBudget(1e4, 150), SPEC)
    assert mid.width == 1.0 and mid.uplink != "raw" and est_mid.upload_bytes <= 150e3
    # tight memory forces a smaller width
    small, est_small = pick_profile(ProfileBudget(5, 1e5), SPEC)
    assert small.width < 1.0 and est_small.train_memory_bytes <= 5e6
    with pytest.raises(ConfigError, match=r"mem=0\.01,up=0\.1.*width 0\.125") as err:
        pick_profile(ProfileBudget(0.01, 0.1), SPEC)
    assert "MB" in str(err.value) and "kB" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        ProfileBudget(0, 1)
