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
    assert cfg.dirichlet_alpha == 1.0 and isinstance(cfg.dirichlet_alpha, float)


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
    assert cfg.train_settings().epochs == 5
    assert cfg.split_spec().dataset == "digits"


def test_train_settings_round_trip_through_the_train_message() -> None:
    from fedshrink.training import TrainSettings

    settings = RunConfig.from_mapping({"local-epochs": 3, "learning-rate": 0.2}).train_settings()
    assert TrainSettings.from_config(settings.to_config()) == settings
    with pytest.raises(ConfigError, match="local-epochs"):
        TrainSettings.from_config({**settings.to_config(), "local-epochs": 2.5})
    with pytest.raises(ConfigError, match="momentum"):
        TrainSettings.from_config({k: v for k, v in settings.to_config().items() if k != "momentum"})


@pytest.mark.parametrize("settings, key", [
    ({"proxy-fraction": 0.0}, "model-norm"),  # static BN is evaluated with the proxy's statistics
    ({"proxy-fraction": 0.0, "model-norm": "layer", "profile-mix": "phone:0.4,laptop:0.6"}, "fusion-steps"),
    ({"fragment-init": "zeros"}, "fragment-init"),
    ({"fusion-steps": -1}, "fusion-steps"),
])
def test_settings_that_need_the_proxy_split_or_a_known_value_fail_at_start(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(settings)
    assert err.value.key == key and "\n" not in str(err.value)
    assert RunConfig.from_mapping({"proxy-fraction": 0.0, "model-norm": "layer", "profile-mix": "phone:1.0",
                                   "fusion-steps": 0}).fusion_config() is None
    assert RunConfig().fusion_config() is not None
