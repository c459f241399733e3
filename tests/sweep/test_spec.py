"""Sweep files: what they plan, what they refuse (one line each), and the hash that names a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedshrink.config import RunConfig
from fedshrink.errors import ConfigError
from fedshrink.sweep import SweepSpec, load_sweep
from fedshrink.sweep.hashing import NON_RESULT_KEYS, settings_hash

TOML = """
name = "demo"
seeds = [1, 2, 3]
num-clients = 4
targets = [0.5]

[base]
num-server-rounds = 2
distill = false

[grid]
profile-mix = ["", "phone:0.4,laptop:0.6"]
"""


def test_grid_times_seeds(tmp_path: Path) -> None:
    f = tmp_path / "demo.toml"
    f.write_text(TOML)
    spec = load_sweep(f)
    assert spec.name == "demo" and spec.num_clients == 4 and spec.targets == (0.5,)
    assert spec.configs == ["profile-mix=''", "profile-mix=phone:0.4,laptop:0.6"]
    assert len(spec.runs) == 6 and len({r.key for r in spec.runs}) == 6
    mixed = [r for r in spec.runs if r.axes["profile-mix"] != "''"]
    assert {r.seed for r in mixed} == {1, 2, 3}
    assert all(r.settings["profile-mix"] == "phone:0.4,laptop:0.6" and r.settings["distill"] is False for r in mixed)


def test_yaml_reads_like_toml(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    import tomllib

    (tmp_path / "a.toml").write_text(TOML)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(tomllib.loads(TOML)))
    keys = [[r.key for r in load_sweep(tmp_path / name).runs] for name in ("a.toml", "a.yaml")]
    assert keys[0] == keys[1]


def test_runs_with_named_settings_own_seeds_and_own_grid() -> None:
    spec = SweepSpec.from_mapping({
        "seeds": [1, 2], "base": {"num-server-rounds": 2},
        "runs": [{"name": "fedavg"},
                 {"name": "attacked", "settings": {"attack-fraction": 0.25}, "seeds": [7],
                  "grid": {"attack": ["sign-flip", "gaussian"],
                           "defence": [{"name": "guard", "norm-guard": 5.0}, {"name": "clip", "defence": "clip"}]}}],
    })
    assert spec.configs == ["fedavg", "attacked attack=sign-flip defence=guard",
                            "attacked attack=sign-flip defence=clip", "attacked attack=gaussian defence=guard",
                            "attacked attack=gaussian defence=clip"]
    guard = next(r for r in spec.runs if r.config == "attacked attack=gaussian defence=guard")
    assert guard.seed == 7 and guard.axes == {"run": "attacked", "attack": "gaussian", "defence": "guard"}
    assert guard.settings["norm-guard"] == 5.0 and guard.settings["attack"] == "gaussian"
    assert [r.seed for r in spec.runs if r.config == "fedavg"] == [1, 2]


@pytest.mark.parametrize(("data", "words"), [
    ({"base": {"num-server-round": 2}}, "invalid setting num-server-round=2: allowed a known setting (did you mean"),
    ({"base": {"learning-rate": -1.0}}, "invalid setting learning-rate=-1.0"),
    ({"grid": {"model": ["mlp", "resnet-9000"]}}, "invalid setting model='resnet-9000'"),
    ({"runs": [{"name": "x", "settings": {"dirichlet-alpha": 0}}]}, "invalid setting dirichlet-alpha=0"),
    ({"seed": [1]}, "invalid setting sweep file key='seed': allowed one of name, description, seeds"),
    ({"base": {"seed": 3}}, "invalid setting base.seed=3: allowed no seed here"),
    ({"seeds": [1, 1]}, "invalid setting seeds=[1, 1]"),
    ({"engine": "ray"}, "invalid setting engine='ray': allowed one of 'inprocess', 'flower'"),
    ({"num-clients": 0}, "invalid setting num-clients=0"),
    ({"num-clients": 5000}, "invalid setting num-clients=5000: allowed an integer in [1, 1257]"),
    ({"name": "../x"}, "invalid setting name='../x'"),
    ({"targets": [90]}, "invalid setting targets=[90]"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "invalid setting runs='a'"),
    ({"runs": [{"name": "a", "setings": {}}]}, "invalid setting runs[0] key='setings'"),
    ({"grid": {"model": []}}, "invalid setting grid.model=[]"),
    ({"base": {"tracking": "wandb"}}, "invalid setting tracking='wandb'"),
])
def test_bad_sweep_is_one_line(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        SweepSpec.from_mapping(data)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bad_file_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("seeds = [1,\n")
    with pytest.raises(ConfigError, match="sweep file") as err:
        load_sweep(f)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"an existing \.toml or \.yaml file"):
        load_sweep(tmp_path / "absent.toml")


def test_hash_ignores_what_does_not_change_results() -> None:
    base = RunConfig.from_mapping({"num-server-rounds": 2})
    h = settings_hash(base, 4)
    same = base.with_values({"output-dir": "/elsewhere", "run-name": "x", "quiet": True, "report": False,
                             "checkpoint": False, "tracking": "tensorboard"})
    assert settings_hash(same, 4) == h
    assert {"output-dir", "run-name", "quiet", "report", "checkpoint", "resume"} <= set(NON_RESULT_KEYS)
    assert settings_hash(base.with_values({"seed": 43}), 4) != h
    assert settings_hash(base.with_values({"local-epochs": 1}), 4) != h
    assert settings_hash(base, 5) != h  # the number of clients changes results too


def test_labels_sharing_settings_share_a_run() -> None:
    spec = SweepSpec.from_mapping({"runs": [{"name": "a"}, {"name": "b", "settings": {"quiet": False}}]})
    assert len(spec.runs) == 2 and len(spec.unique_runs()) == 1


def test_the_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    import re

    page = (Path(__file__).resolve().parents[2] / "docs" / "sweeps.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", page, flags=re.S)
    f = tmp_path / "example.toml"
    f.write_text(block)
    spec = load_sweep(f)
    assert spec.configs[:2] == ["sgd profile-mix=''", "sgd profile-mix=phone:0.4,laptop:0.6"]
    assert len(spec.runs) == 2 * 3 + 2 * 2 * 1
    guard = next(r for r in spec.runs if r.config == "sgd, lr 0.05 profile-mix='' defence=guard")
    assert guard.settings["norm-guard"] == 5.0 and guard.settings["learning-rate"] == 0.05 and guard.seed == 1
