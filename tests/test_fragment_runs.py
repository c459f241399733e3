"""Heterogeneous clients end to end: profiles, fragments, overlap-aware aggregation, per-width evaluation."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from strategy_harness import HelloGrid, first_round, fragment_shapes, make_strategy, model_state, reply_to

from fedshrink.devices.profiles import DeviceProfile, get_profile
from fedshrink.fragments import build_graph, make_policy
from fedshrink.fragments.nested import NestedConfig
from fedshrink.models import ModelSpec, build_model
from fedshrink.protocol import TrainInstruction
from fedshrink.report import RunDirectory
from fedshrink.runner import run_inprocess
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy.plan import Planner
from fedshrink.strategy.rounds import ShrinkStrategy
from fedshrink.training import TrainSettings

MIX = "iot:0.4,phone:0.4,laptop:0.2"


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity(run_id=3):
        yield



def test_full_width_fragments_equal_flower_fedavg() -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    glob = model_state(spec)
    laptop = DeviceProfile("whole", 1.0, 0.0, "none", 32, "raw", "raw", 2, 16)  # width 1, no pruning, raw chains
    s = make_strategy(spec, fragments=True, policy="random", min_train_clients=3)
    msgs = first_round(s, HelloGrid([1, 2, 3], {n: laptop for n in (1, 2, 3)}), glob)
    rng = np.random.default_rng(0)
    ours, plain = [], []
    for i, msg in enumerate(msgs):
        trained = {k: (v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in glob.items()}
        ours.append(reply_to(msg, {k: trained[k] - glob[k] for k in glob}, pid=i, n=5 * (i + 1)))
        plain.append(Message(RecordDict({"arrays": ArrayRecord({k: torch.from_numpy(v) for k, v in trained.items()}),
                                         "metrics": MetricRecord({"num-examples": 5 * (i + 1)})}), reply_to=msg))
    mine, _ = s.aggregate_train(1, ours)
    theirs, _ = FedAvg(fraction_evaluate=0.0).aggregate_train(1, plain)
    assert mine is not None and theirs is not None
    for k in glob:
        np.testing.assert_allclose(mine[k].numpy(), theirs[k].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_mixed_profiles_train_fragments(quick: dict[str, Any]) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 3, "profile-mix": MIX, "report": True}, num_clients=10)
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
    raw = run_inprocess({**quick, "num-server-rounds": 3}, num_clients=10)
    raw_up = sum(r["bytes-up"] for r in RunDirectory(raw.run_dir).read_rounds())
    assert sum(r["bytes-up"] for r in rounds) * 4 < raw_up
    assert rounds[-1]["loss"] < rounds[0]["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["static", "rolling", "random"])
def test_every_policy_runs(quick: dict[str, Any], policy: str) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 2, "profile-mix": "iot:0.5,phone:0.5",
                            "fragment-policy": policy, "pruned-as-zero": policy == "random"}, num_clients=4)
    assert result.summary["status"] == "completed" and result.summary["rounds-skipped"] == 0


@pytest.mark.slow
def test_node_config_profile_overrides_the_mix(quick: dict[str, Any]) -> None:
    configs = [{"partition-id": i, "num-partitions": 3, "profile": "iot"} for i in range(3)]
    result = run_inprocess({**quick, "num-server-rounds": 1, "profile-mix": "laptop:1.0"}, node_configs=configs)
    rows = list(csv.DictReader((result.run_dir / "clients.csv").open()))
    assert all(int(r["params"]) < int(result.summary["model-parameters"]) / 8 for r in rows)


def _three_widths(nested: NestedConfig | None, derive: bool = False) -> tuple[ShrinkStrategy, dict[int, Message]]:
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    planner = Planner(spec, build_graph(build_model(spec)), TrainSettings(), uplink="raw", downlink="raw",
                      fragments=True, policy=make_policy("static"), nested=nested, derive=derive)
    s = ShrinkStrategy(planner, min_train_clients=4)
    grid = HelloGrid([1, 2, 3, 4], {1: get_profile("iot"), 2: get_profile("phone"), 3: get_profile("edge"),
                                    4: get_profile("laptop")})
    return s, {m.metadata.dst_node_id: m for m in first_round(s, grid, model_state(spec))}


def test_wide_clients_are_told_the_narrower_widths_to_distil_into() -> None:
    _, msgs = _three_widths(NestedConfig((), temperature=2.0, weight=0.5))
    told = {n: TrainInstruction.from_records(m.content).nested for n, m in msgs.items()}
    assert told[1] is None and told[2] is not None and told[4] is not None and told[3] is not None
    assert told[2].widths == (0.25,) and told[4].widths == (0.25, 0.5, 0.75)
    assert told[4].temperature == 2.0 and told[4].weight == 0.5
    _, off = _three_widths(None)
    assert all(TrainInstruction.from_records(m.content).nested is None for m in off.values())


def test_the_instruction_carries_the_profile_itself() -> None:
    custom = DeviceProfile("watch", 0.25, 0.5, "unstructured", 4, "topk:0.2|q4", "int8", 1, 8)  # no registry entry
    s = make_strategy(ModelSpec("cnn", (1, 8, 8), 10), fragments=True, min_train_clients=1)
    (msg,) = first_round(s, HelloGrid([9], {9: custom}), model_state(ModelSpec("cnn", (1, 8, 8), 10)))
    instruction = TrainInstruction.from_records(msg.content)
    assert instruction.profile == custom and instruction.width == 0.25
    assert (instruction.training.epochs, instruction.training.batch_size) == (1, 8)
    assert instruction.uplink == custom.uplink


@pytest.mark.slow
@pytest.mark.parametrize("nested", [True, False])
def test_mixed_run_with_and_without_nested_distillation(quick: dict[str, Any], nested: bool) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 2, "profile-mix": "iot:0.5,laptop:0.5",
                            "nested-distill": nested}, num_clients=4)
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert all(r["clients-good"] == 4 for r in rounds)
    assert set(rounds[-1]["accuracy-width"]) == {"0.25"}


def test_server_derives_exactly_the_masks_the_client_applies() -> None:
    from fedshrink.client.local import build_local_model
    from fedshrink.compression import decode_record
    from fedshrink.compression.pruning import get_masks, mask_digest

    s, msgs = _three_widths(None, derive=True)
    for node, msg in msgs.items():
        instruction = TrainInstruction.from_records(msg.content)
        client_masks = get_masks(build_local_model(instruction, decode_record(instruction.model)))
        assignment = s._assigned[node]
        if node in (1, 2):  # unstructured pruning: derived on the server, told to the client
            assert instruction.derive_masks and assignment.masks is not None
            assert assignment.expected.mask_digest == mask_digest(client_masks)
            assert set(assignment.masks) == set(client_masks)
            assert all(np.array_equal(assignment.masks[k], client_masks[k].numpy()) for k in assignment.masks)
        else:  # structured (edge) masks are sent; laptops do not prune
            assert not instruction.derive_masks and assignment.masks is None


@pytest.mark.parametrize("digest_ok", [True, False])
def test_a_reply_whose_mask_digest_differs_is_dropped(digest_ok: bool) -> None:
    s, msgs = _three_widths(None, derive=True)
    expected = s._assigned[2].expected
    assert expected.mask_digest is not None
    digest = expected.mask_digest if digest_ok else expected.mask_digest ^ 1
    s._assigned = {2: s._assigned[2]}
    s.min_train_clients = 1
    reply = reply_to(msgs[2], {k: np.zeros(sh, np.float32) for k, sh in fragment_shapes(msgs[2]).items()}, pid=1,
                     metrics={"mask-digest": digest})
    s.aggregate_train(1, [reply])
    outcome = s.outcomes[-1]
    if digest_ok:
        assert len(outcome.accepted) == 1 and not outcome.dropped
    else:
        assert not outcome.accepted and "mask-digest" in outcome.dropped[0].reason


@pytest.mark.slow
def test_derived_masks_save_the_mask_bytes(quick: dict[str, Any]) -> None:
    runs = {derive: run_inprocess({**quick, "num-server-rounds": 1, "profile-mix": "phone:1.0", "derive-masks": derive},
                                  num_clients=3) for derive in (True, False)}
    up = {d: sum(r["bytes-up"] for r in RunDirectory(res.run_dir).read_rounds()) for d, res in runs.items()}
    good = {d: RunDirectory(res.run_dir).read_rounds()[0]["clients-good"] for d, res in runs.items()}
    assert good == {True: 3, False: 3}
    assert up[True] < 0.8 * up[False]  # a phone's mask bitmap is about a third of its reply
