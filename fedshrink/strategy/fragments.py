"""Heterogeneous clients: each trains a fragment of the global model sized to its device profile.

:class:`FragmentStrategy` overrides two seams of :class:`~.fedshrink.FedShrink`:

* :meth:`train_content` cuts each client's fragment out of the global model
  (a :class:`~fedshrink.fragments.FragmentSpec` chosen by the fragment policy
  for the client's profile width, round and node), encodes it with the
  profile's downlink chain, and tells the client its profile (pruning,
  fake-quant bits, uplink chain, epochs, batch size);
* :meth:`aggregate_arrays` rebuilds each client's trained fragment (the
  fragment it was sent plus its decoded update) and folds the overlapping
  fragments into the global model with
  :func:`~fedshrink.fragments.aggregate_fragments`: every coordinate becomes
  the sample-weighted mean over the clients that held it (pruned-away
  coordinates count as not held unless ``pruned_as_zero``); coordinates that
  nobody held keep their value;
* :meth:`refine` fuses the nested sub-models into the outer coordinates
  (``fusion``), and round 1 starts from a nested initialisation (``init``),
  see :mod:`fedshrink.fragments.fusion`.

With ``derive_masks`` the server rebuilds each unstructured-pruning client's
masks from the fragment it sent (:mod:`fedshrink.fragments.local`); the client
sends their digest (``mask-digest``) instead of the bitmaps, and a reply whose
digest differs is dropped with that reason.

A node's profile is learnt by asking it once (a ``query.profile`` message:
from its node config ``profile=...`` in deployment, from the run's profile mix
and its partition id in simulation) before its first training round.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedshrink.compression import decode_record, encode_state
from fedshrink.compression.pruning import decode_masks, mask_digest
from fedshrink.errors import ConfigError, DecodeError, ReplyError
from fedshrink.fragments import (
    Contribution,
    FragmentPolicy,
    FragmentSpec,
    aggregate_fragments,
    build_graph,
    extract,
    make_policy,
)
from fedshrink.fragments import scatter as scatter_fragment
from fedshrink.fragments.fusion import INITS, FusionConfig, fuse, inner_spec, nested_init
from fedshrink.fragments.local import derivable, derive_masks
from fedshrink.fragments.nested import NestedConfig, nested_widths
from fedshrink.models import ModelSpec, build_model
from fedshrink.profiles import DeviceProfile, get_profile
from fedshrink.robust.fold import ClientContribution
from fedshrink.strategy.fedshrink import FedShrink, RoundOutcome
from fedshrink.strategy.replies import ARRAYS_KEY, CONFIG_KEY, Expected, GoodReply, expected_from
from fedshrink.training import read_number

log = logging.getLogger("fedshrink.strategy")

MASKS_KEY = "masks"
MASK_DIGEST = "mask-digest"  # metric: digest of the masks the client applied, when the server derives them
PROFILE_QUERY = f"{MessageType.QUERY}.profile"


class FragmentStrategy(FedShrink):
    """FedShrink over per-client fragments (see the module doc).

    Parameters beyond :class:`FedShrink`'s: ``model_spec`` of the global model,
    ``policy`` (``static``, ``rolling`` or ``random``), ``pruned_as_zero`` and
    ``input_scaling`` (sub-models scale each layer's input by full / kept
    fan-in, see :mod:`fedshrink.fragments.scaler`) and ``nested`` (clients
    also train their nested prefixes at the narrower widths in use, see
    :mod:`fedshrink.fragments.nested`; None: off), ``derive_masks``, ``init``
    (``random`` or ``nested``), ``fusion`` (None: off) and ``proxy_x``, the
    unlabelled inputs fusion distils on.
    """

    def __init__(self, *, model_spec: ModelSpec, policy: str | FragmentPolicy = "rolling", pruned_as_zero: bool = False,
                 input_scaling: bool = False, nested: NestedConfig | None = None, derive_masks: bool = False,
                 init: str = "random", fusion: FusionConfig | None = None, proxy_x: torch.Tensor | None = None,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.model_spec = model_spec
        self.graph = build_graph(build_model(model_spec))
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.pruned_as_zero = pruned_as_zero
        self.input_scaling = input_scaling
        self.nested = nested
        self.derive_masks = derive_masks
        if init not in INITS:
            raise ConfigError("fragment-init", init, "one of " + ", ".join(map(repr, INITS)))
        if fusion is not None and (proxy_x is None or len(proxy_x) == 0):
            raise ConfigError("fusion-steps", fusion.steps, "0 when the server has no proxy inputs (proxy-fraction 0)")
        self.init = init
        self.fusion = fusion
        self.proxy_x = proxy_x
        self.node_profiles: dict[int, DeviceProfile] = {}
        self.node_partitions: dict[int, int] = {}
        self._specs: dict[int, FragmentSpec] = {}
        self._masks: dict[int, dict[str, np.ndarray]] = {}
        self._derived: dict[int, tuple[dict[str, np.ndarray], int]] = {}  # node -> (masks, digest) this round

    # -- profiles ---------------------------------------------------------------------
    def learn_profiles(self, node_ids: list[int], grid: Grid, timeout: float) -> None:
        """Ask every node whose profile is unknown for it; nodes that do not answer are left out."""
        unknown = [n for n in node_ids if n not in self.node_profiles]
        if not unknown:
            return
        queries = [Message(RecordDict({CONFIG_KEY: ConfigRecord({})}), dst_node_id=n, message_type=PROFILE_QUERY)
                   for n in unknown]
        for reply in grid.send_and_receive(queries, timeout=timeout):
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise ReplyError(f"client error {reply.error.code}: {reply.error.reason}")
                config = reply.content.config_records[CONFIG_KEY]
                self.node_profiles[node] = get_profile(str(config["profile"]))
                self.node_partitions[node] = read_number(config, "partition-id", int)
            except (ReplyError, ConfigError, KeyError, TypeError, ValueError) as exc:
                log.warning("node %d: profile query failed, node left out: %s", node, exc)

    def sample_nodes(self, server_round: int, grid: Grid) -> list[int]:
        nodes = super().sample_nodes(server_round, grid)
        self.learn_profiles(nodes, grid, self.wait_timeout)
        if server_round == 1 and self.init == "nested":  # the first round's profiles name the inner sub-model
            inner = inner_spec(self.graph, self.widths_in_use())
            if inner is not None:
                self._global = nested_init(self._global, self.graph, inner)
        return [n for n in nodes if n in self.node_profiles]

    def widths_in_use(self) -> list[float]:
        return sorted({p.width for p in self.node_profiles.values()})

    # -- train ------------------------------------------------------------------------
    def train_content(self, node_id: int, server_round: int, config: ConfigRecord) -> tuple[RecordDict, Expected]:
        profile = self.node_profiles[node_id]
        spec = self.policy.spec_for(self.graph, profile.width, server_round, node_id)
        self._specs[node_id] = spec
        sub = extract(self._global, self.graph, spec)  # name -> ndarray of sub-shape
        record, _ = encode_state({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sub.items()},
                                 profile.downlink, round=server_round, direction="downlink")
        cfg = ConfigRecord(dict(config))
        cfg.update({
            "server-round": server_round,
            "fragment-spec": spec.to_json(),
            "profile": profile.name,
            "input-scaling": self.input_scaling,
            **self._nested_config(profile.width),
            "uplink-chain": profile.uplink,
            "local-epochs": profile.local_epochs,
            "batch-size": profile.batch_size,
        })
        self._derived.pop(node_id, None)
        if self.derive_masks and derivable(profile):
            received = decode_record(record)  # exactly what the client decodes
            width = spec.width if spec.width is not None else profile.width
            masks = derive_masks(self.model_spec, width, received, profile, scaled=self.input_scaling)
            self._derived[node_id] = ({k: m.numpy() for k, m in masks.items()}, mask_digest(masks))
            cfg["derive-masks"] = True
        return RecordDict({ARRAYS_KEY: record, CONFIG_KEY: cfg}), expected_from(sub)

    def _nested_config(self, width: float) -> dict[str, list[float] | float]:
        """What the client distils into: the narrower widths in use (nothing when off or none)."""
        if self.nested is None:
            return {}
        narrower = nested_widths(self.widths_in_use(), width)
        if not narrower:
            return {}
        return {"nested-widths": list(narrower), "nested-temperature": self.nested.temperature,
                "nested-weight": self.nested.weight}

    def accept_reply(self, msg: Message, reply: GoodReply) -> None:
        """The client's prune masks: the bitmaps it sent, or the ones derived from its fragment, digest checked."""
        masks: dict[str, np.ndarray] = {}
        if MASKS_KEY not in msg.content.array_records and reply.node_id in self._derived:
            derived, digest = self._derived[reply.node_id]
            got = reply.metrics.get(MASK_DIGEST)
            if got is None or got != digest:
                raise ReplyError(f"{MASK_DIGEST} {got!r} is not {digest}, the digest of the prune masks derived "
                                 "from the fragment sent")
            masks = derived
        if MASKS_KEY in msg.content.array_records:
            try:
                decoded = decode_masks(msg.content.array_records[MASKS_KEY], limits=self.limits)
            except DecodeError as exc:
                raise ReplyError(f"masks: {exc}") from exc
            for key, mask in decoded.items():
                if key not in reply.arrays or tuple(mask.shape) != reply.arrays[key].shape:
                    raise ReplyError(f"mask {key!r} does not match a tensor of the fragment")
                masks[key] = mask.numpy()
        self._masks[reply.node_id] = masks

    def aggregate_arrays(self, good: list[GoodReply]) -> dict[str, np.ndarray]:
        contributions = []
        for r in good:
            spec = self._specs[r.node_id]
            sent = extract(self._global, self.graph, spec)
            trained = {k: (v + r.arrays[k]).astype(v.dtype) for k, v in sent.items()}
            contributions.append(Contribution(trained, spec, float(r.num_examples), self._masks.get(r.node_id) or None))
        return aggregate_fragments(self._global, self.graph, contributions, pruned_as_zero=self.pruned_as_zero)

    def refine(self, server_round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fusion: distil the nested sub-models into the outer coordinates (when configured)."""
        if self.fusion is None or self.proxy_x is None:
            return arrays
        return fuse(arrays, self.graph, self.model_spec, self.widths_in_use(), self.proxy_x, self.fusion,
                    scaled=self.input_scaling)

    def client_states(self, outcome: RoundOutcome) -> list[dict[str, np.ndarray]]:
        # fragments are not whole models; RunConfig refuses distill-teacher=ensemble with a profile mix
        raise NotImplementedError("client states of fragments are not whole models")

    # -- robust aggregation and checkpoint seams (issue 8) ------------------------------
    def contributions(self, good: list[GoodReply]) -> list[ClientContribution]:
        """Each client's update scattered into global coordinates; held = its fragment and prune mask.

        With ``pruned_as_zero`` a pruned coordinate counts as held with the
        trained value 0 (update ``-global``), as :func:`aggregate_fragments` does.
        """
        shapes = {k: tuple(v.shape) for k, v in self._global.items()}
        out = []
        for r in good:
            spec = self._specs[r.node_id]
            values, held = scatter_fragment(r.arrays, self.graph, spec, shapes)
            masks = self._masks.get(r.node_id) or {}
            if masks:
                full_masks, _ = scatter_fragment({k: m.astype(bool) for k, m in masks.items()}, self.graph, spec,
                                                 shapes)
                for key, m in full_masks.items():
                    if self.pruned_as_zero:
                        values[key] = np.where(m | ~held[key], values[key], -self._global[key]).astype(
                            values[key].dtype)
                    else:
                        held[key] = held[key] & m
            out.append(ClientContribution(r.partition_id, r.node_id, values, held, float(r.num_examples)))
        return out

    def checkpoint_state(self) -> dict[str, object]:
        return {**super().checkpoint_state(),
                "node-profiles": {str(n): p.name for n, p in self.node_profiles.items()},
                "node-partitions": {str(n): p for n, p in self.node_partitions.items()}}

    def restore_state(self, state: dict[str, object]) -> None:
        super().restore_state(state)
        profiles = state.get("node-profiles", {})
        partitions = state.get("node-partitions", {})
        assert isinstance(profiles, dict) and isinstance(partitions, dict)
        self.node_profiles = {int(n): get_profile(str(p)) for n, p in profiles.items()}
        self.node_partitions = {int(n): int(p) for n, p in partitions.items()}
