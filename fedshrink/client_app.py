"""The ClientApp: one device's side of a round.

It reads the run settings from ``context.run_config``, its identity from the
node config (``partition-id``, ``num-partitions``), the model spec and the
training settings from the server's message, trains locally and replies with
the trained arrays and its metrics (``num-examples``, ``train-loss``,
``partition-id`` ...). Client data never leaves the node: it is loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedshrink.config import RunConfig
from fedshrink.data import client_data
from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec, build_model
from fedshrink.strategy.replies import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY
from fedshrink.training import TrainSettings, seed_for, train_local

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


def train_settings_from(config: dict[str, object]) -> TrainSettings:
    return TrainSettings(
        epochs=int(config["local-epochs"]),  # type: ignore[call-overload]
        batch_size=int(config["batch-size"]),  # type: ignore[call-overload]
        learning_rate=float(config["learning-rate"]),  # type: ignore[arg-type]
        momentum=float(config["momentum"]),  # type: ignore[arg-type]
        weight_decay=float(config["weight-decay"]),  # type: ignore[arg-type]
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_mapping(context.run_config)
    node = NodeIdentity.from_node_config(dict(context.node_config))
    config = dict(msg.content.config_records[CONFIG_KEY])
    server_round = int(config["server-round"])  # type: ignore[call-overload]
    spec = ModelSpec.from_json(str(config["model-spec"]))

    data = client_data(cfg.split_spec(), cfg.partition_scheme(), node.partition_id, node.num_partitions)
    model = build_model(spec)
    model.load_state_dict(msg.content.array_records[ARRAYS_KEY].to_torch_state_dict())
    result = train_local(
        model, data, train_settings_from(config), seed=seed_for(cfg.seed, server_round, node.partition_id)
    )
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "partition-id": node.partition_id,
            "train-loss": result.mean_loss,
            "train-steps": result.steps,
            "train-seconds": result.seconds,
        }
    )
    reply = RecordDict({ARRAYS_KEY: ArrayRecord(model.state_dict()), METRICS_KEY: metrics})
    return Message(reply, reply_to=msg)
