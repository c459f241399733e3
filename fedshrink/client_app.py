"""The ClientApp: one device's side of a round.

It reads the run settings from ``context.run_config``, its identity from the
node config (``partition-id``, ``num-partitions``), the model spec, training
settings and uplink codec chain from the server's message; decodes the global
model, trains locally, and replies with its update (trained minus received)
encoded by the uplink chain, plus its metrics (``num-examples``,
``train-loss``, ``partition-id`` ...) and its resource record for the round
(``res-*``: wall and CPU time, peak RSS, exact bytes down and up, parameters,
MACs, training FLOPs, energy with its method; see :mod:`fedshrink.resources`). A lossy chain keeps its error-feedback
residual in ``context.state`` between rounds. Client data never leaves the
node: it is loaded here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedshrink.compression import Chain, ResidualStore, decode_record, encode_state
from fedshrink.compression.pruning import encode_masks, get_masks, mask_digest, remove_pruning
from fedshrink.config import RunConfig
from fedshrink.data import LabelledArrays, client_data, node_split_spec
from fedshrink.errors import ConfigError
from fedshrink.fakequant import fake_quantize_, remove_fake_quant
from fedshrink.fragments import FragmentSpec
from fedshrink.fragments.local import derivable, pruned_sub_model
from fedshrink.fragments.nested import NestedConfig, NestedDistiller
from fedshrink.models import ModelSpec, build_model, count_parameters
from fedshrink.profiles import DeviceProfile, assign_profiles, get_profile
from fedshrink.resources import (
    ResourceMeter,
    fp32_equivalent_nbytes,
    macs_per_sample,
    message_size,
    reply_with_record,
)
from fedshrink.robust.attacks import AttackConfig, AttackContext, malicious_partitions
from fedshrink.robust.faults import ClientDropout, drops_out
from fedshrink.strategy.fragments import MASK_DIGEST, MASKS_KEY
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


def node_profile(cfg: RunConfig, node: NodeIdentity, node_config: Mapping[str, object]) -> DeviceProfile:
    """The node's device profile: ``profile=...`` in its node config, else its share of the run's mix."""
    if "profile" in node_config:
        return get_profile(str(node_config["profile"]))
    if not cfg.fragments.profile_mix:
        return get_profile("laptop")
    return get_profile(assign_profiles(cfg.fragments.profile_mix, node.num_partitions, cfg.seed)[node.partition_id])


@app.query("profile")
def profile(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition id and device profile (asked once, before training)."""
    cfg = RunConfig.from_mapping(context.run_config)
    node = NodeIdentity.from_node_config(dict(context.node_config))
    prof = node_profile(cfg, node, dict(context.node_config))
    reply = ConfigRecord({"partition-id": node.partition_id, "profile": prof.name})
    return Message(RecordDict({CONFIG_KEY: reply}), reply_to=msg)


def build_local_model(spec: ModelSpec, received: Mapping[str, torch.Tensor], config: Mapping[str, object]
                      ) -> tuple[nn.Module, DeviceProfile | None]:
    """The model this client trains: the full model, or its fragment with the profile's pruning and fake-quant."""
    if "fragment-spec" not in config:
        model = build_model(spec)
        model.load_state_dict(received)
        return model, None
    prof = get_profile(str(config["profile"]))
    model = pruned_sub_model(spec, model_width(config), received, prof,
                             scaled=bool(config.get("input-scaling", False)))
    fake_quantize_(model, prof.weight_bits)
    return model, prof


def model_width(config: Mapping[str, object]) -> float:
    """Width of the model this client trains (1 without a fragment)."""
    if "fragment-spec" not in config:
        return 1.0
    fragment = FragmentSpec.from_json(str(config["fragment-spec"]))
    return fragment.width if fragment.width is not None else get_profile(str(config["profile"])).width


def nested_distiller(spec: ModelSpec, config: Mapping[str, object], width: float) -> NestedDistiller | None:
    """Self-distillation into the narrower widths the server named (``nested-widths``), if any."""
    widths = config.get("nested-widths")
    if not widths:
        return None
    if not isinstance(widths, list) or not all(isinstance(w, float) for w in widths):
        raise ConfigError("train message nested-widths", widths, "a list of numbers in (0, 1)")
    nested = NestedConfig(tuple(widths), temperature=read_number(config, "nested-temperature", float),
                          weight=read_number(config, "nested-weight", float))
    distiller = NestedDistiller(spec, width, nested, scaled=bool(config.get("input-scaling", False)))
    return distiller if distiller.widths else None


def finish_local_model(model: nn.Module, prof: DeviceProfile | None) -> dict[str, torch.Tensor]:
    """Drop fake-quant (keeping the full-precision shadow weights), make pruning permanent; return the masks."""
    if prof is None:
        return {}
    remove_fake_quant(model, bake=False)  # the update is of the full-precision shadow weights
    masks = get_masks(model)
    remove_pruning(model)
    return masks


def attack_of(cfg: RunConfig, node: NodeIdentity) -> AttackConfig | None:
    """The run's simulated attack if this partition is one of the malicious ones (chosen from the seed)."""
    attack = cfg.robust.attack_config()
    if attack is None or node.partition_id not in malicious_partitions(node.num_partitions, cfg.robust.attack_fraction,
                                                                       cfg.seed):
        return None
    return attack


def attack_context(cfg: RunConfig, node: NodeIdentity, server_round: int, spec: ModelSpec,
                   received: Mapping[str, torch.Tensor], config: Mapping[str, object], data: LabelledArrays,
                   settings: TrainSettings) -> AttackContext:
    """What a malicious client can use: a seeded generator and honest retraining on resamples of its data."""

    def retrain(k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(seed_for(cfg.seed, server_round, node.partition_id, 2, k))
        sample = data.subset(rng.integers(0, len(data), size=len(data)))
        model, prof = build_local_model(spec, received, config)
        train_local(model, sample, settings, seed=seed_for(cfg.seed, server_round, node.partition_id, 3, k))
        finish_local_model(model, prof)
        trained = model.state_dict()
        return {key: trained[key] - received[key] for key in received}

    num_malicious = len(malicious_partitions(node.num_partitions, cfg.robust.attack_fraction, cfg.seed))
    gen = torch.Generator().manual_seed(seed_for(cfg.seed, server_round, node.partition_id, 4))
    return AttackContext(gen, node.num_partitions, num_malicious, retrain)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_mapping(context.run_config)
    node = NodeIdentity.from_node_config(dict(context.node_config))
    config: dict[str, object] = dict(msg.content.config_records[CONFIG_KEY])
    server_round = read_number(config, "server-round", int)
    spec = ModelSpec.from_json(str(config["model-spec"]))

    if drops_out(cfg.seed, server_round, node.partition_id, cfg.robust.dropout_rate):  # before touching context.state
        raise ClientDropout(node.partition_id, server_round)
    attack = attack_of(cfg, node)
    split = node_split_spec(cfg.split_spec(), context.node_config)  # in deployment the node names its data
    data = client_data(split, cfg.partition_scheme(), node.partition_id, node.num_partitions)
    if attack is not None:
        data = attack.poison_data(data, spec.num_classes)
    uplink = Chain.parse(str(config.get("uplink-chain", "raw")))
    settings = TrainSettings.from_values({s.key: config.get(s.key) for s in TrainSettings.settings()})
    torch.set_num_threads(cfg.resources.client_threads)
    bytes_in = message_size(msg)
    with ResourceMeter(watts_per_core=cfg.resources.watts_per_core) as meter:  # decode, train, encode
        received = decode_record(msg.content.array_records[ARRAYS_KEY])
        model, prof = build_local_model(spec, received, config)
        nested = nested_distiller(spec, config, model_width(config))
        result = train_local(model, data, settings, seed=seed_for(cfg.seed, server_round, node.partition_id),
                             extra_loss=nested.loss if nested is not None else None)
        masks = finish_local_model(model, prof)
        trained = model.state_dict()
        update = {k: trained[k] - received[k] for k in received}
        if attack is not None:
            update = attack.poison_update(update, attack_context(cfg, node, server_round, spec, received, config,
                                                                 data, settings))
        residuals = ResidualStore.load(context.state) if uplink.lossy else None
        rng = np.random.default_rng(seed_for(cfg.seed, server_round, node.partition_id, 1))
        record, _ = encode_state(update, uplink, residuals=residuals, round=server_round, direction="uplink",
                                 rng=rng)
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
    content = RecordDict({ARRAYS_KEY: record, METRICS_KEY: metrics})
    if masks and prof is not None and config.get("derive-masks") is True and derivable(prof):
        metrics[MASK_DIGEST] = mask_digest(masks)  # the server rebuilds the masks from what it sent
    elif masks:
        content[MASKS_KEY], _ = encode_masks(masks)
    reply = Message(content, reply_to=msg)
    resources = meter.record(
        bytes_received=bytes_in,
        parameters=count_parameters(model),
        macs_per_sample=macs_per_sample(model, spec.input_shape),
        samples=result.num_examples * settings.epochs,
        bytes_sent_fp32=fp32_equivalent_nbytes(reply, ARRAYS_KEY, trained),
    )
    reply_with_record(reply, resources)  # last: the reply must not change after this
    return reply
