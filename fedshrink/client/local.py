"""One local round on a device: the model an instruction describes, trained, and its update encoded.

::

    received = received_model(instruction, state)   # the decoded downlink, or the reference moved by deltas
    result = local_round(instruction, data, seed=..., residuals=store, rng=..., received=received)
    reply = result.reply(partition_id).to_message(msg)

The model is the whole model, or the instruction's fragment built as the
sub-model of its width, pruned and fake-quantized as its profile says
(:mod:`fedshrink.fragments.local`, :mod:`fedshrink.fakequant`). After
training, fake-quant is removed keeping the full-precision shadow weights,
pruning is made permanent, and the update ``trained - received`` is encoded
by the instruction's uplink chain (with the error-feedback residual of a
lossy chain). An attack, when the node simulates one, changes the update
before it is encoded. An instruction with a private step (differential
privacy) has the update clipped, and noised in distributed mode, before it is
encoded (:func:`fedshrink.privacy.client.private_uplink`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from fedshrink.client.cache import decoded_downlink, whole_model
from fedshrink.compression import Chain, ResidualStore, decode_like, encode_state
from fedshrink.compression.pruning import encode_masks, get_masks, mask_digest, remove_pruning
from fedshrink.compression.reference import ClientReference, follow
from fedshrink.data import LabelledArrays
from fedshrink.errors import DecodeError
from fedshrink.fakequant import fake_quantize_, remove_fake_quant
from fedshrink.fragments.local import pruned_sub_model
from fedshrink.fragments.nested import NestedDistiller
from fedshrink.fragments.start import start_state, state_digest
from fedshrink.privacy.client import private_uplink
from fedshrink.protocol import TrainInstruction, TrainReply, fragment_digest
from fedshrink.training import TrainResult, train_local

Update = dict[str, torch.Tensor]
Poison = Callable[[Update], Update]


def received_model(instruction: TrainInstruction, state: RecordDict | None) -> dict[str, torch.Tensor]:
    """What the node trains from: the decoded downlink; with downlink deltas, the node's reference moved to this
    round (the whole reference, or the one in ``state`` plus the deltas), written back into ``state``.

    Raises :class:`~fedshrink.errors.DecodeError` when the deltas start from a round the node does not hold.
    """
    if not instruction.downlink_reference:
        return decoded_downlink(instruction.model)
    if state is None:
        raise ValueError("an instruction with a downlink reference needs the node's state")
    fragment = fragment_digest(instruction.fragment)
    if instruction.downlink_base == 0 and instruction.start_seed is not None:
        held = ClientReference(built_start(instruction), instruction.server_round, fragment)
    elif instruction.downlink_base == 0:
        held = ClientReference(decoded_downlink(instruction.model), instruction.server_round, fragment)
    else:
        before = ClientReference.load(state)
        like = before.tensors if before is not None else None  # a flat delta splits along the reference held
        held = follow(before, instruction.downlink_base, [decode_like(d, like) for d in instruction.deltas],
                      server_round=instruction.server_round, fragment=fragment)
    held.save(state)
    return dict(held.tensors)


def built_start(instruction: TrainInstruction) -> dict[str, torch.Tensor]:
    """The run's starting model (or fragment), built here from the instruction's seed; :class:`DecodeError`
    when it is not the server's (its digest differs)."""
    assert instruction.start_seed is not None
    state = start_state(instruction.model_spec, instruction.start_seed, instruction.fragment)
    if state_digest(state) != instruction.start_digest:
        raise DecodeError("downlink", f"the model built from seed {instruction.start_seed} is not the server's "
                          "(digests differ: another torch build?); the whole model comes next round")
    return state


def build_local_model(instruction: TrainInstruction, received: Mapping[str, torch.Tensor]) -> nn.Module:
    """The model this client trains: the whole model, or its fragment with the profile's pruning and fake-quant."""
    profile = instruction.profile
    if instruction.fragment is None and profile is None:
        return whole_model(instruction.model_spec, received)  # built once per thread: every value is loaded
    assert profile is not None, "a fragment comes with the profile it is trained under"
    model = pruned_sub_model(instruction.model_spec, instruction.width, received, profile,
                             scaled=instruction.input_scaling)
    fake_quantize_(model, profile.weight_bits)
    return model


def finish_local_model(model: nn.Module, instruction: TrainInstruction) -> dict[str, torch.Tensor]:
    """Drop fake-quant (keeping the full-precision shadow weights), make pruning permanent; return the masks."""
    if instruction.profile is None:
        return {}
    remove_fake_quant(model, bake=False)  # the update is of the full-precision shadow weights
    masks = get_masks(model)
    remove_pruning(model)
    return masks


def train_update(instruction: TrainInstruction, received: Mapping[str, torch.Tensor], data: LabelledArrays,
                 seed: int) -> tuple[nn.Module, TrainResult, Update, dict[str, torch.Tensor]]:
    """Train the instruction's model on ``data``: (model, result, update = trained - received, prune masks)."""
    model, result, _, update, masks = _train(instruction, received, data, seed)
    return model, result, update, masks


def _train(instruction: TrainInstruction, received: Mapping[str, torch.Tensor], data: LabelledArrays, seed: int
           ) -> tuple[nn.Module, TrainResult, dict[str, torch.Tensor], Update, dict[str, torch.Tensor]]:
    """:func:`train_update`, with the trained state as well (its state dict, made once)."""
    model = build_local_model(instruction, received)
    nested = None
    if instruction.nested is not None:
        nested = NestedDistiller(instruction.model_spec, instruction.width, instruction.nested,
                                 scaled=instruction.input_scaling)
        nested = nested if nested.widths else None
    result = train_local(model, data, instruction.training, seed=seed,
                         extra_loss=nested.loss if nested is not None else None)
    masks = finish_local_model(model, instruction)
    trained = dict(model.state_dict())
    return model, result, trained, {k: trained[k] - received[k] for k in received}, masks


@dataclass(frozen=True)
class LocalRound:
    """What a local round produced."""

    model: nn.Module  # the trained (sub-)model, pruning and fake-quant removed
    result: TrainResult
    update: ArrayRecord  # encoded
    trained: dict[str, torch.Tensor]  # the trained state (the fp32 equivalent of what is sent)
    masks: ArrayRecord | None
    digest: int | None
    dp_within: float | None = None  # differential privacy: 1 if the update fitted the bound

    def reply(self, partition_id: int) -> TrainReply:
        return TrainReply(partition_id, self.result.num_examples, self.update, self.result.mean_loss,
                          self.result.steps, self.result.seconds, self.masks, self.digest, self.dp_within)


def local_round(instruction: TrainInstruction, data: LabelledArrays, *, seed: int,
                residuals: ResidualStore | None, rng: np.random.Generator, poison: Poison | None = None,
                noise_rng: np.random.Generator | None = None,
                received: Mapping[str, torch.Tensor] | None = None) -> LocalRound:
    """Decode, train, encode (see the module doc); ``residuals`` is the node's error-feedback store,
    ``noise_rng`` draws a distributed-DP noise share (default: ``rng``); ``received``: what
    :func:`received_model` returned (default: the instruction's model, decoded)."""
    received = decoded_downlink(instruction.model) if received is None else received
    model, result, trained, update, masks = _train(instruction, received, data, seed)
    if poison is not None:  # an attack may train again, in the same (cached) model object
        trained = {k: v.clone() for k, v in trained.items()}
        update = poison(update)
    within = None
    if instruction.privacy is not None:
        private = private_uplink(update, Chain.parse(instruction.uplink), instruction.privacy, masks=masks,
                                 residuals=residuals, rng=rng, noise_rng=noise_rng or rng,
                                 fragment=fragment_digest(instruction.fragment), round=instruction.server_round)
        record, within = private.record, private.within
    else:
        record, _ = encode_state(update, Chain.parse(instruction.uplink), residuals=residuals,
                                 fragment=fragment_digest(instruction.fragment), round=instruction.server_round,
                                 direction="uplink", rng=rng)
    digest, mask_record = None, None
    if masks and instruction.derive_masks:
        digest = mask_digest(masks)  # the server rebuilds the masks from what it sent
    elif masks:
        mask_record, _ = encode_masks(masks)
    return LocalRound(model, result, record, trained, mask_record, digest, within)
