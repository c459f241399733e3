"""The ClientApp: one device's side of a round.

It reads the run settings from ``context.run_config``, its identity from the
node config (``partition-id``, ``num-partitions``), the model spec, training
settings and uplink codec chain from the server's message; decodes the global
model, trains locally, and replies with its update (trained minus received)
encoded by the uplink chain, plus its metrics (``num-examples``,
``train-loss``, ``partition-id`` ...). A lossy chain keeps its error-feedback
residual in ``context.state`` between rounds. Client data never leaves the
node: it is loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedshrink.compression import Chain, ResidualStore, decode_record, encode_state
from fedshrink.config import RunConfig
from fedshrink.data import client_data
from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec, build_model
from fedshrink.strategy.replies import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY
from fedshrink.training import TrainSettings, read_number, seed_for, train_local

app = ClientApp()


@dataclass(frozen=True)
class NodeIdentity:
    partition_id: int
    num_partitions: int

    @classmethod
    def from_node_config(cls, node_config: dict[str, object]) -> NodeIdentity:
        try:
            pid = int(node_config["partition-id"])  # type: ignore[call-overload]
            n = int(node_config["num-partitions"])  # type: ignore[call-overload]
        except KeyError as exc:
            raise ConfigError(
                f"node-config {exc.args[0]}", None, "an integer set by the simulation or --node-config"
            ) from exc
        if n < 1:
            raise ConfigError("num-partitions", n, "an integer >= 1")
        if not 0 <= pid < n:
            raise ConfigError("partition-id", pid, f"an integer in [0, {n})")
        return cls(pid, n)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_mapping(context.run_config)
    node = NodeIdentity.from_node_config(dict(context.node_config))
    config: dict[str, object] = dict(msg.content.config_records[CONFIG_KEY])
    server_round = read_number(config, "server-round", int)
    spec = ModelSpec.from_json(str(config["model-spec"]))

    data = client_data(cfg.split_spec(), cfg.partition_scheme(), node.partition_id, node.num_partitions)
    uplink = Chain.parse(str(config.get("uplink-chain", "raw")))
    received = decode_record(msg.content.array_records[ARRAYS_KEY])
    model = build_model(spec)
    model.load_state_dict(received)
    result = train_local(
        model, data, TrainSettings.from_config(config), seed=seed_for(cfg.seed, server_round, node.partition_id)
    )
    trained = model.state_dict()
    update = {k: trained[k] - received[k] for k in received}
    residuals = ResidualStore.load(context.state) if uplink.lossy else None
    record, _ = encode_state(update, uplink, residuals=residuals, round=server_round, direction="uplink",
                             rng=np.random.default_rng(seed_for(cfg.seed, server_round, node.partition_id, 1)))
    if residuals is not None:
        residuals.save(context.state)
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "partition-id": node.partition_id,
            "train-loss": result.mean_loss,
            "train-steps": result.steps,
            "train-seconds": result.seconds,
        }
    )
    reply = RecordDict({ARRAYS_KEY: record, METRICS_KEY: metrics})
    return Message(reply, reply_to=msg)
