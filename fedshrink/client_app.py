"""The ClientApp: Flower's entry point on a device; wiring only.

* ``query.hello``: the node says who it is (partition id from its node
  config) and which device profile it trains with (:mod:`fedshrink.client.node`).
* ``train``: it reads the :class:`~fedshrink.protocol.TrainInstruction`,
  loads its own data (client data never leaves the node), plays the local
  round (:mod:`fedshrink.client.local`) under a
  :class:`~fedshrink.resources.ResourceMeter`, and replies with a
  :class:`~fedshrink.protocol.TrainReply` plus its resource record. A lossy
  uplink keeps its error-feedback residual between rounds in the run's
  client state (:mod:`fedshrink.runner.state`: on disk by default, or
  ``context.state``), and so does the downlink reference of a run with
  downlink deltas (:mod:`fedshrink.compression.reference`).

What does not change between calls (the parsed settings, the model object,
the round's decoded global model) is kept per process (:mod:`fedshrink.client.cache`).

Simulated faults and attacks (research) act here: a node that drops out this
round sends nothing; a malicious partition poisons its data or its update.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedshrink.client.cache import model_costs, run_config
from fedshrink.client.local import Poison, local_round, received_model, train_update
from fedshrink.client.node import NodeIdentity, node_budget, node_device, node_profile
from fedshrink.compression import Chain, ResidualStore
from fedshrink.config import RunConfig
from fedshrink.data import LabelledArrays, client_data, node_split_spec
from fedshrink.protocol import ARRAYS, Hello, TrainInstruction
from fedshrink.resources import ResourceMeter, fp32_equivalent_nbytes, message_size, reply_with_record
from fedshrink.robust.attacks import AttackConfig, AttackContext, malicious_partitions
from fedshrink.robust.faults import ClientDropout, drops_out
from fedshrink.runner.state import state_slot
from fedshrink.training import seed_for

app = ClientApp()


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition, profile or budget, device and sample count (asked once)."""
    cfg = run_config(context.run_config)
    node = NodeIdentity.from_node_config(context.node_config)
    budget = node_budget(cfg, node, context.node_config)
    profile = node_profile(cfg, node, context.node_config, budget)
    device = node_device(cfg, node, context.node_config, profile, budget)
    examples = 0  # the planner sizes a budget's time and energy with the node's samples; nothing else needs them
    if budget is not None:
        split = node_split_spec(cfg.split_spec(), context.node_config)
        examples = len(client_data(split, cfg.partition_scheme(), node.partition_id, node.num_partitions))
    return Hello(node.partition_id, node.num_partitions, profile, device, budget, examples).reply_to(msg)


def attack_of(cfg: RunConfig, node: NodeIdentity) -> AttackConfig | None:
    """The run's simulated attack if this partition is one of the malicious ones (chosen from the seed)."""
    attack = cfg.robust.attack_config()
    if attack is None or node.partition_id not in malicious_partitions(node.num_partitions,
                                                                       cfg.robust.attack_fraction, cfg.seed):
        return None
    return attack


def poisoner(attack: AttackConfig, cfg: RunConfig, node: NodeIdentity, instruction: TrainInstruction,
             data: LabelledArrays, received: Mapping[str, torch.Tensor]) -> Poison:
    """The attack's change to the update, with a seeded generator and honest retraining on resamples."""
    rnd, pid = instruction.server_round, node.partition_id

    def retrain(k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(seed_for(cfg.seed, rnd, pid, 2, k))
        sample = data.subset(rng.integers(0, len(data), size=len(data)))
        return train_update(instruction, received, sample, seed_for(cfg.seed, rnd, pid, 3, k))[2]

    num_malicious = len(malicious_partitions(node.num_partitions, cfg.robust.attack_fraction, cfg.seed))
    ctx = AttackContext(torch.Generator().manual_seed(seed_for(cfg.seed, rnd, pid, 4)), node.num_partitions,
                        num_malicious, retrain)
    return lambda update: attack.poison_update(update, ctx)


def dp_noise_rng(cfg: RunConfig, rnd: int, partition_id: int) -> np.random.Generator:
    """A distributed-DP noise share's generator: the OS's entropy, or the run's seed (dp-reproducible-noise)."""
    if cfg.privacy.dp_reproducible_noise:
        return np.random.default_rng(seed_for(cfg.seed, rnd, partition_id, 5))
    return np.random.default_rng()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = run_config(context.run_config)
    node = NodeIdentity.from_node_config(context.node_config)
    instruction = TrainInstruction.from_records(msg.content)
    rnd = instruction.server_round
    if drops_out(cfg.seed, rnd, node.partition_id, cfg.robust.dropout_rate):  # before touching context.state
        raise ClientDropout(node.partition_id, rnd)
    split = node_split_spec(cfg.split_spec(), context.node_config)  # in deployment the node names its data
    data = client_data(split, cfg.partition_scheme(), node.partition_id, node.num_partitions)
    attack = attack_of(cfg, node)
    if attack is not None:
        data = attack.poison_data(data, instruction.model_spec.num_classes)
    torch.set_num_threads(cfg.resources.client_threads)
    lossy = Chain.parse(instruction.uplink).lossy
    slot = state_slot(cfg.resources.client_state, cfg.resources.client_state_compress, context,
                      str(node.partition_id)) if lossy or instruction.downlink_reference else None
    state = slot.load(rnd) if slot is not None else None
    residuals = ResidualStore.load(state) if state is not None and lossy else None
    bytes_in = message_size(msg)
    with ResourceMeter(watts_per_core=cfg.resources.watts_per_core) as meter:  # decode, train, encode
        received = received_model(instruction, state)
        result = local_round(instruction, data, seed=seed_for(cfg.seed, rnd, node.partition_id),
                             residuals=residuals, rng=np.random.default_rng(seed_for(cfg.seed, rnd, node.partition_id,
                                                                                     1)),
                             poison=poisoner(attack, cfg, node, instruction, data, received)
                             if attack is not None else None,
                             noise_rng=dp_noise_rng(cfg, rnd, node.partition_id), received=received)
        if slot is not None and state is not None:
            if residuals is not None:
                residuals.save(state)
            slot.save(rnd, state)
    reply = result.reply(node.partition_id).to_message(msg)
    parameters, macs = model_costs(result.model, instruction.model_spec)
    resources = meter.record(
        bytes_received=bytes_in, parameters=parameters, macs_per_sample=macs,
        samples=result.result.num_examples * instruction.training.epochs,
        bytes_sent_fp32=fp32_equivalent_nbytes(reply, ARRAYS, result.trained),
    )
    reply_with_record(reply, resources)  # last: the reply must not change after this
    return reply
