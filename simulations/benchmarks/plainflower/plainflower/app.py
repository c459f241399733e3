"""Plain Flower FedAvg on fedshrink's generated fleet: Flower's strategy, fedshrink's data, model and training.

The ServerApp runs :class:`flwr.serverapp.strategy.FedAvg` with a central
evaluation on the fleet's test writers after every round, and writes the
wall-clock time at the end of each round (``times-file``, JSON lines), the
same span fedshrink's ``seconds`` covers (sampling, training, aggregation,
evaluation). The ClientApp loads the global model, trains it with
:func:`fedshrink.training.train_local` on its writer's data and replies with
the full fp32 model. Nothing else: no compression, metering or records.
"""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedshrink.config import RunConfig
from fedshrink.data import client_data, make_splits
from fedshrink.data.federated import Splits
from fedshrink.models import ModelSpec, build_model
from fedshrink.training import evaluate, seed_for, train_local

server = ServerApp()
client = ClientApp()


def fedshrink_config(run_config: dict[str, Any]) -> RunConfig:
    """The fedshrink settings that describe the same data, model and local training."""
    return RunConfig.from_mapping({
        "dataset": "writers", "partitioner": "natural", "proxy-fraction": 0.0, "profile-mix": "",
        "fleet-writers": int(run_config["fleet-writers"]), "samples-per-writer": str(run_config["samples-per-writer"]),
        "seed": int(run_config["seed"]), "local-epochs": int(run_config["local-epochs"]),
        "batch-size": int(run_config["batch-size"]), "model-norm": str(run_config["model-norm"]),
    })


@cache
def _splits(key: str) -> tuple[RunConfig, Splits, ModelSpec]:
    cfg = fedshrink_config(json.loads(key))
    splits = make_splits(cfg.split_spec())
    return cfg, splits, ModelSpec("cnn", splits.input_shape, splits.num_classes, 1.0, cfg.model.model_norm)


def setup(run_config: dict[str, Any]) -> tuple[RunConfig, Splits, ModelSpec]:
    return _splits(json.dumps(dict(run_config), sort_keys=True))


@client.train()
def train(msg: Message, context: Context) -> Message:
    cfg, _, spec = setup(dict(context.run_config))
    pid, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    data = client_data(cfg.split_spec(), cfg.partition_scheme(), pid, parts)
    model = build_model(spec)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    rnd = int(msg.content["config"]["server-round"])
    result = train_local(model, data, cfg.training, seed=seed_for(cfg.seed, rnd, pid))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": result.num_examples})})
    return Message(content, reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    cfg, splits, spec = setup(run_config)
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    times = Path(str(run_config["times-file"])) if run_config["times-file"] else None
    nodes = len(list(grid.get_node_ids()))
    fraction = int(run_config["clients-per-round"]) / max(nodes, 1)
    last = [time.perf_counter()]

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        ev = evaluate(model, splits.test)
        now = time.perf_counter()
        if times is not None and server_round > 0:
            with times.open("a") as f:
                f.write(json.dumps({"round": server_round, "seconds": now - last[0], "accuracy": ev.accuracy}) + "\n")
        last[0] = now
        return MetricRecord({"accuracy": ev.accuracy, "loss": ev.loss})

    strategy = FedAvg(fraction_train=fraction, fraction_evaluate=0.0,
                      min_train_nodes=int(run_config["clients-per-round"]), min_available_nodes=nodes)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                   num_rounds=int(run_config["num-server-rounds"]), evaluate_fn=central)
