"""Carriage in Flower: encoded tensors inside ``ArrayRecord``s, and byte accounting.

Public API::

    STYPE = "fedshrink.v1"; UPDATE_KEY = "_fedshrink_update"
    encode_state(state: Mapping[str, Tensor], chain: Chain | str, *, residuals: ResidualStore | None = None,
                 fragment: str = "", round: int = 0, direction: str = "uplink",
                 rng: np.random.Generator | None = None) -> tuple[ArrayRecord, int]
    decode_record(record: ArrayRecord, *, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, Tensor]
    decode_like(record, like: Mapping[str, Tensor] | None, *, limits=DEFAULT_LIMITS) -> dict[str, Tensor]
    FlatLayout.of(state) / FlatLayout.expected(shapes, dtypes); layout.digest, .join(state), .split(flat)
    parse_record(record, limits=DEFAULT_LIMITS) -> (TensorUpdate | None, list[ParsedTensor])  # headers only
    check_chain(parsed: ParsedTensor, chain: Chain | ChainConfig | str) -> None   # DecodeError if not
    decode_parsed(parsed) -> Tensor; decode_parsed_with_support(parsed) -> (Tensor, bool ndarray | None)
    decode_all_with_support(parsed: Sequence[ParsedTensor]) -> dict[str, (Tensor, bool ndarray | None)]
    decode_with_support(record, limits=DEFAULT_LIMITS) -> dict[str, (Tensor, bool ndarray | None)]
    read_update(record, *, limits=DEFAULT_LIMITS) -> DecodedUpdate   # header + tensors
    decode_reply(message: Message, *, key: str = "arrays", limits=DEFAULT_LIMITS) -> dict[str, Tensor]
    message_nbytes(message: Message, *, mode: str = "proto") -> int
    recorddict_nbytes(content: RecordDict) -> int ; arrayrecord_nbytes(record) ; array_nbytes(array)

Each tensor is one ``flwr.app.Array(dtype=<original dtype>, shape=<original shape>,
stype="fedshrink.v1", data=<serialized CompressedTensor>)`` keyed by its name;
the optional :class:`~fedshrink.v1.compression_pb2.TensorUpdate` header (fragment,
round, chain, direction, tensor names) sits under ``UPDATE_KEY`` with stype
``fedshrink.v1.update``. Both directions use the same functions: the server
encodes its downlink model with its own chain (usually without residuals).

:func:`decode_record` first parses and validates every header of the record
(stypes, names, shapes against the Array metadata, declared sizes against the
per-tensor and per-record caps, header names = keys) and only then decodes
payloads; a fault raises :class:`~fedshrink.errors.DecodeError`. A reply that is
an error message or lacks the record raises :class:`~fedshrink.errors.ReplyError`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import serde as flwr_serde
from flwr.common.serde import message_to_proto
from google.protobuf.message import DecodeError as ProtoDecodeError

from fedshrink.compression.chain import Chain, ChainConfig
from fedshrink.compression.errorfeedback import ResidualStore
from fedshrink.compression.wire import (
    DEFAULT_LIMITS,
    DTYPES,
    FLOAT_DTYPES,
    TORCH_TO_NAME,
    DecodeLimits,
    EncodedTensor,
    ParsedTensor,
    decode_parsed,
    decode_parsed_with_support,
    parse_tensor,
)
from fedshrink.errors import ConfigError, DecodeError, ReplyError
from fedshrink.v1 import compression_pb2 as pb

STYPE = "fedshrink.v1"
UPDATE_STYPE = "fedshrink.v1.update"
UPDATE_KEY = "_fedshrink_update"
FLAT_KEY = "_flat"  # the flat vector of a ``flat`` chain's update (FlatLayout)
FORMAT_VERSION = 1
DIRECTIONS = ("uplink", "downlink")


@dataclass(frozen=True)
class DecodedUpdate:
    fragment: str
    round: int
    chain: str
    direction: str
    tensors: dict[str, torch.Tensor]


@dataclass(frozen=True)
class FlatLayout:
    """Where each floating-point tensor of an update sits in the flat vector of a ``flat`` chain.

    ``FlatLayout.of(state)`` from tensors, ``FlatLayout.expected(shapes, dtypes)`` from what a reply must
    hold; ``digest`` is what the update header carries (proto/fedshrink/v1/compression.proto, section 1).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    offsets: dict[str, int]  # name -> first element in the flat vector
    numel: int

    @classmethod
    def expected(cls, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str]) -> FlatLayout:
        """The floating-point tensors of ``shapes`` (in order) with their ``dtypes`` names."""
        names = tuple(k for k in shapes if dtypes[k] in FLOAT_DTYPES)
        return cls._build(names, tuple(tuple(int(d) for d in shapes[k]) for k in names),
                          tuple(dtypes[k] for k in names))

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> FlatLayout:
        names = tuple(k for k, v in state.items() if v.is_floating_point())
        return cls._build(names, tuple(tuple(int(d) for d in state[k].shape) for k in names),
                          tuple(TORCH_TO_NAME[state[k].dtype] for k in names))

    @classmethod
    def _build(cls, names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...], dtypes: tuple[str, ...]) -> FlatLayout:
        offsets, at = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            offsets[name] = at
            at += math.prod(shape)
        return cls(names, shapes, dtypes, offsets, at)

    @functools.cached_property
    def digest(self) -> int:
        text = json.dumps([[n, list(s), d] for n, s, d in zip(self.names, self.shapes, self.dtypes, strict=True)])
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")

    def join(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The float32 flat vector of ``state``'s floating-point tensors."""
        return torch.cat([state[k].detach().reshape(-1).to(torch.float32) for k in self.names])

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """``flat`` (numel values) back into the tensors, each in its shape and dtype (views where float32)."""
        out: dict[str, np.ndarray] = {}
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            at = self.offsets[name]
            part = flat[at: at + math.prod(shape)].reshape(shape)
            out[name] = part if dtype == "float32" or part.dtype == bool else _cast(part, dtype)
        return out


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as ``dtype`` (round to nearest even), as the wire's step 7 casts them."""
    if dtype == "bfloat16":  # numpy has no bfloat16: keep the values torch rounds to, as float32
        return torch.from_numpy(np.ascontiguousarray(values)).to(torch.bfloat16).to(torch.float32).numpy()
    return values.astype(DTYPES[dtype][0])


def to_array(enc: EncodedTensor) -> Array:
    """An encoded tensor as a Flower Array with fedshrink's stype."""
    return Array(dtype=enc.dtype, shape=enc.shape, stype=STYPE, data=enc.data)


def encode_state(
    state: Mapping[str, torch.Tensor],
    chain: Chain | str,
    *,
    residuals: ResidualStore | None = None,
    fragment: str = "",
    round: int = 0,
    direction: str = "uplink",
    rng: np.random.Generator | None = None,
) -> tuple[ArrayRecord, int]:
    """Encode a state dict (or update) into an ArrayRecord; return it and its wire bytes.

    With ``residuals``, error feedback wraps the chain (and updates the store).
    The byte count is the sum of the serialized payloads (tensors + header) that
    the record carries; :func:`message_nbytes` measures the whole message.
    """
    chain = Chain(chain) if isinstance(chain, str) else chain
    if direction not in DIRECTIONS:
        raise ConfigError("direction", direction, "one of 'uplink', 'downlink'")
    if not isinstance(round, int) or round < 0:
        raise ConfigError("round", round, "an integer >= 0")
    if UPDATE_KEY in state:
        raise ConfigError("state key", UPDATE_KEY, "any tensor name but the reserved header key")
    if FLAT_KEY in state:
        raise ConfigError("state key", FLAT_KEY, "any tensor name but the reserved flat key")
    rng = np.random.default_rng() if rng is None else rng
    record = ArrayRecord()
    total = 0
    flat = FlatLayout.of(state) if chain.config.flat else None
    items = [(k, v) for k, v in state.items() if flat is None or k not in flat.offsets]
    if flat is not None and flat.names:
        items.append((FLAT_KEY, flat.join(state)))
    for name, tensor in items:
        if residuals is not None:
            enc, _ = residuals.encode(chain, name, tensor, rng=rng)
        else:
            enc = chain.encode(name, tensor, rng=rng)
        record[name] = to_array(enc)
        total += enc.nbytes
    header = pb.TensorUpdate(
        format_version=FORMAT_VERSION,
        fragment=fragment,
        round=round,
        chain=chain.config.to_string(),
        tensor_names=[name for name, _ in items],
        direction=direction,
    )
    if flat is not None and flat.names:
        header.flat_layout = flat.digest
    data = header.SerializeToString()
    record[UPDATE_KEY] = Array(dtype="uint8", shape=(len(data),), stype=UPDATE_STYPE, data=data)
    return record, total + len(data)


def _parse_header(arr: Array, limits: DecodeLimits) -> pb.TensorUpdate:
    if arr.stype != UPDATE_STYPE:
        raise DecodeError(UPDATE_KEY, f"stype {arr.stype!r}, expected {UPDATE_STYPE!r}")
    data = arr.data
    if not isinstance(data, bytes) or len(data) > limits.max_tensors * (limits.max_name_len + 8) + 4096:
        raise DecodeError(UPDATE_KEY, "update header missing or over its size cap")
    header = pb.TensorUpdate()
    try:
        header.ParseFromString(data)
    except (ProtoDecodeError, RuntimeError, ValueError):
        raise DecodeError(UPDATE_KEY, "malformed TensorUpdate") from None
    if header.format_version != FORMAT_VERSION:
        raise DecodeError(UPDATE_KEY, f"unsupported format version {header.format_version}")
    if header.direction not in DIRECTIONS:
        raise DecodeError(UPDATE_KEY, f"unknown direction {header.direction[:20]!r}")
    return header


def parse_record(
    record: ArrayRecord, limits: DecodeLimits = DEFAULT_LIMITS
) -> tuple[pb.TensorUpdate | None, list[ParsedTensor]]:
    """First phase of decoding a record: validate every header, decompress nothing.

    Returns the update header (None if the record has none) and one
    :class:`ParsedTensor` per tensor, in record order, each with its name, shape,
    dtype, numel and applied ``chain``, so a caller can check them all against what
    it expects (see :func:`check_chain`) before it decodes any payload with
    :func:`decode_parsed` or :func:`decode_parsed_with_support`. Raises DecodeError.
    """
    if not isinstance(record, ArrayRecord):
        raise DecodeError("<record>", f"expected an ArrayRecord, got {type(record).__name__}")
    if len(record) > limits.max_tensors + 1:
        raise DecodeError("<record>", f"{len(record)} arrays exceed the cap of {limits.max_tensors}")
    size = sum(len(arr.data) if isinstance(arr.data, bytes) else 0 for arr in record.values())
    if size > limits.max_record_bytes:
        raise DecodeError("<record>", f"{size} bytes exceed the cap of {limits.max_record_bytes}")
    header = _parse_header(record[UPDATE_KEY], limits) if UPDATE_KEY in record else None
    parsed: list[ParsedTensor] = []
    total = 0
    for key, arr in record.items():
        if key == UPDATE_KEY:
            continue
        if arr.stype != STYPE:
            raise DecodeError(key, f"stype {str(arr.stype)[:40]!r}, expected {STYPE!r}")
        p = parse_tensor(arr.data, name=key, limits=limits)
        if tuple(arr.shape) != p.shape or arr.dtype != p.dtype:
            raise DecodeError(
                key, f"Array says {arr.dtype}{list(arr.shape)}, header says {p.dtype}{list(p.shape)}"
            )
        total += p.numel
        if total > limits.max_total_numel:
            raise DecodeError(key, f"record exceeds the cap of {limits.max_total_numel} elements in total")
        parsed.append(p)
    if header is not None and list(header.tensor_names) != [p.name for p in parsed]:
        raise DecodeError(UPDATE_KEY, "tensor names in the header do not match the record")
    return header, parsed


def decode_with_support(
    record: ArrayRecord, limits: DecodeLimits = DEFAULT_LIMITS
) -> dict[str, tuple[torch.Tensor, npt.NDArray[np.bool_] | None]]:
    """Every tensor of a record with the mask of the elements actually sent (None for dense tensors)."""
    _, parsed = parse_record(record, limits)
    return decode_all_with_support(parsed)


def decode_record(record: ArrayRecord, *, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    """Decode every tensor of a record (validating all headers first); raise DecodeError."""
    _, parsed = parse_record(record, limits)
    return {p.name: decode_parsed(p) for p in parsed}


def decode_like(record: ArrayRecord, like: Mapping[str, torch.Tensor] | None, *,
                limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    """Decode a record whose flat vector, if it has one, is split along the tensors of ``like`` (a downlink
    delta, along the reference the receiver holds); DecodeError when the header's layout is not ``like``'s."""
    header, parsed = parse_record(record, limits)
    out = {p.name: decode_parsed(p) for p in parsed}
    flat = out.pop(FLAT_KEY, None)
    if header is not None and header.HasField("flat_layout"):
        if flat is None or like is None:
            raise DecodeError(FLAT_KEY, "a flat vector needs the tensors it splits into (none are held)")
        layout = FlatLayout.of(like)
        if header.flat_layout != layout.digest or flat.shape != (layout.numel,):
            raise DecodeError(FLAT_KEY, "the flat vector's layout is not that of the tensors held")
        out.update({k: torch.from_numpy(v) for k, v in layout.split(flat.numpy()).items()})
    elif flat is not None:
        raise DecodeError(FLAT_KEY, "a flat vector without its layout in the header")
    return out


def decode_all_with_support(
    parsed: Sequence[ParsedTensor],
) -> dict[str, tuple[torch.Tensor, npt.NDArray[np.bool_] | None]]:
    """Second phase for tensors from :func:`parse_record`: (values, support) keyed by name."""
    return {p.name: decode_parsed_with_support(p) for p in parsed}


def check_chain(parsed: ParsedTensor, chain: Chain | ChainConfig | str) -> None:
    """Raise DecodeError unless ``parsed`` was encoded with ``chain`` (as applied to its dtype and dims)."""
    config = chain.config if isinstance(chain, Chain) else chain
    expected = _applied_chain(config, parsed.dtype, len(parsed.shape))
    if parsed.chain != expected:
        raise DecodeError(parsed.name, f"encoded with chain {parsed.chain!r}, expected {expected!r}")


@functools.lru_cache(maxsize=1024)
def _applied_chain(config: ChainConfig | str, dtype: str, ndim: int) -> str:
    """``config`` as applied to a tensor of ``dtype`` and ``ndim`` dims, as the wire names it (made once)."""
    config = ChainConfig.parse(config) if isinstance(config, str) else config
    return config.for_tensor(dtype, ndim).to_string()


def read_update(record: ArrayRecord, *, limits: DecodeLimits = DEFAULT_LIMITS) -> DecodedUpdate:
    """Like :func:`decode_record`, and also return the update header (required here)."""
    header, parsed = parse_record(record, limits)
    if header is None:
        raise DecodeError(UPDATE_KEY, "record has no update header")
    tensors = {p.name: decode_parsed(p) for p in parsed}
    return DecodedUpdate(header.fragment, header.round, header.chain, header.direction, tensors)


def decode_reply(
    message: Message, *, key: str = "arrays", limits: DecodeLimits = DEFAULT_LIMITS
) -> dict[str, torch.Tensor]:
    """Decode the compressed ArrayRecord ``key`` of a reply to torch tensors, or raise."""
    if message.has_error():
        raise ReplyError(f"reply is an error: {message.error.code} {(message.error.reason or '')[:200]}")
    content = message.content
    if key not in content:
        raise ReplyError(f"reply has no record {key!r} (has {sorted(content)})")
    record = content[key]
    if not isinstance(record, ArrayRecord):
        raise ReplyError(f"reply record {key!r} is a {type(record).__name__}, not an ArrayRecord")
    return decode_record(record, limits=limits)


def recorddict_nbytes(content: RecordDict) -> int:
    """Serialized size of a RecordDict (Flower's own protobuf serde), exactly.

    ArrayRecords are sized from their arrays' lengths (protobuf's field arithmetic, no copy of the
    payloads); the small metric and config records are serialized. Equal to
    ``recorddict_to_proto(content).ByteSize()`` (tested).
    """
    return sum(recorddict_item_nbytes(key, record_nbytes(record)) for key, record in content.items())


def record_nbytes(record: ArrayRecord | MetricRecord | ConfigRecord) -> int:
    """Serialized size of one record of a RecordDict (see :func:`recorddict_nbytes`)."""
    if isinstance(record, ArrayRecord):
        return arrayrecord_nbytes(record)
    if isinstance(record, MetricRecord):
        return _values_nbytes(record, _METRIC_TYPES)
    if isinstance(record, ConfigRecord):
        return _values_nbytes(record, _CONFIG_TYPES)
    raise ValueError(f"Unsupported record type: {type(record)}")


# Flower's serde (flwr.common.serde_utils) writes each value of a MetricRecord or ConfigRecord as the first of
# these types it is an instance of (bool first in a ConfigRecord; in a MetricRecord a bool is an int), a list
# as a list of the first type all its items are; an int above int64's range as uint64, else as sint64.
_METRIC_TYPES: tuple[type, ...] = (float, int)
_CONFIG_TYPES: tuple[type, ...] = (bool, float, int, str, bytes)
_INT64_MAX = 2**63 - 1


def _values_nbytes(record: MetricRecord | ConfigRecord, types: tuple[type, ...]) -> int:
    """Serialized size of a MetricRecord or ConfigRecord by protobuf's arithmetic (no serialization):
    ``repeated Item items = 1`` with ``Item {string key = 1; Value value = 2}``, the value a oneof."""
    total = 0
    for key, value in record.items():
        item = _string_nbytes(key) + _field_nbytes(_value_nbytes(value, types))
        total += _field_nbytes(item)
    return total


def _value_nbytes(value: object, types: tuple[type, ...]) -> int:
    """One ``*RecordValue``: a oneof, written even when it holds a default (0, False, "", an empty list)."""
    for t in types:
        if isinstance(value, t):
            return 1 + _scalar_nbytes(value, t)
        if isinstance(value, list) and all(isinstance(v, t) for v in value):
            return 1 + _field_nbytes(_list_nbytes(value, t))  # ``*List {repeated vals = 1}``, field 21+: 2-byte tag
    raise TypeError(f"a record value of type {type(value).__name__} has no protobuf form")


def _scalar_nbytes(value: object, t: type) -> int:
    """Bytes of a scalar's body (after its one-byte tag)."""
    if t is float:
        return 8  # double
    if t is bool:
        return 1
    if t is int:
        n = int(value)  # type: ignore[call-overload]  # an int by the caller's isinstance
        return _varint_nbytes(n if n > _INT64_MAX else _zigzag(n))  # uint64 or sint64
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint_nbytes(len(data)) + len(data)  # type: ignore[arg-type]  # str or bytes


def _list_nbytes(values: list[object], t: type) -> int:
    """Bytes of a ``*List`` message: scalars packed into one field, strings and bytes one field each."""
    if not values:
        return 0
    if t is str or t is bytes:
        return sum(1 + _scalar_nbytes(v, t) for v in values)
    if t is float:
        body = 8 * len(values)
    elif t is bool:
        body = len(values)
    else:
        ints = [int(v) for v in values]  # type: ignore[call-overload]  # ints by the caller's isinstance
        unsigned = any(n > _INT64_MAX for n in ints)  # then the whole list is a UintList
        body = sum(_varint_nbytes(n if unsigned else _zigzag(n)) for n in ints)
    return _field_nbytes(body)


def _zigzag(n: int) -> int:
    """sint64's zigzag map (0, -1, 1, -2 -> 0, 1, 2, 3)."""
    return (n << 1) ^ (n >> 63)


def recorddict_item_nbytes(key: str, record_nbytes: int) -> int:
    """Bytes of one ``RecordDict.Item`` (key + one record of ``record_nbytes``) as a field of the RecordDict."""
    return _field_nbytes(_string_nbytes(key) + _field_nbytes(record_nbytes))


def arrayrecord_nbytes(record: ArrayRecord) -> int:
    """Serialized size of an ArrayRecord: per item, the key and the Array (dtype, packed shape, stype, data)."""
    total = 0
    for key, a in record.items():
        total += _field_nbytes(_string_nbytes(key) + _field_nbytes(array_nbytes(a)))
    return total


def array_nbytes(array: Array) -> int:
    """Serialized size of one Flower ``Array`` (proto3: empty fields are not written)."""
    dtype, stype, shape, data = array.dtype, array.stype, tuple(array.shape), array.data
    small = len(dtype) + len(stype) + len(shape) <= _CACHED_HEAD  # a reply is not trusted: large heads not kept
    head = _array_head_nbytes(dtype, stype, shape) if small else _array_head_nbytes.__wrapped__(dtype, stype, shape)
    return head + (_field_nbytes(len(data)) if data else 0)


_CACHED_HEAD = 64  # characters of dtype + stype plus dimensions up to which an Array's head size is cached


@functools.lru_cache(maxsize=1024)
def _array_head_nbytes(dtype: str, stype: str, shape: tuple[int, ...]) -> int:
    """An Array's bytes but its data: dtype, stype and packed shape (the same few per model, so cached)."""
    n = _string_nbytes(dtype) + _string_nbytes(stype)
    if shape:
        n += _field_nbytes(sum(10 if d < 0 else _varint_nbytes(d) for d in shape))  # packed int32
    return n


def _string_nbytes(text: str) -> int:
    """A string field with a one-byte tag (absent when empty)."""
    size = len(text.encode("utf-8"))
    return _field_nbytes(size) if size else 0


def _field_nbytes(payload: int) -> int:
    """Bytes of a length-delimited protobuf field with a one-byte tag and a ``payload``-byte body."""
    return 1 + _varint_nbytes(payload) + payload


def _varint_nbytes(n: int) -> int:
    """The size of protobuf's varint encoding of ``n`` >= 0."""
    return max(1, (n.bit_length() + 6) // 7)


def message_nbytes(message: Message, *, mode: str = "proto", content_nbytes: int | None = None) -> int:
    """Bytes of a whole Flower Message.

    ``mode="proto"``: the size of Flower's protobuf ``Message`` (metadata +
    content + error) from ``flwr.common.serde.message_to_proto``, computed
    without serializing the arrays (:func:`recorddict_nbytes`). With
    ``content_nbytes`` (the content's serialized size, measured once for
    messages that share it) the content is not sized again.
    ``mode="objects"``: the sum of the deflated objects Flower 1.42's transport
    pushes for it (message, records, arrays and array chunks, each unique object
    once); a few hundred bytes more than ``"proto"`` per message.
    """
    if mode == "proto":
        if message.has_error():
            return int(message_to_proto(message).ByteSize())
        to_proto = flwr_serde.metadata_to_proto  # type: ignore[attr-defined]  # public in serde, not in its __all__
        size = _field_nbytes(int(to_proto(message.metadata).ByteSize()))
        if message.has_content():
            size += _field_nbytes(recorddict_nbytes(message.content) if content_nbytes is None else content_nbytes)
        return size
    if mode == "objects":
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

        return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
    raise ConfigError("mode", mode, "'proto' or 'objects'")
