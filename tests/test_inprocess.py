"""End to end through the in-process Grid: the real ServerApp and ClientApp, no Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedshrink.client_app import app as real_client_app
from fedshrink.client_app import hello
from fedshrink.errors import ConfigError
from fedshrink.report import RunDirectory
from fedshrink.runner import run_inprocess


@pytest.mark.slow
def test_run_writes_run_directory(quick: dict[str, Any]) -> None:
    result = run_inprocess({**quick, "run-name": "first"}, num_clients=5)
    assert result.run_dir == Path(quick["output-dir"]) / "first"
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.json", "metrics.jsonl", "summary.json", "global_model.pt"} <= files
    rundir = RunDirectory(result.run_dir)
    assert rundir.read_config().federation.num_server_rounds == 3
    rounds = rundir.read_rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["clients-good"] == 5 and r["clients-dropped"] == 0 for r in rounds)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["accuracy"] == rounds[-1]["accuracy"]
    assert summary["clients"] == 5
    assert result.grid.calls == 20  # 5 hellos, then 5 clients x 3 rounds


@pytest.mark.slow
def test_training_learns(quick: dict[str, Any]) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 6, "partitioner": "iid"}, num_clients=5)
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert rounds[-1]["loss"] < rounds[0]["loss"]
    assert result.summary["accuracy"] > 0.6  # chance is 0.1


@pytest.mark.slow
def test_same_seed_same_model(quick: dict[str, Any]) -> None:
    a = run_inprocess({**quick, "num-server-rounds": 2}, num_clients=4)
    b = run_inprocess({**quick, "num-server-rounds": 2}, num_clients=4)
    c = run_inprocess({**quick, "num-server-rounds": 2, "seed": 9}, num_clients=4)
    sa, sb, sc = (torch.load(r.run_dir / "global_model.pt", weights_only=True) for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.slow
def test_client_identity_is_partition_id(quick: dict[str, Any]) -> None:
    seen: list[int] = []
    spy = ClientApp()
    spy.query("hello")(hello)

    @spy.train()
    def train(msg: Message, context: Context) -> Message:
        reply = real_client_app(msg, context)
        seen.append(int(reply.content["metrics"]["partition-id"]))
        return reply

    run_inprocess({**quick, "num-server-rounds": 1}, num_clients=6, client_app=spy)
    assert sorted(seen) == list(range(6))


@pytest.mark.slow
def test_crashing_client_does_not_stop_the_run(quick: dict[str, Any]) -> None:
    flaky = ClientApp()
    flaky.query("hello")(hello)

    @flaky.train()
    def train(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 0:
            raise RuntimeError("device ran out of battery")
        return real_client_app(msg, context)

    result = run_inprocess(quick, num_clients=4, client_app=flaky)
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert all(r["clients-good"] == 3 and r["clients-dropped"] == 1 for r in rounds)
    assert "battery" in rounds[0]["dropped"][0]["reason"]
    assert result.summary["status"] == "completed"


def test_round_without_enough_replies_is_skipped(quick: dict[str, Any]) -> None:
    dead = ClientApp()
    dead.query("hello")(hello)

    @dead.train()
    def train(msg: Message, context: Context) -> Message:
        raise RuntimeError("offline")

    result = run_inprocess({**quick, "num-server-rounds": 2}, num_clients=3, client_app=dead)
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert all(r["skipped"] for r in rounds)
    assert result.summary["rounds-skipped"] == 2


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"dirichlet-alpha": 0.0}, "dirichlet-alpha"),
        ({"model": "transformer"}, "model"),
        ({"dataset": "svhn"}, "dataset"),
        ({"unknown-key": 3}, "unknown-key"),
    ],
)
def test_bad_setting_fails_before_writing(quick: dict[str, Any], override: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        run_inprocess({**quick, **override}, num_clients=3)
    assert info.value.key == key
    assert not Path(quick["output-dir"]).exists()


def test_more_clients_than_samples_fails_before_writing(quick: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="num-clients"):
        run_inprocess(quick, num_clients=5000)
    assert not Path(quick["output-dir"]).exists()


@pytest.mark.slow
def test_run_name_is_not_reused(quick: dict[str, Any]) -> None:
    run_inprocess({**quick, "num-server-rounds": 1, "run-name": "same"}, num_clients=2)
    with pytest.raises(ConfigError, match="run-name"):
        run_inprocess({**quick, "num-server-rounds": 1, "run-name": "same"}, num_clients=2)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_other_models_run(quick: dict[str, Any], model: str) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 1, "model": model}, num_clients=3)
    assert result.summary["model"] == model and 0.0 <= result.summary["accuracy"] <= 1.0


@pytest.mark.slow
def test_compressed_uplink_cuts_bytes_and_keeps_residuals(quick: dict[str, Any]) -> None:
    raw = run_inprocess({**quick, "num-server-rounds": 2}, num_clients=3)
    small = run_inprocess({**quick, "num-server-rounds": 2, "uplink-chain": "topk:0.1|int8|zlib",
                           "downlink-chain": "fp16"}, num_clients=3)
    raw_rounds, small_rounds = (RunDirectory(r.run_dir).read_rounds() for r in (raw, small))
    assert all(r["clients-good"] == 3 for r in small_rounds)
    assert small_rounds[0]["bytes-up"] * 10 < raw_rounds[0]["bytes-up"]
    assert small_rounds[0]["bytes-down"] < 0.6 * raw_rounds[0]["bytes-down"]
    # error feedback: each client's residual is kept in its context state between rounds
    states = [ctx.state for ctx in small.grid._contexts.values()]
    assert all("fedshrink.residuals" in st for st in states)


def test_bad_chain_setting(quick: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="uplink-chain"):
        run_inprocess({**quick, "uplink-chain": "gzip"}, num_clients=2)


@pytest.mark.slow
def test_resources_are_recorded_per_client_and_round(quick: dict[str, Any]) -> None:
    import csv

    result = run_inprocess({**quick, "num-server-rounds": 2, "uplink-chain": "q4|zlib"}, num_clients=3)
    rows = list(csv.DictReader((result.run_dir / "clients.csv").open()))
    assert sorted((int(r["round"]), int(r["partition-id"])) for r in rows) == [(1, 0), (1, 1), (1, 2), (2, 0),
                                                                              (2, 1), (2, 2)]
    for r in rows:  # training FLOPs = 3 x 2 x MACs per sample x samples; CNN on 8x8 = 625,920 MACs
        assert int(r["macs-per-sample"]) == 625_920
        assert float(r["train-flops"]) == 6 * 625_920 * int(r["samples"])
        assert float(r["host-energy-j"]) > 0 and r["host-energy-method"].startswith("estimated")
        assert float(r["bytes-up"]) * 4 < float(r["bytes-up-fp32"])  # 4-bit + zlib against fp32
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert rounds[0]["bytes-up"] == sum(int(float(r["bytes-up"])) for r in rows if r["round"] == "1")
    assert result.summary["energy-j"] > 0 and result.summary["energy-estimated"] is True
    assert result.summary["resources"]["clients"]


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["global", "ensemble"])
def test_distillation_at_the_end_of_a_run(quick: dict[str, Any], small_distill: None, teacher: str) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 2, "distill": True, "distill-teacher": teacher,
                            "distill-steps": 30, "distill-finetune-steps": 10, "report": True}, num_clients=3)
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"student.onnx", "student_state.pt", "student_int8.fsq", "model_card.json", "pareto.json"} <= files
    student = result.summary["student"]
    assert student["params"] <= 7390 and student["bytes"] <= 7390
    assert student["bytes"] == (result.run_dir / "student_int8.fsq").stat().st_size
    assert 0.0 <= student["test-accuracy-int8"] <= 1.0
    assert result.summary["distillation-seconds"] > 0
    assert (result.run_dir / "plots" / "pareto.png").is_file()  # the report draws the search's front


@pytest.mark.slow
def test_distillation_every_k_rounds(quick: dict[str, Any], small_distill: None) -> None:
    result = run_inprocess({**quick, "num-server-rounds": 2, "distill": True, "distill-every": 1,
                            "distill-steps": 20, "distill-finetune-steps": 0}, num_clients=3)
    assert (result.run_dir / "student-round-1" / "model_card.json").is_file()  # after round 1
    assert (result.run_dir / "model_card.json").is_file()  # and at the end
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert rounds[0]["distillation-s"] > 0 and rounds[1]["distillation-s"] == 0


def test_the_final_fusion_is_recorded_with_the_accuracy_before_it(quick: dict[str, Any]) -> None:
    mixed = {**quick, "num-server-rounds": 2, "model": "mlp", "profile-mix": "phone:0.5,laptop:0.5"}
    fused = run_inprocess({**mixed, "run-name": "fused", "fusion-steps": 50}, num_clients=4).run_dir  # shipped
    plain = run_inprocess({**mixed, "run-name": "plain", "fusion-steps": 0}, num_clients=4).run_dir
    a, b = RunDirectory(fused).read_rounds(), RunDirectory(plain).read_rounds()
    assert "accuracy-before-fusion" not in a[0] and all("accuracy-before-fusion" not in r for r in b)
    assert a[0]["accuracy"] == b[0]["accuracy"]  # not fused in round 1
    assert a[-1]["accuracy-before-fusion"] == b[-1]["accuracy"]  # the same aggregate, before fusion
    models = [torch.load(d / "global_model.pt", weights_only=True) for d in (fused, plain)]
    assert any(not torch.equal(v, models[1][k]) for k, v in models[0].items())  # and fusion changed the model
    summary = json.loads((fused / "summary.json").read_text())
    assert summary["accuracy-before-fusion"] == a[-1]["accuracy-before-fusion"]


@pytest.mark.slow
def test_downlink_deltas_send_the_model_once_then_what_changed(quick: dict[str, Any]) -> None:
    """A mixed fleet with downlink deltas: round 1 sends each fragment whole, later rounds its compressed change;
    every client's reference (in its state) is the round it last trained, and the run trains as usual."""
    delta = run_inprocess({**quick, "model": "mlp", "profile-mix": "phone:0.5,laptop:0.5", "client-state": "memory",
                           "downlink-delta": "topk:0.05|q4|zstd"}, num_clients=4)
    rounds = RunDirectory(delta.run_dir).read_rounds()
    assert all(r["clients-good"] == 4 for r in rounds)
    assert all(r["bytes-down"] * 4 < rounds[0]["bytes-down"] for r in rounds[1:])
    assert rounds[-1]["accuracy"] > 0.3
    states = [ctx.state for ctx in delta.grid._contexts.values()]
    assert all(st.config_records["fedshrink.downlink-reference.meta"]["round"] == 3 for st in states)
