"""The messages between server and client, each written in one place and read in one place.

Three exchanges, all Flower Messages whose content is built here:

* ``query.hello`` (once per node, before its first round): the server asks,
  the node answers with a :class:`Hello` -- its partition id, the number of
  partitions, and the device profile it trains with (the whole profile, so
  the server needs no registry entry for it).
* ``train``: a :class:`TrainInstruction` -- the round, the model spec, the
  local training settings, the uplink codec chain, the encoded model or
  fragment, and, for a fragment, the fragment spec, the profile itself and
  the nested widths to distil into. With downlink deltas
  (:mod:`fedshrink.compression.reference`) the model is either the whole
  reference or, for a client that holds round ``downlink-base``'s, the
  deltas since, one ArrayRecord each (``downlink-delta-0``, ``-1``, ...).
* its reply: a :class:`TrainReply` -- the encoded update (trained minus
  received), the client's metrics and resource record, and its prune masks
  or their digest.

The server checks a reply against the :class:`Expected` it wrote for that
node when it sent the instruction (:func:`read_train_reply`): every value of
the metrics, then the names, shapes, dtypes, codec chain, round and sizes of
the update's tensors, all before any payload is decoded; then it decodes
under limits sized to the fragment sent. A fault raises
:class:`~fedshrink.errors.ReplyError` naming it; the strategy turns that into
a dropped reply, never a crash.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedshrink.compression import DecodeLimits
from fedshrink.compression.chain import ChainConfig
from fedshrink.compression.flower import FLAT_KEY, UPDATE_KEY, FlatLayout, check_chain, parse_record
from fedshrink.compression.pruning import decode_masks
from fedshrink.compression.wire import ParsedTensor, decode_parsed_array
from fedshrink.devices.budget import Budget
from fedshrink.devices.model import DeviceModel
from fedshrink.devices.profiles import DeviceProfile
from fedshrink.errors import ConfigError, DecodeError, ReplyError
from fedshrink.fragments.nested import NestedConfig
from fedshrink.fragments.spec import FragmentSpec
from fedshrink.models.registry import ModelSpec
from fedshrink.privacy.client import WITHIN_METRIC, ClientPrivacy
from fedshrink.resources.meter import WIRE_FLOATS, WIRE_INTS, ResourceRecord
from fedshrink.training import TrainSettings

T = TypeVar("T")
ARRAYS = "arrays"  # the encoded model (train) or update (reply)
CONFIG = "config"
METRICS = "metrics"
MASKS = "masks"  # prune masks a client sends when the server does not derive them
DELTA = "downlink-delta-"  # + index: the i-th downlink delta of an instruction
MAX_DELTAS = 1024  # more deltas than this in one instruction are refused (the server never sends that many)
HELLO = f"{MessageType.QUERY}.hello"
TRAIN = MessageType.TRAIN


def instruction_error(key: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"train instruction {key}", value, allowed)


def _value(config: Mapping[str, object], key: str, kind: type, allowed: str, where: str) -> object:
    value = config.get(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{where} {key}", value, allowed)
    return value


def _int(config: Mapping[str, object], key: str, *, lo: int = 0, where: str = "train instruction") -> int:
    value = _value(config, key, int, f"an integer >= {lo}", where)
    assert isinstance(value, int)
    if value < lo:
        raise ConfigError(f"{where} {key}", value, f"an integer >= {lo}")
    return value


def _float(config: Mapping[str, object], key: str, where: str = "train instruction") -> float:
    value = _value(config, key, float, "a finite number", where)
    assert isinstance(value, float)
    return value


def _str(config: Mapping[str, object], key: str, allowed: str, where: str = "train instruction") -> str:
    value = _value(config, key, str, allowed, where)
    assert isinstance(value, str)
    return value


def _bool(config: Mapping[str, object], key: str, where: str = "train instruction") -> bool:
    value = _value(config, key, bool, "true or false", where)
    assert isinstance(value, bool)
    return value


# -- hello -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    """A node's answer to ``query.hello``: who it is, what it trains with, and on what device.

    ``profile``: the device profile it trains with, whole (so the server needs
    no registry entry for it); None with a ``budget`` (the server plans a
    profile that fits) or when it trains the run's plain settings. ``device``:
    its simulated device's figures (None: no device model, host figures only).
    ``num_examples``: its training samples (the planner sizes time and energy
    with them).
    """

    partition_id: int
    num_partitions: int
    profile: DeviceProfile | None
    device: DeviceModel | None = None
    budget: Budget | None = None
    num_examples: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.partition_id < self.num_partitions:
            raise ReplyError(f"partition-id {self.partition_id} is not in [0, {self.num_partitions})")
        if self.num_examples < 0:
            raise ReplyError(f"num-examples {self.num_examples} is negative")

    @staticmethod
    def query(node_id: int) -> Message:
        return Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=node_id, message_type=HELLO)

    def reply_to(self, msg: Message) -> Message:
        cfg = ConfigRecord({"partition-id": self.partition_id, "num-partitions": self.num_partitions,
                            "profile": self.profile.to_json() if self.profile is not None else "",
                            "device": self.device.to_json() if self.device is not None else "",
                            "budget": self.budget.to_json() if self.budget is not None else "",
                            "num-examples": self.num_examples})
        return Message(RecordDict({CONFIG: cfg}), reply_to=msg)

    @classmethod
    def read(cls, msg: Message) -> Hello:
        """The answer of a node, or :class:`ReplyError` naming what is wrong with it."""
        if msg.has_error():
            raise ReplyError(f"client error {msg.error.code}: {(msg.error.reason or '')[:200]}")
        if CONFIG not in msg.content.config_records:
            raise ReplyError(f"hello answer without ConfigRecord {CONFIG!r}")
        cfg = msg.content.config_records[CONFIG]
        try:
            pid = _int(cfg, "partition-id", where="hello")
            n = _int(cfg, "num-partitions", lo=1, where="hello")
            profile = _optional(cfg, "profile", DeviceProfile.from_json)
            device = _optional(cfg, "device", DeviceModel.from_json)
            budget = _optional(cfg, "budget", Budget.from_json)
            examples = _int(cfg, "num-examples", where="hello")
        except ConfigError as exc:
            raise ReplyError(str(exc)) from None
        return cls(pid, n, profile, device, budget, examples)


def _optional(cfg: Mapping[str, object], key: str, parse: Callable[[str], T]) -> T | None:
    text = _str(cfg, key, "JSON, or ''", where="hello")
    return parse(text) if text else None


# -- train instruction ------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainInstruction:
    """What the server sends a node for one round (see the module doc)."""

    server_round: int
    model_spec: ModelSpec
    training: TrainSettings
    uplink: str  # codec chain of the reply's update, canonical form
    model: ArrayRecord  # the global model or the fragment, encoded by the downlink chain
    fragment: FragmentSpec | None = None  # None: the whole model
    profile: DeviceProfile | None = None  # pruning and fake-quant of the fragment (None: neither)
    input_scaling: bool = False  # HeteroFL's scaler inside the sub-model
    nested: NestedConfig | None = None  # narrower widths to self-distil into (None: off)
    derive_masks: bool = False  # the server derives the prune masks: send their digest, not the bitmaps
    privacy: ClientPrivacy | None = None  # differential privacy: the round's clip bound and noise share
    downlink_reference: bool = False  # the client keeps the model it receives as its downlink reference
    downlink_base: int = 0  # > 0: ``deltas`` take the reference the client holds from this round to this one's
    deltas: tuple[ArrayRecord, ...] = ()  # encoded downlink deltas, in order (``model`` is then empty)
    start_seed: int | None = None  # set: build the run's starting model from this seed (``model`` is then empty)
    start_digest: int = 0  # the digest (fragments.start.state_digest) that model must have

    @property
    def width(self) -> float:
        """Width of the model the client trains, relative to the global model."""
        if self.fragment is None:
            return 1.0
        if self.fragment.width is not None:
            return self.fragment.width
        return self.profile.width if self.profile is not None else 1.0

    def to_records(self) -> RecordDict:
        cfg: dict[str, Any] = {
            "server-round": self.server_round, "model-spec": self.model_spec.to_json(),
            "uplink-chain": self.uplink, **self.training.to_values(), "input-scaling": self.input_scaling,
            "derive-masks": self.derive_masks,
        }
        if self.fragment is not None:
            cfg["fragment-spec"] = self.fragment.to_json()
        if self.profile is not None:
            cfg["profile"] = self.profile.to_json()
        if self.privacy is not None:
            cfg.update(self.privacy.to_values())
        if self.nested is not None:
            cfg.update({"nested-widths": list(self.nested.widths), "nested-temperature": self.nested.temperature,
                        "nested-weight": self.nested.weight})
        if self.downlink_reference:
            cfg.update({"downlink-reference": True, "downlink-base": self.downlink_base,
                        "downlink-deltas": len(self.deltas)})
            if self.start_seed is not None:
                cfg.update({"start-seed": self.start_seed, "start-digest": self.start_digest})
        content = RecordDict({ARRAYS: self.model, CONFIG: ConfigRecord(cfg)})
        for i, delta in enumerate(self.deltas):
            content[f"{DELTA}{i}"] = delta
        return content

    @classmethod
    def from_records(cls, content: RecordDict) -> TrainInstruction:
        """Read what :meth:`to_records` wrote; a fault raises :class:`ConfigError` naming the key.

        The settings are parsed once per distinct ConfigRecord in this process (every client of a round gets
        the same one): they are keyed by each value's type and ``repr`` as well, so a hit is exactly the
        record parsed before; the parsed objects are immutable.
        """
        if CONFIG not in content.config_records or ARRAYS not in content.array_records:
            raise instruction_error("records", sorted(content), f"a ConfigRecord {CONFIG!r} and an ArrayRecord "
                                    f"{ARRAYS!r}")
        config = content.config_records[CONFIG]
        parsed = _parse_instruction(tuple((k, type(v).__name__, repr(v), tuple(v) if isinstance(v, list) else v)
                                          for k, v in config.items()))
        count = _int(config, "downlink-deltas") if parsed.downlink_reference else 0
        if count > MAX_DELTAS or (count > 0) != (parsed.downlink_base > 0):
            raise instruction_error("downlink-deltas", count, f"at most {MAX_DELTAS}, and more than 0 exactly when "
                                    "downlink-base is")
        missing = [f"{DELTA}{i}" for i in range(count) if f"{DELTA}{i}" not in content.array_records]
        if missing:
            raise instruction_error("records", sorted(content), f"the ArrayRecords {missing[:3]}")
        return dataclasses.replace(parsed, model=content.array_records[ARRAYS],
                                   deltas=tuple(content.array_records[f"{DELTA}{i}"] for i in range(count)))

    def fragment_digest(self) -> str:
        """What the reply's update header names as its fragment ('' for the whole model)."""
        return fragment_digest(self.fragment)


@functools.lru_cache(maxsize=64)
def _parse_instruction(items: tuple[tuple[str, str, str, Any], ...]) -> TrainInstruction:
    """A TrainInstruction of a ConfigRecord's ``(key, type name, repr, value)`` items, lists as tuples, with an
    empty model (see :meth:`TrainInstruction.from_records`)."""
    cfg = {k: list(v) if kind == "list" else v for k, kind, _, v in items}
    spec = ModelSpec.from_json(_str(cfg, "model-spec", "a model spec as JSON"))
    training = TrainSettings.from_values({s.key: cfg.get(s.key) for s in TrainSettings.settings()})
    chain = ChainConfig.parse(_str(cfg, "uplink-chain", "a codec chain")).to_string()
    try:
        fragment = FragmentSpec.from_json(_str(cfg, "fragment-spec", "a fragment spec as JSON")) \
            if "fragment-spec" in cfg else None
    except DecodeError as exc:
        raise instruction_error("fragment-spec", "(not shown)", f"a valid fragment spec ({exc})") from None
    profile = DeviceProfile.from_json(_str(cfg, "profile", "a profile as JSON")) if "profile" in cfg else None
    reference = "downlink-reference" in cfg and _bool(cfg, "downlink-reference")
    seeded = reference and "start-seed" in cfg
    base = _int(cfg, "downlink-base") if reference else 0
    if seeded and base:
        raise instruction_error("start-seed", cfg["start-seed"], "absent when downlink-base is set (a client "
                                "builds the starting model only when it is sent no deltas)")
    return TrainInstruction(_int(cfg, "server-round"), spec, training, chain, ArrayRecord(), fragment, profile,
                            _bool(cfg, "input-scaling"), _read_nested(cfg), _bool(cfg, "derive-masks"),
                            ClientPrivacy.from_values(cfg), reference, base,
                            start_seed=_int(cfg, "start-seed") if seeded else None,
                            start_digest=_int(cfg, "start-digest") if seeded else 0)


def fragment_digest(fragment: FragmentSpec | None) -> str:
    """A short digest of a fragment spec ('' for the whole model)."""
    if fragment is None:
        return ""
    return hashlib.sha256(fragment.to_bytes()).hexdigest()[:16]


def _read_nested(cfg: Mapping[str, object]) -> NestedConfig | None:
    widths = cfg.get("nested-widths")
    if widths is None:
        return None
    if not isinstance(widths, list) or not widths or not all(isinstance(w, float) for w in widths):
        raise instruction_error("nested-widths", widths, "a non-empty list of numbers in (0, 1)")
    return NestedConfig(tuple(widths), temperature=_float(cfg, "nested-temperature"),
                        weight=_float(cfg, "nested-weight"))


# -- train reply --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainReply:
    """What a client sends back after training (its resource record is added last, see the ClientApp)."""

    partition_id: int
    num_examples: int
    update: ArrayRecord  # trained minus received, encoded by the instruction's uplink chain
    train_loss: float
    train_steps: int
    train_seconds: float
    masks: ArrayRecord | None = None  # prune-mask bitmaps, when the server does not derive them
    mask_digest: int | None = None  # digest of the masks applied, when it does
    dp_within: float | None = None  # differential privacy: 1 if the update fitted the bound (adaptive clipping)

    def to_message(self, reply_to: Message) -> Message:
        metrics = MetricRecord({
            "num-examples": self.num_examples, "partition-id": self.partition_id, "train-loss": self.train_loss,
            "train-steps": self.train_steps, "train-seconds": self.train_seconds,
            **({"mask-digest": self.mask_digest} if self.mask_digest is not None else {}),
            **({WITHIN_METRIC: self.dp_within} if self.dp_within is not None else {}),
        })
        content = RecordDict({ARRAYS: self.update, METRICS: metrics})
        if self.masks is not None:
            content[MASKS] = self.masks
        return Message(content, reply_to=reply_to)


@dataclass(frozen=True)
class Expected:
    """What a node's reply to one instruction must be (written by the server when it sends the instruction)."""

    server_round: int
    partition_id: int  # from the node's hello
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    chain: str  # the uplink chain, canonical
    fragment: str  # fragment_digest of what was sent
    max_reply_bytes: int  # the serialized reply may not be larger
    limits: DecodeLimits  # caps for decoding, sized to the fragment
    mask_digest: int | None = None  # set when the server derived the client's prune masks
    masks_allowed: bool = False  # whether bitmaps may come back (pruning clients that do not derive)

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    @functools.cached_property
    def flat_layout(self) -> FlatLayout | None:
        """Where the floating-point tensors sit in the flat vector, when the uplink chain is ``flat``."""
        if not chain_config(self.chain).flat:
            return None
        return FlatLayout.expected(self.shapes, self.dtypes)


@functools.lru_cache(maxsize=256)
def chain_config(chain: str) -> ChainConfig:
    """``ChainConfig.parse(chain)``, parsed once per distinct chain (instructions and replies name a few)."""
    return ChainConfig.parse(chain)



@dataclass(frozen=True)
class AcceptedReply:
    """A reply that passed every check, its update decoded (numpy, in the fragment's shapes)."""

    node_id: int
    partition_id: int
    num_examples: int  # as claimed; the strategy decides the weight it accepts
    update: dict[str, np.ndarray]
    support: dict[str, np.ndarray]  # key -> bool mask of the values actually sent (sparse uplinks only)
    masks: dict[str, np.ndarray]  # key -> bool prune mask the client applied (bitmaps it sent), if any
    metrics: dict[str, float]
    resources: ResourceRecord | None
    nbytes: int
    mask_digest: int | None = field(default=None)


_REQUIRED_METRICS = {"num-examples": int, "partition-id": int, "train-loss": float, "train-steps": int,
                     "train-seconds": float}


def _check_metrics(metrics: Mapping[str, object], expected: Expected) -> dict[str, float]:
    """Every metric a finite int or float; the required ones present and sane; ints as ints."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in (WIRE_INTS, WIRE_FLOATS) and isinstance(value, list):  # the resource record's two lists
            if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise ReplyError(f"metric {key!r} holds a value that is not a finite number")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ReplyError(f"metric {key!r} is {str(value)[:80]}, not a finite number")
        out[key] = value
    for key, kind in _REQUIRED_METRICS.items():
        value = metrics.get(key)
        if value is None or (kind is int and not isinstance(value, int)):
            raise ReplyError(f"metric {key!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if out["num-examples"] < 1:
        raise ReplyError(f"num-examples must be >= 1, got {metrics['num-examples']!r}")
    if out["partition-id"] != expected.partition_id:
        raise ReplyError(f"partition-id {metrics['partition-id']!r} is not {expected.partition_id}, the partition "
                         "this node said it holds")
    if out["train-steps"] < 0 or out["train-seconds"] < 0:
        raise ReplyError("train-steps and train-seconds must be >= 0")
    return out


def _check_headers(record: ArrayRecord, expected: Expected) -> list[ParsedTensor]:
    """Names, shapes, dtypes, chain, round and fragment of the update, before anything is decoded."""
    header, parsed = parse_record(record, expected.limits)
    if header is None:
        raise ReplyError(f"update record has no header {UPDATE_KEY!r}")
    if header.direction != "uplink" or header.round != expected.server_round:
        raise ReplyError(f"update header says {header.direction} round {header.round}, expected uplink round "
                         f"{expected.server_round}")
    if header.chain != expected.chain:
        raise ReplyError(f"update encoded with chain {header.chain[:80]!r}, the instruction said {expected.chain!r}")
    if header.fragment != expected.fragment:
        raise ReplyError("update header names another fragment than the one sent")
    got = {p.name: p for p in parsed}
    flat = expected.flat_layout
    if flat is not None and flat.names:  # the floating-point tensors travel as one vector
        p = got.pop(FLAT_KEY, None)
        if p is None or not header.HasField("flat_layout") or header.flat_layout != flat.digest:
            raise ReplyError(f"a flat chain's update must carry {FLAT_KEY!r} with the layout of the fragment sent")
        if p.shape != (flat.numel,) or p.dtype != "float32":
            raise ReplyError(f"flat update is {p.dtype}{list(p.shape)}, expected float32[{flat.numel}]")
        check_chain(p, expected.chain)
        got.update({name: p for name in flat.names})  # checked against the fragment's names below
    elif header.HasField("flat_layout"):
        raise ReplyError("update header has a flat layout, but the chain sent is not flat")
    if set(got) != set(expected.shapes):
        missing, extra = sorted(set(expected.shapes) - set(got)), sorted(set(got) - set(expected.shapes))
        raise ReplyError(f"tensor names differ from what was sent: missing {missing[:3]}, extra {extra[:3]}")
    for key, p in got.items():
        if p.name == FLAT_KEY:
            continue
        if p.shape != tuple(expected.shapes[key]) or p.dtype != expected.dtypes[key]:
            raise ReplyError(f"tensor {key!r} is {p.dtype}{list(p.shape)}, sent {expected.dtypes[key]}"
                             f"{list(expected.shapes[key])}")
        check_chain(p, expected.chain)  # every stage and option, as the chain applies to this dtype
    return parsed


def _decode(record: ArrayRecord, expected: Expected) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    update: dict[str, np.ndarray] = {}
    support: dict[str, np.ndarray] = {}
    try:
        for p in _check_headers(record, expected):
            values, sent = decode_parsed_array(p)  # the decoder refuses non-finite floats
            if p.name == FLAT_KEY:
                assert expected.flat_layout is not None
                update.update(expected.flat_layout.split(values))
                if sent is not None:
                    support.update(expected.flat_layout.split(sent))
                continue
            update[p.name] = values
            if sent is not None:
                support[p.name] = sent
    except DecodeError as exc:
        raise ReplyError(str(exc)) from exc
    return update, support


def read_train_reply(msg: Message, expected: Expected, *, nbytes: int) -> AcceptedReply:
    """Check a reply against what was sent, then decode it; raise :class:`ReplyError` naming the first fault."""
    if msg.has_error():
        raise ReplyError(f"client error {msg.error.code}: {(msg.error.reason or '')[:200]}")
    if nbytes > expected.max_reply_bytes:
        raise ReplyError(f"reply of {nbytes} bytes is over the cap of {expected.max_reply_bytes} for this fragment "
                         "and chain (max-reply-bytes)")
    content = msg.content
    allowed = {ARRAYS, METRICS} | ({MASKS} if expected.masks_allowed else set())
    if set(content) - allowed or ARRAYS not in content.array_records or METRICS not in content.metric_records:
        raise ReplyError(f"reply records {sorted(content)}; expected {sorted(allowed)}")
    raw = content.metric_records[METRICS]
    metrics = _check_metrics(raw, expected)  # the scalars (the resource record's lists are read below)
    resources = ResourceRecord.from_metrics(raw) if ResourceRecord.present_in(raw) else None
    digest = metrics.get("mask-digest")
    if expected.mask_digest is not None and digest != expected.mask_digest:
        raise ReplyError(f"mask-digest {digest!r} is not {expected.mask_digest}, the digest of the prune masks "
                         "derived from the fragment sent")
    update, support = _decode(content.array_records[ARRAYS], expected)
    masks = _read_masks(content, expected, update)
    return AcceptedReply(msg.metadata.src_node_id, expected.partition_id, int(metrics["num-examples"]), update,
                         support, masks, metrics, resources, nbytes, None if digest is None else int(digest))


def _read_masks(content: RecordDict, expected: Expected, update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if MASKS not in content.array_records:
        return {}
    try:
        decoded = decode_masks(content.array_records[MASKS], limits=expected.limits)
    except DecodeError as exc:
        raise ReplyError(f"masks: {exc}") from exc
    out: dict[str, np.ndarray] = {}
    for key, mask in decoded.items():
        if key not in update or tuple(mask.shape) != update[key].shape:
            raise ReplyError(f"mask {key!r} does not match a tensor of the fragment")
        out[key] = mask.numpy().astype(bool)
    return out
