"""RunConfig: defaults mirror pyproject, every bad value fails with one line naming it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedshrink.config import RunConfig, parse_override
from fedshrink.errors import ConfigError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_defaults_equal_pyproject() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert RunConfig().to_mapping() == declared


def test_pyproject_names_the_apps() -> None:
    app = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "fedshrink.server_app:app",
        "clientapp": "fedshrink.client_app:app",
    }
    assert app["publisher"]


@pytest.mark.parametrize(
    ("key", "value", "allowed_fragment"),
    [
        ("num-server-rounds", 0, ">= 1"),
        ("num-server-rounds", -3, ">= 1"),
        ("num-server-rounds", 2.5, "integer"),
        ("num-server-rounds", True, "integer"),
        ("dirichlet-alpha", 0, "> 0"),
        ("dirichlet-alpha", -0.5, "> 0"),
        ("model", "vgg16", "'cnn'"),
        ("dataset", "imagenet", "'digits'"),
        ("partitioner", "shards", "'dirichlet'"),
        ("fraction-train", 0.0, "(0, 1]"),
        ("fraction-train", 1.5, "(0, 1]"),
        ("test-fraction", 1.0, "(0, 1)"),
        ("model-width", 0, "(0, 4]"),
        ("momentum", 1.0, "[0, 1)"),
        ("learning-rate", "fast", "number"),
        ("run-name", "../escape", "letters"),
        ("output-dir", "", "non-empty"),
        ("no-such-setting", 1, "known setting"),
    ],
)
def test_bad_setting_names_key_and_allowed(key: str, value: Any, allowed_fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"invalid setting {key}=")
    assert allowed_fragment in msg
    assert info.value.key == key


def test_int_is_accepted_for_float_settings() -> None:
    cfg = RunConfig.from_mapping({"dirichlet-alpha": 1})
    assert cfg.data.dirichlet_alpha == 1.0 and isinstance(cfg.data.dirichlet_alpha, float)


def test_unknown_setting_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'dirichlet-alpha'"):
        RunConfig.from_mapping({"dirichlet-alfa": 0.3})


def test_every_key_has_one_owner_and_a_help_text() -> None:
    from fedshrink.config import all_settings, setting_owners

    owners = setting_owners()
    pairs = all_settings()
    assert len(owners) == len(pairs) == len(RunConfig().to_mapping())
    assert all(s.help and s.allowed() for _, s in pairs)


def test_registered_options_are_settings() -> None:
    cfg = RunConfig.from_mapping({"defence": "clip+trimmed-mean", "trim-fraction": 0.3, "clip-norm": 2.0,
                                  "fragment-policy": "rolling", "rolling-step": 3})
    clip, trimmed = cfg.robust.defences()
    assert (clip.name, clip.max_norm) == ("clip", 2.0)  # type: ignore[attr-defined]
    assert (trimmed.name, trimmed.trim) == ("trimmed-mean", 0.3)  # type: ignore[attr-defined]
    assert cfg.fragments.policy(cfg.seed).config.step == 3  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="trim-fraction"):
        RunConfig.from_mapping({"trim-fraction": 0.5})


def test_random_policy_seed_follows_the_run_seed() -> None:
    a = RunConfig.from_mapping({"fragment-policy": "random", "seed": 1}).fragments.policy(1)
    b = RunConfig.from_mapping({"fragment-policy": "random", "seed": 2}).fragments.policy(2)
    assert a.config.seed == 1 and b.config.seed == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(("mix", "fragment"), [
    ("phone:0.5,laptop:0.6", "sum to 1.1"),
    ("tablet:1.0", "'tablet'"),
])
def test_profile_mix_errors_say_what_is_wrong(mix: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"profile-mix": mix})
    assert err.value.key == "profile-mix" and fragment in str(err.value) and "\n" not in str(err.value)


def test_json_round_trip() -> None:
    cfg = RunConfig.from_mapping({"model": "mlp", "num-server-rounds": 7, "quiet": True})
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_parse_override_reads_toml_values_and_bare_words() -> None:
    got = parse_override('model=mlp num-server-rounds=3 quiet=true dirichlet-alpha=0.3 run-name="a-b"')
    assert got == {"model": "mlp", "num-server-rounds": 3, "quiet": True, "dirichlet-alpha": 0.3,
                   "run-name": "a-b"}
    with pytest.raises(ConfigError):
        parse_override("justaword")


def test_views_carry_settings() -> None:
    cfg = RunConfig.from_mapping({"partitioner": "pathological", "classes-per-client": 3, "local-epochs": 5})
    assert cfg.partition_scheme().classes_per_client == 3
    assert cfg.training.epochs == 5
    assert cfg.split_spec().dataset == "digits"


def test_train_settings_round_trip_through_their_values() -> None:
    from fedshrink.training import TrainSettings

    settings = RunConfig.from_mapping({"local-epochs": 3, "learning-rate": 0.2}).training
    assert TrainSettings.from_values(settings.to_values()) == settings
    with pytest.raises(ConfigError, match="local-epochs"):
        TrainSettings.from_values({**settings.to_values(), "local-epochs": 2.5})


@pytest.mark.parametrize("settings, key", [
    ({"proxy-fraction": 0.0}, "model-norm"),  # static BN is evaluated with the proxy's statistics
    ({"proxy-fraction": 0.0, "model-norm": "layer", "profile-mix": "phone:0.4,laptop:0.6", "fusion-steps": 20},
     "fusion-steps"),
    ({"fragment-init": "zeros"}, "fragment-init"),
    ({"fusion-steps": -1}, "fusion-steps"),
    ({"fusion-teacher": "ensemble"}, "fusion-teacher"),
    ({"fusion-last-rounds": -1}, "fusion-last-rounds"),
])
def test_settings_that_need_the_proxy_split_or_a_known_value_fail_at_start(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(settings)
    assert err.value.key == key and "\n" not in str(err.value)
    assert RunConfig.from_mapping({"proxy-fraction": 0.0, "model-norm": "layer", "profile-mix": "phone:1.0",
                                   "fusion-steps": 0}).fragments.fusion() is None
    shipped = RunConfig().fragments.fusion()  # on by default, for the final model only (docs/devices.md)
    assert shipped is not None and shipped.teacher == "self" and shipped.last_rounds == 1 and shipped.steps == 50
    every = RunConfig.from_mapping({"fusion-steps": 20, "fusion-teacher": "sub-models",
                                    "fusion-last-rounds": 0}).fragments.fusion()
    assert every is not None and (every.steps, every.teacher, every.last_rounds) == (20, "sub-models", 0)


def _wrong_type(kind: type) -> object:
    return {bool: "maybe", int: "many", float: "lots", str: 12345}[kind]


@pytest.mark.parametrize("key", sorted(RunConfig().to_mapping()))
def test_every_setting_refuses_a_bad_value_with_one_line_naming_it(key: str) -> None:
    from fedshrink.config import all_settings

    (setting,) = [s for _, s in all_settings() if s.key == key]
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({key: _wrong_type(setting.kind)})
    msg = str(err.value)
    assert err.value.key == key and "\n" not in msg and msg.startswith(f"invalid setting {key}=")
    assert err.value.allowed and err.value.allowed == setting.allowed()


def test_profile_uplink_replaces_every_profiles_chain() -> None:
    from fedshrink.client.node import NodeIdentity, node_profile

    cfg = RunConfig.from_mapping({"profile-mix": "iot:0.5,laptop:0.5", "profile-uplink": "flat|topk:0.004|int8|zstd"})
    own = RunConfig.from_mapping({"profile-mix": "iot:0.5,laptop:0.5"})
    for pid in range(4):
        node = NodeIdentity(pid, 4)
        profile, plain = node_profile(cfg, node, {}, None), node_profile(own, node, {}, None)
        assert profile is not None and plain is not None
        assert profile.uplink == "flat|topk:0.004|quant:8|zstd:1" != plain.uplink
        assert profile.width == plain.width and profile.downlink == plain.downlink
    with pytest.raises(ConfigError, match="profile-uplink"):
        RunConfig.from_mapping({"profile-uplink": "topk:2"})
    with pytest.raises(ConfigError, match="downlink-start"):
        RunConfig.from_mapping({"downlink-start": "seed"})  # needs downlink-delta
    with pytest.raises(ConfigError, match="downlink-chain"):
        RunConfig.from_mapping({"downlink-chain": "flat|int8"})
