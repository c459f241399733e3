"""What each node trains in a round: the whole model, or a fragment sized to its device profile.

The :class:`Planner` turns a node (its :class:`~fedshrink.protocol.Hello`),
the round and the global model into an :class:`Assignment`: the
:class:`~fedshrink.protocol.TrainInstruction` to send and the
:class:`~fedshrink.protocol.Expected` its reply must match.

* Without fragments every node gets the whole model through the run's
  downlink chain, the run's training settings and uplink chain.
* With fragments (a profile mix), the fragment policy cuts the node a
  fragment of its profile's width; it travels through the profile's downlink
  chain, with the profile itself (pruning, fake-quant bits, uplink chain,
  epochs, batch size) and the narrower widths in use to self-distil into.
  With ``derive-masks`` the server rebuilds the node's unstructured prune
  masks from the fragment exactly as the node decodes it
  (:mod:`fedshrink.fragments.local`), and expects their digest back.

With downlink deltas (``references``, :mod:`fedshrink.compression.reference`)
each (fragment, profile) pair has a reference that moves once per round; a
node that holds the reference of an earlier round (``base``) is sent the
deltas since, any other the whole reference (a new reference is the fragment
as its downlink chain sends it; later whole sends are exact). Prune masks are
then derived from the reference, which is what the node trains from.

Encoded downlinks and derived masks are computed once per round for each
(fragment, profile) pair, however many nodes share it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedshrink.compression import DecodeLimits, decode_record, encode_state
from fedshrink.compression.chain import ChainConfig
from fedshrink.compression.flower import FlatLayout
from fedshrink.compression.pruning import mask_digest
from fedshrink.compression.reference import DownlinkReferences
from fedshrink.devices.profiles import DeviceProfile
from fedshrink.fragments import FragmentPolicy, FragmentSpec, LayerGraph, extract
from fedshrink.fragments.local import derivable, derive_masks
from fedshrink.fragments.nested import NestedConfig, nested_widths
from fedshrink.fragments.start import start_state, state_digest
from fedshrink.models import ModelSpec
from fedshrink.protocol import Expected, Hello, TrainInstruction, chain_config, fragment_digest
from fedshrink.training import TrainSettings

REPLY_ALLOWANCE = 64 * 1024  # bytes a reply may carry beyond its tensors: metrics, headers, Flower's metadata


@dataclass(frozen=True)
class ReplyLimits:
    """How large a reply may be, relative to the fragment it updates (settings of the federation section)."""

    size_factor: float = 2.0  # times the fragment's fp32 bytes (plus REPLY_ALLOWANCE)
    max_bytes: int = 0  # an absolute cap on top (0 = none)

    def cap(self, fp32_bytes: int) -> int:
        cap = int(self.size_factor * fp32_bytes) + REPLY_ALLOWANCE
        return min(cap, self.max_bytes) if self.max_bytes else cap

    def decode_limits(self, shapes: Mapping[str, tuple[int, ...]], cap: int, flat_numel: int = 0) -> DecodeLimits:
        """Caps for decoding a reply to a fragment of ``shapes``: nothing larger than it may be allocated
        (``flat_numel``: the flat vector of a ``flat`` uplink chain, whose tensors it replaces)."""
        numels = [max(1, math.prod(s)) for s in shapes.values()] or [1]
        return DecodeLimits(max_numel=max(*numels, flat_numel), max_total_numel=sum(numels),
                            max_tensor_bytes=max(cap, 1),
                            max_tensors=max(len(numels), 1), max_record_bytes=max(cap, 1))


@dataclass(frozen=True)
class Assignment:
    """One node's work in one round."""

    instruction: TrainInstruction
    expected: Expected
    fragment: FragmentSpec | None
    masks: Mapping[str, np.ndarray] | None  # the prune masks the server derived (fragment coordinates)


@dataclass(frozen=True)
class _Encoded:
    record: ArrayRecord  # the fragment as the downlink chain sends it (empty with references: see assign)
    masks: dict[str, np.ndarray] | None
    digest: int | None
    shapes: dict[str, tuple[int, ...]]  # of the tensors encoded (what a reply must match)
    dtypes: dict[str, str]

    @functools.cached_property
    def flat_numel(self) -> int:
        """The elements of a ``flat`` uplink chain's vector for this fragment (made once per round)."""
        return FlatLayout.expected(self.shapes, self.dtypes).numel


class Planner:
    """Assignments for the nodes of a round (see the module doc)."""

    def __init__(self, model_spec: ModelSpec, graph: LayerGraph, training: TrainSettings, *, uplink: str,
                 downlink: str, fragments: bool, policy: FragmentPolicy | None = None, input_scaling: bool = False,
                 nested: NestedConfig | None = None, derive: bool = False, reply_limits: ReplyLimits = ReplyLimits(),
                 references: DownlinkReferences | None = None, start_seed: int | None = None) -> None:
        self.model_spec = model_spec
        self.graph = graph
        self.training = training
        self.uplink = ChainConfig.parse(uplink).to_string()
        self.downlink = ChainConfig.parse(downlink).to_string()
        self.fragments = fragments
        self.policy = policy
        self.input_scaling = input_scaling
        self.nested = nested
        self.derive = derive
        self.reply_limits = reply_limits
        self.references = references
        self.start_seed = start_seed  # with references: clients build the starting model from this seed
        self._started: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (round, digest) of a seeded start
        self._cache: dict[tuple[int, str, str], _Encoded] = {}
        self._empty = ArrayRecord()  # the model field of an instruction that carries deltas

    def widths_in_use(self, nodes: Sequence[Hello]) -> list[float]:
        """The fragment widths of the given nodes (empty without fragments)."""
        if not self.fragments:
            return []
        return sorted({n.profile.width for n in nodes if n.profile is not None})

    def assign(self, node: Hello, server_round: int, node_key: int, global_state: Mapping[str, np.ndarray],
               widths: Sequence[float], base: int | None = None) -> Assignment:
        """``node``'s instruction and what its reply must be; ``node_key`` seeds per-node fragment policies;
        ``base``: the round whose downlink reference the node holds (None: none, or unknown)."""
        profile = node.profile if self.fragments else None
        if profile is None:
            fragment, sub, training, uplink, downlink = None, global_state, self.training, self.uplink, self.downlink
        else:
            assert self.policy is not None
            fragment = self.policy.spec_for(self.graph, profile.width, server_round, node_key)
            sub = extract(global_state, self.graph, fragment)
            training = dataclasses.replace(self.training, epochs=profile.local_epochs, batch_size=profile.batch_size)
            uplink, downlink = profile.uplink, profile.downlink
        encoded = self._encode(server_round, fragment, profile, sub, downlink)
        nested = self._nested_for(profile, widths)
        derived = encoded.digest is not None
        model, reference, deltas, start = encoded.record, False, None, None
        if self.references is not None:  # the whole reference is encoded only for a node that needs it
            key = self._key(fragment, profile, downlink)
            deltas = self.references.deltas_since(key, base)
            start = self._started.get(key) if deltas is None else None
            if start is not None and start[0] != server_round:
                start = None  # the reference has moved on from the starting model: send it whole
            model, reference = (self.references.whole(key) if deltas is None and start is None else self._empty), True
        instruction = TrainInstruction(server_round, self.model_spec, training, uplink, model, fragment,
                                       profile, self.input_scaling, nested, derived, downlink_reference=reference,
                                       downlink_base=0 if deltas is None else int(base or 0),
                                       deltas=tuple(deltas or ()),
                                       start_seed=None if start is None else self.start_seed,
                                       start_digest=0 if start is None else start[1])
        shapes = encoded.shapes
        fp32 = sum(4 * max(1, math.prod(s)) for s in shapes.values())
        cap = self.reply_limits.cap(fp32 + (fp32 // 32 if profile is not None else 0))  # + room for mask bitmaps
        flat = encoded.flat_numel if chain_config(uplink).flat else 0
        expected = Expected(
            server_round, node.partition_id, shapes, encoded.dtypes, uplink,
            fragment_digest(fragment), cap, self.reply_limits.decode_limits(shapes, cap, flat), encoded.digest,
            masks_allowed=profile is not None and profile.pruning_method is not None and not derived)
        return Assignment(instruction, expected, fragment, encoded.masks)

    def _nested_for(self, profile: DeviceProfile | None, widths: Sequence[float]) -> NestedConfig | None:
        if self.nested is None or profile is None:
            return None
        narrower = nested_widths(widths, profile.width)
        return dataclasses.replace(self.nested, widths=narrower) if narrower else None

    @staticmethod
    def _key(fragment: FragmentSpec | None, profile: DeviceProfile | None, downlink: str) -> tuple[str, str]:
        return (fragment.to_json() if fragment is not None else "",
                profile.to_json() if profile is not None else downlink)

    def _encode(self, server_round: int, fragment: FragmentSpec | None, profile: DeviceProfile | None,
                sub: Mapping[str, np.ndarray], downlink: str) -> _Encoded:
        key = (server_round, *self._key(fragment, profile, downlink))
        if key not in self._cache:
            if self._cache and next(iter(self._cache))[0] != server_round:
                self._cache.clear()  # one round's encodings at a time
            if self.references is not None:  # the reference moves; assign sends it whole or the deltas to it
                first = downlink
                if self.start_seed is not None and not self.references.holds(key[1:]):
                    start = start_state(self.model_spec, self.start_seed, fragment, self.graph)
                    if start.keys() == sub.keys() and all(np.array_equal(start[k].numpy(), sub[k]) and
                                                          start[k].numpy().dtype == np.asarray(sub[k]).dtype
                                                          for k in sub):
                        self._started[key[1:]] = (server_round, state_digest(start))
                        first = "raw"  # the reference is the starting model exactly, as the clients build it
                self.references.advance(key[1:], server_round, sub, first=first)
                record = self._empty
            else:
                state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sub.items()}
                record, _ = encode_state(state, downlink, round=server_round, direction="downlink")
            masks, digest = None, None
            if self.derive and profile is not None and derivable(profile):
                received = decode_record(record) if self.references is None else \
                    self.references.reference(key[1:])  # exactly what the node decodes, or holds
                width = fragment.width if fragment is not None and fragment.width is not None else profile.width
                derived = derive_masks(self.model_spec, width, received, profile, scaled=self.input_scaling)
                masks, digest = {k: m.numpy().astype(bool) for k, m in derived.items()}, mask_digest(derived)
            self._cache[key] = _Encoded(record, masks, digest, {k: tuple(np.shape(v)) for k, v in sub.items()},
                                        {k: str(np.asarray(v).dtype) for k, v in sub.items()})
        return self._cache[key]
