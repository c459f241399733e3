"""Heterogeneous clients end to end: profiles, fragments, overlap-aware aggregation, per-width evaluation."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from helpers import FakeGrid

from fedshrink.client_app import nested_distiller
from fedshrink.compression import encode_state
from fedshrink.errors import ConfigError
from fedshrink.fragments.nested import NestedConfig
from fedshrink.models import ModelSpec, build_model
from fedshrink.profiles import get_profile
from fedshrink.report import RunDirectory
from fedshrink.runner import run_inprocess
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy.fragments import FragmentStrategy
from fedshrink.strategy.replies import ARRAYS_KEY

MIX = "iot:0.4,phone:0.4,laptop:0.2"


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity(run_id=3):
        yield



def test_full_width_fragments_equal_flower_fedavg() -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    torch.manual_seed(0)
    glob = {k: v.numpy() for k, v in build_model(spec).state_dict().items()}
    strategy = FragmentStrategy(model_spec=spec, policy="random", min_train_clients=3, min_available_nodes=3)
    strategy.node_profiles = {n: get_profile("laptop") for n in (1, 2, 3)}  # width 1, no pruning, raw chains
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in glob.items()})
    msgs = list(strategy.configure_train(1, record, ConfigRecord({}), FakeGrid([1, 2, 3])))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    ours, plain = [], []
    for i, msg in enumerate(msgs):
        trained = {k: (v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in glob.items()}
        metrics = MetricRecord({"num-examples": 5 * (i + 1)})
        update = {k: torch.from_numpy(trained[k] - glob[k]) for k in glob}
        enc, _ = encode_state(update, "raw")
        ours.append(Message(RecordDict({ARRAYS_KEY: enc, "metrics": metrics}), reply_to=msg))
        plain.append(Message(RecordDict({ARRAYS_KEY: ArrayRecord({k: torch.from_numpy(v) for k, v in trained.items()}),
                                         "metrics": metrics}), reply_to=msg))
    mine, _ = strategy.aggregate_train(1, ours)
    theirs, _ = FedAvg(fraction_evaluate=0.0).aggregate_train(1, plain)
    assert mine is not None and theirs is not None
    for k in glob:
        np.testing.assert_allclose(mine[k].numpy(), theirs[k].numpy(), rtol=1e-5, atol=1e-6)


def test_mixed_profiles_train_fragments(quick: dict[str, Any]) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 5, "profile-mix": MIX}, num_clients=10)
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert all(r["clients-good"] == 10 and r["clients-dropped"] == 0 for r in rounds)
    assert set(rounds[-1]["accuracy-width"]) == {"0.25", "0.5"}  # iot and phone sub-models, evaluated
    rows = list(csv.DictReader((result.run_dir / "clients.csv").open()))
    params = {int(r["partition-id"]): int(r["params"]) for r in rows}
    full = int(result.summary["model-parameters"])
    assert min(params.values()) < full / 8 and max(params.values()) == full  # iot fragments vs laptop
    assert {r["profile"] for r in rows} == {"iot", "phone", "laptop"}
    assert (result.run_dir / "plots" / "client_costs.png").is_file()
    assert "| iot |" in (result.run_dir / "report.md").read_text()  # the per-profile table
    raw = run_inprocess({**quick, "num-server-rounds": 5}, num_clients=10)
    raw_up = sum(r["bytes-up"] for r in RunDirectory(raw.run_dir).read_rounds())
    assert sum(r["bytes-up"] for r in rounds) * 4 < raw_up
    assert rounds[-1]["loss"] < rounds[0]["loss"]


@pytest.mark.parametrize("policy", ["static", "rolling", "random"])
def test_every_policy_runs(quick: dict[str, Any], policy: str) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 2, "profile-mix": "iot:0.5,phone:0.5",
                            "fragment-policy": policy, "pruned-as-zero": policy == "random"}, num_clients=4)
    assert result.summary["status"] == "completed" and result.summary["rounds-skipped"] == 0


def test_node_config_profile_overrides_the_mix(quick: dict[str, Any]) -> None:
    configs = [{"partition-id": i, "num-partitions": 3, "profile": "iot"} for i in range(3)]
    result = run_inprocess({**quick, "num-server-rounds": 1, "profile-mix": "laptop:1.0"}, node_configs=configs)
    rows = list(csv.DictReader((result.run_dir / "clients.csv").open()))
    assert all(int(r["params"]) < int(result.summary["model-parameters"]) / 8 for r in rows)


def test_wide_clients_are_told_the_narrower_widths_to_distil_into() -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    torch.manual_seed(0)
    glob = ArrayRecord({k: v for k, v in build_model(spec).state_dict().items()})
    strategy = FragmentStrategy(model_spec=spec, policy="static", min_train_clients=3, min_available_nodes=3,
                                nested=NestedConfig((), temperature=2.0, weight=0.5))
    strategy.node_profiles = {1: get_profile("iot"), 2: get_profile("phone"), 3: get_profile("laptop")}
    msgs = {m.metadata.dst_node_id: m for m in
            strategy.configure_train(1, glob, ConfigRecord({}), FakeGrid([1, 2, 3]))}  # type: ignore[arg-type]
    told = {n: m.content.config_records["config"].get("nested-widths") for n, m in msgs.items()}
    assert told == {1: None, 2: [0.25], 3: [0.25, 0.5]}
    assert msgs[3].content.config_records["config"]["nested-temperature"] == 2.0
    off = FragmentStrategy(model_spec=spec, policy="static", min_train_clients=3, min_available_nodes=3)
    off.node_profiles = strategy.node_profiles
    assert all("nested-widths" not in m.content.config_records["config"]
               for m in off.configure_train(1, glob, ConfigRecord({}), FakeGrid([1, 2, 3])))  # type: ignore[arg-type]


def test_client_builds_the_distiller_the_server_asked_for() -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    config: dict[str, object] = {"nested-widths": [0.25, 0.5], "nested-temperature": 1.0, "nested-weight": 1.0}
    distiller = nested_distiller(spec, config, 0.5)
    assert distiller is not None and distiller.widths == [0.25]
    assert nested_distiller(spec, {}, 1.0) is None
    with pytest.raises(ConfigError, match="nested-widths"):
        nested_distiller(spec, {**config, "nested-widths": ["x"]}, 1.0)


@pytest.mark.parametrize("nested", [True, False])
def test_mixed_run_with_and_without_nested_distillation(quick: dict[str, Any], nested: bool) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 2, "profile-mix": "iot:0.5,laptop:0.5",
                            "nested-distill": nested}, num_clients=4)
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert all(r["clients-good"] == 4 for r in rounds)
    assert set(rounds[-1]["accuracy-width"]) == {"0.25"}


def _phone_round(derive: bool) -> tuple[FragmentStrategy, dict[int, Message], dict[str, np.ndarray]]:
    spec = ModelSpec("cnn", (1, 8, 8), 10, norm="batch")
    torch.manual_seed(0)
    glob = {k: v.numpy() for k, v in build_model(spec).state_dict().items()}
    strategy = FragmentStrategy(model_spec=spec, policy="static", min_train_clients=1, min_available_nodes=1,
                                derive_masks=derive)
    strategy.node_profiles = {1: get_profile("iot"), 2: get_profile("phone"), 3: get_profile("edge"),
                              4: get_profile("laptop")}
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in glob.items()})
    msgs = {m.metadata.dst_node_id: m for m in
            strategy.configure_train(1, record, ConfigRecord({}), FakeGrid([1, 2, 3, 4]))}  # type: ignore[arg-type]
    return strategy, msgs, glob


def test_server_derives_exactly_the_masks_the_client_applies() -> None:
    from fedshrink.client_app import build_local_model
    from fedshrink.compression import decode_record
    from fedshrink.compression.pruning import get_masks, mask_digest

    strategy, msgs, _ = _phone_round(derive=True)
    spec = strategy.model_spec
    for node, msg in msgs.items():
        config = dict(msg.content.config_records["config"])
        received = decode_record(msg.content.array_records[ARRAYS_KEY])
        model, _ = build_local_model(spec, received, config)
        client_masks = get_masks(model)
        if node in (1, 2):  # unstructured pruning: derived on the server, told to the client
            assert config["derive-masks"] is True
            derived, digest = strategy._derived[node]
            assert digest == mask_digest(client_masks)
            assert set(derived) == set(client_masks)
            assert all(np.array_equal(derived[k], client_masks[k].numpy()) for k in derived)
        else:  # structured (edge) masks are sent; laptops do not prune
            assert "derive-masks" not in config and node not in strategy._derived


@pytest.mark.parametrize("digest_ok", [True, False])
def test_a_reply_whose_mask_digest_differs_is_dropped(digest_ok: bool) -> None:
    from fedshrink.fragments import extract

    strategy, msgs, glob = _phone_round(derive=True)
    sub = extract(glob, strategy.graph, strategy._specs[2])
    enc, _ = encode_state({k: torch.zeros(v.shape) for k, v in sub.items()}, "raw")
    digest = strategy._derived[2][1] if digest_ok else strategy._derived[2][1] ^ 1
    reply = Message(RecordDict({ARRAYS_KEY: enc, "metrics": MetricRecord({"num-examples": 5, "mask-digest": digest})}),
                    reply_to=msgs[2])
    strategy._expected = {2: strategy._expected[2]}
    strategy.aggregate_train(1, [reply])
    outcome = strategy.outcomes[-1]
    if digest_ok:
        assert len(outcome.good) == 1 and not outcome.dropped
        assert strategy._masks[2].keys() == strategy._derived[2][0].keys()
    else:
        assert not outcome.good and "mask-digest" in outcome.dropped[0].reason


def test_derived_masks_save_the_mask_bytes(quick: dict[str, Any]) -> None:
    runs = {derive: run_inprocess({**quick, "num-server-rounds": 1, "profile-mix": "phone:1.0", "derive-masks": derive},
                                  num_clients=3) for derive in (True, False)}
    up = {d: sum(r["bytes-up"] for r in RunDirectory(res.run_dir).read_rounds()) for d, res in runs.items()}
    good = {d: RunDirectory(res.run_dir).read_rounds()[0]["clients-good"] for d, res in runs.items()}
    assert good == {True: 3, False: 3}
    assert up[True] < 0.8 * up[False]  # a phone's mask bitmap is about a third of its reply
