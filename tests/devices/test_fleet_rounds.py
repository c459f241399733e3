"""The fleet clock inside the strategy: availability, memory, deadlines, over-selection, budgets; run records."""

from __future__ import annotations

import csv
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
