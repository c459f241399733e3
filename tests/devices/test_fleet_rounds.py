"""The fleet clock inside the strategy: availability, memory, deadlines, over-selection, budgets; run records."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from strategy_harness import TINY, HelloGrid, first_round, make_strategy, model_state, reply_to, zero_update

from fedshrink.config import RunConfig
from fedshrink.data import make_splits
from fedshrink.devices import Budget, DeviceModel
from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec
from fedshrink.protocol import TrainInstruction
from fedshrink.report import build_report
from fedshrink.runner import run_inprocess
from fedshrink.runner.inprocess import server_identity
from fedshrink.server.factory import budget_planner, explain_budgets
from fedshrink.strategy.fleet import Fleet
from fedshrink.strategy.memory import UpdateMemory
from fedshrink.training import TrainSettings


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity(run_id=5):
        yield


def device(name: str = "dev", *, gflops: float = 10.0, memory_mb: float = 100.0, mbps: float = 10.0,
           availability: float = 1.0) -> DeviceModel:
    return DeviceModel(name, gflops, memory_mb, mbps, mbps, 0.01, 2.0, 1.0, 1.0, availability)


def fleet(**kwargs: Any) -> Fleet:
    return Fleet(TINY, TrainSettings(), uplink="raw", downlink="raw", seed=0, **{"deadline_s": 0.0,
                                                                                 "over_select": 0.0, **kwargs})


def _round(s: Any, grid: HelloGrid, flops: dict[int, float] | None = None) -> tuple[Any, dict[int, Any]]:
    glob = model_state()
    msgs = first_round(s, grid, glob)
    replies = []
    for m in msgs:
        node = m.metadata.dst_node_id
        reply = reply_to(m, zero_update({k: v.shape for k, v in glob.items()}), pid=grid.node_ids.index(node))
        if flops is not None:  # a resource record saying how much the client computed
            from fedshrink.resources.meter import ResourceRecord

            rec = ResourceRecord(0.1, 0.1, 1, 1, 0, 1, 1, 1, 1, 1, 1, flops[node], 0.0, 1)
            for k, v in rec.to_metrics().items():
                reply.content["metrics"][k] = v
        replies.append(reply)
    s.aggregate_train(1, replies)
    return s.outcomes[-1], {m.metadata.dst_node_id: m for m in msgs}


def test_offline_devices_are_not_reached_and_their_reason_is_recorded() -> None:
    grid = HelloGrid([1, 2, 3, 4], devices={1: device(availability=1.0), 2: device(availability=1e-9),
                                            3: device(availability=1.0), 4: device(availability=1e-9)})
    s = make_strategy(min_train_clients=1, fleet=fleet())
    outcome, sent = _round(s, grid)
    assert set(sent) == {1, 3}  # nothing was sent to the offline ones
    assert {d.node_id for d in outcome.unreached} == {2, 4}
    assert all("unavailable" in d.reason for d in outcome.unreached)
    assert outcome.device_round["device-dropped-unavailable"] == 2 and outcome.device_round["device-accepted"] == 2


def test_a_device_without_the_memory_declines() -> None:
    grid = HelloGrid([1, 2], devices={1: device(memory_mb=100.0), 2: device(memory_mb=1e-6)})
    s = make_strategy(min_train_clients=1, fleet=fleet())
    outcome, sent = _round(s, grid)
    assert set(sent) == {1}
    (d,) = outcome.unreached
    assert d.node_id == 2 and "memory" in d.reason
    assert outcome.device_round["device-dropped-memory"] == 1


def test_stragglers_past_the_deadline_are_dropped_and_the_round_lasts_until_the_deadline() -> None:
    # equal links; compute time = flops / throughput: node 1 takes 1 s, node 2 100 s
    grid = HelloGrid([1, 2], devices={1: device(gflops=1.0), 2: device(gflops=1.0)})
    s = make_strategy(min_train_clients=1, fleet=fleet(deadline_s=10.0))
    outcome, _ = _round(s, grid, flops={1: 1e9, 2: 1e11})
    assert [r.node_id for r in outcome.accepted] == [1]
    (d,) = outcome.dropped
    assert d.node_id == 2 and "straggler" in d.reason and "deadline 10 s" in d.reason
    assert outcome.device_round["device-time-s"] == 10.0
    client = outcome.device_clients[1]
    assert client["device-compute-s"] == pytest.approx(1.0)  # 1e9 FLOPs at 1 GFLOP/s
    assert client["device-compute-j"] == pytest.approx(2.0)  # 2 W x 1 s
    # fleet energy counts the straggler too: it trained, though the server ignores its update
    assert outcome.device_round["device-energy-j"] > outcome.device_round["device-accepted-energy-j"]


def test_over_selection_keeps_the_first_to_finish() -> None:
    nodes = [1, 2, 3, 4, 5, 6]
    grid = HelloGrid(nodes, devices={n: device(gflops=1.0) for n in nodes})
    s = make_strategy(min_train_clients=1, clients_per_round=3, fleet=fleet(over_select=2.0))
    flops = {n: n * 1e9 for n in nodes}
    outcome, sent = _round(s, grid, flops=flops)
    assert len(sent) == 5  # 3 wanted + 2 over-selected
    fastest = sorted(sent, key=lambda n: flops[n])[:3]
    assert sorted(r.node_id for r in outcome.accepted) == sorted(fastest)
    assert len(outcome.dropped) == 2 and all("over-selected" in d.reason for d in outcome.dropped)
    assert outcome.device_round["device-time-s"] == pytest.approx(max(flops[n] for n in fastest) / 1e9, rel=0.05)


def test_a_budget_gets_the_profile_the_planner_picks_or_the_node_is_left_out() -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    cfg = RunConfig.from_mapping({"profile-mix": "", "budget-mix": "up=30,device=phone:1.0"})
    fits, impossible = Budget(upload_kb=30, device="phone"), Budget(memory_mb=1e-6)
    grid = HelloGrid([1, 2], budgets={1: fits, 2: impossible}, devices={1: device(), 2: device()})
    s = make_strategy(spec, fragments=True, min_train_clients=1, plan_budget=budget_planner(cfg, spec),
                      fleet=Fleet(spec, TrainSettings(), uplink="raw", downlink="raw", seed=0, deadline_s=0.0,
                                  over_select=0.0))
    (msg,) = first_round(s, grid, model_state(spec))
    instruction = TrainInstruction.from_records(msg.content)
    assert instruction.profile is not None and instruction.profile.name.startswith("budget-")
    assert 2 not in s.nodes and "picked" in s.plans[1] and "up " in s.plans[1]


def test_a_budget_mix_nothing_fits_fails_at_start_with_one_line() -> None:
    cfg = RunConfig.from_mapping({"profile-mix": "", "budget-mix": "mem=0.000001,device=iot:1.0"})
    splits = make_splits(cfg.split_spec())
    spec = ModelSpec("cnn", splits.input_shape, splits.num_classes)
    with pytest.raises(ConfigError) as err:
        explain_budgets(cfg, spec, 60)
    assert err.value.key == "budget" and "\n" not in str(err.value) and "nearest" in str(err.value)
    ok = RunConfig.from_mapping({"profile-mix": "", "budget-mix": "up=30,device=phone:1.0"})
    (line,) = explain_budgets(ok, spec, 60)
    assert line.startswith("budget up=30,device=phone: picked")


@pytest.mark.slow
def test_a_mixed_run_records_each_clients_device_figures_apart_from_the_host(quick: dict[str, Any]) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 1, "profile-mix": "iot:0.3,phone:0.3,laptop:0.4",
                            "device-availability": False}, num_clients=10)
    rows = list(csv.DictReader((Path(result.run_dir) / "clients.csv").open()))
    assert len(rows) == 10 and all(r["device-memory-mb"] and r["device-time-s"] and r["device-energy-j"]
                                   for r in rows)
    memory = {p: np.mean([float(r["device-memory-mb"]) for r in rows if r["profile"] == p])
              for p in ("iot", "phone", "laptop")}
    assert memory["iot"] < memory["phone"] < memory["laptop"]
    host = {float(r["host-peak-rss-bytes"]) / 1e6 for r in rows}
    assert not host & {float(r["device-memory-mb"]) for r in rows}  # no client's memory is the host's
    report = build_report(result.run_dir, draw=False).path.read_text()
    section = report[report.index("## Simulated devices (modelled)"):]
    assert all(f"| {p} |" in section for p in ("iot", "phone", "laptop")) and "FedAvg fp32: memory MB" in section
    assert "host process peak RSS" in report  # the host's figure is labelled as the host's


def _reuse_rounds(memory: UpdateMemory | None, rounds: int) -> list[float]:
    """Node 1 always online, sending +1 (10 examples); node 2 sends +3 (30 examples) in round 1, then is offline.
    The global model's move in each round (every coordinate moves alike)."""
    grid = HelloGrid([1, 2], devices={1: device(), 2: device()})
    s = make_strategy(min_train_clients=1, fleet=fleet(), memory=memory)
    glob, moves = model_state(), []
    for rnd in range(1, rounds + 1):
        if rnd == 2:
            s.nodes[2] = dataclasses.replace(s.nodes[2], device=device(availability=1e-9))
        replies = [reply_to(m, {k: np.full(v.shape, 1.0 if m.metadata.dst_node_id == 1 else 3.0, np.float32)
                                for k, v in glob.items()}, pid=grid.node_ids.index(m.metadata.dst_node_id),
                            n=10 if m.metadata.dst_node_id == 1 else 30)
                   for m in first_round(s, grid, glob, rnd)]
        arrays, _ = s.aggregate_train(rnd, replies)
        assert arrays is not None
        new = {k: arrays[k].numpy() for k in arrays.keys()}
        moves.append(float(np.mean([np.mean(new[k] - glob[k]) for k in new])))
        glob = new
    return moves


def test_an_offline_clients_latest_update_counts_again_until_it_is_too_old() -> None:
    memory = UpdateMemory(max_age=2, max_bytes=1 << 20)
    moves = _reuse_rounds(memory, 4)
    # round 1: (10 x 1 + 30 x 3) / 40; rounds 2 and 3 count node 2's round-1 update again; round 4 it is 3 old
    assert moves == pytest.approx([2.5, 2.5, 2.5, 1.0], abs=1e-5)
    assert set(memory.rows) == {0, 1} and memory.rows[1].server_round == 1 and memory.rows[0].server_round == 4
    assert _reuse_rounds(None, 4) == pytest.approx([2.5, 1.0, 1.0, 1.0], abs=1e-5)  # absent-updates = drop


def test_the_reuse_is_recorded_and_a_straggler_counts_its_last_update() -> None:
    grid = HelloGrid([1, 2], devices={1: device(gflops=1.0), 2: device(gflops=1.0)})
    memory = UpdateMemory(max_age=5, max_bytes=1 << 20)
    s = make_strategy(min_train_clients=1, fleet=fleet(deadline_s=10.0), memory=memory)
    glob = model_state()
    shapes = {k: v.shape for k, v in glob.items()}
    for rnd, slow in ((1, 1e9), (2, 1e11)):  # node 2 takes 1 s in round 1, 100 s (past the deadline) in round 2
        from fedshrink.resources.meter import ResourceRecord

        replies = []
        for m in first_round(s, grid, glob, rnd):
            node = m.metadata.dst_node_id
            reply = reply_to(m, {k: np.full(v, float(node), np.float32) for k, v in shapes.items()},
                             pid=grid.node_ids.index(node))
            rec = ResourceRecord(0.1, 0.1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1e9 if node == 1 else slow, 0.0, 1)
            for k, v in rec.to_metrics().items():
                reply.content["metrics"][k] = v
            replies.append(reply)
        arrays, _ = s.aggregate_train(rnd, replies)
        assert arrays is not None
        new = {k: arrays[k].numpy() for k in arrays.keys()}
        move = float(np.mean([np.mean(new[k] - glob[k]) for k in new]))
        glob = new
    outcome = s.outcomes[-1]
    assert [d.node_id for d in outcome.dropped] == [2] and "straggler" in outcome.dropped[0].reason
    assert move == pytest.approx(1.5, abs=1e-5)  # node 1's +1 and node 2's round-1 +2, equal weights
    note = outcome.notes["absent-updates"]
    assert note["absent"] == 1 and note["reused"] == 1 and note["max-age"] == 1 and note["memory-bytes"] > 0


def test_absent_updates_settings_resolve_and_refuse_reuse_with_privacy_or_defences() -> None:
    assert RunConfig().reuses_absent_updates  # auto: reuse
    assert not RunConfig.from_mapping({"absent-updates": "drop"}).reuses_absent_updates
    assert not RunConfig.from_mapping({"defence": "median"}).reuses_absent_updates  # auto gives way
    assert not RunConfig.from_mapping({"norm-guard": 3.0}).reuses_absent_updates
    for settings, blocker in (({"defence": "median"}, "defence"), ({"norm-guard": 3.0}, "norm-guard"),
                              ({"dp-mode": "central", "dp-noise-multiplier": 1.0}, "dp-mode")):
        with pytest.raises(ConfigError) as err:
            RunConfig.from_mapping({**settings, "absent-updates": "reuse"})
        assert err.value.key == "absent-updates" and blocker in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"absent-updates": "always"})
    assert err.value.key == "absent-updates" and "'reuse'" in str(err.value)


@pytest.mark.parametrize("settings, built", [({}, True), ({"device-availability": False}, False),
                                             ({"device-availability": False, "round-deadline": 1.0}, True),
                                             ({"absent-updates": "drop"}, False)])
def test_the_server_keeps_updates_only_when_a_client_can_be_absent(settings: dict[str, Any], built: bool) -> None:
    cfg = RunConfig.from_mapping(settings)
    splits = make_splits(cfg.split_spec())
    spec = ModelSpec("cnn", splits.input_shape, splits.num_classes)
    from fedshrink.server.factory import build_strategy

    s = build_strategy(cfg, spec, splits)
    assert (s.memory is not None) == built
    if built:
        assert s.memory is not None and s.memory.max_age == 10 and s.memory.max_bytes == 256_000_000
