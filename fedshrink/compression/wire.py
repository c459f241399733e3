"""Wire format serde: one :class:`CompressedTensor` proto per tensor, and its decoder.

Public API::

    DecodeLimits(max_numel=2**26, max_total_numel=2**27, max_ndim=8, max_name_len=512,
                 max_tensor_bytes=2**30, max_tensors=4096, max_record_bytes=2**31)
    EncodedTensor(name, shape, dtype, codecs, data, raw_nbytes)   # .nbytes == len(data)
    decode_tensor(data: bytes, *, name: str | None = None,
                  limits: DecodeLimits = DEFAULT_LIMITS) -> torch.Tensor
    parse_tensor(data, *, name=None, limits=DEFAULT_LIMITS) -> ParsedTensor  # header only
    decode_parsed(parsed) -> torch.Tensor
    decode_parsed_with_support(parsed) -> (torch.Tensor, bool ndarray | None)   # sent elements
    decode_parsed_array(parsed) -> (ndarray, bool ndarray | None)   # the same as numpy, no torch tensor
    serialize_tensor(header, parts, raw_nbytes) -> bytes   # what SerializeToString writes, one copy
    plain_header(name, shape, dtype) -> bytes   # the serialized header of a stage-less tensor (cached)

Decoding is two-phase. :func:`parse_tensor` parses the header (which cannot
allocate more than its input; the payload is cut out of the top-level fields and
kept as a view of the input, not copied) and validates *everything* the header says:
name, dtype, shape (each dim and the element count against ``limits``), codec
ids and versions, stage order, every codec parameter (bits in 1..8, scale
counts, finite scales, no stray fields), the sparse header and the exact payload
length the header implies. Only then does :func:`decode_parsed` decompress
(bounded by the implied length), decode indices (in bounds, strictly increasing
by construction), decode values, reject non-finite results, and allocate the
output, whose size is the declared, capped shape. Every fault raises
:class:`~fedshrink.errors.DecodeError` naming the tensor and the fault. Nothing is
unpickled: payloads are raw little-endian bytes read with ``np.frombuffer``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from google.protobuf.message import DecodeError as ProtoDecodeError

from fedshrink.compression import bitops
from fedshrink.compression.codecs import EntropyCodec, Kind, Sparsifier, ValueCodec, lookup
from fedshrink.errors import ConfigError, DecodeError
from fedshrink.v1 import compression_pb2 as pb

UNNAMED = "<unnamed>"

#: dtype name -> (little-endian numpy dtype of its raw bytes, torch dtype)
DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "float32": ("<f4", torch.float32),
    "float64": ("<f8", torch.float64),
    "float16": ("<f2", torch.float16),
    "bfloat16": ("<i2", torch.bfloat16),
    "int64": ("<i8", torch.int64),
    "int32": ("<i4", torch.int32),
    "int16": ("<i2", torch.int16),
    "int8": ("i1", torch.int8),
    "uint8": ("u1", torch.uint8),
    "bool": ("u1", torch.bool),
}
TORCH_TO_NAME = {t: name for name, (_, t) in DTYPES.items()}
FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})


@dataclass(frozen=True)
class DecodeLimits:
    """Caps applied before any allocation (per tensor and per record)."""

    max_numel: int = 2**26  # elements of one tensor (256 MiB as float32)
    max_total_numel: int = 2**27  # elements of all tensors of one record
    max_ndim: int = 8
    max_name_len: int = 512
    max_tensor_bytes: int = 2**30  # serialized bytes of one tensor
    max_tensors: int = 4096  # tensors in one record
    max_record_bytes: int = 2**31  # serialized bytes of all tensors of one record

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"limits.{f.name}", value, "an integer >= 1")


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class EncodedTensor:
    """One encoded tensor: ``data`` is the serialized proto sent on the wire."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    codecs: tuple[str, ...]
    data: bytes = field(repr=False)
    raw_nbytes: int  # bytes of the tensor in its original dtype

    @property
    def nbytes(self) -> int:
        """Exact size on the wire (the serialized CompressedTensor)."""
        return len(self.data)

    @property
    def ratio(self) -> float:
        """Compression ratio: original bytes / wire bytes."""
        return self.raw_nbytes / max(1, self.nbytes)


@dataclass
class ParsedTensor:
    """A header that passed validation; :func:`decode_parsed` finishes the job.

    ``proto`` is the header without its payload; ``payload`` is a zero-copy view of
    the payload bytes in the caller's buffer. ``codecs`` are the wire codec ids in
    encode order and ``chain`` the canonical chain string of the stages as they were
    applied to this tensor (for example ``"topk:0.1|quant:4|zlib:6"``; ``"raw"`` for
    none); compare it with :meth:`~fedshrink.compression.chain.ChainConfig.for_tensor`
    of the chain asked for (:func:`~fedshrink.compression.flower.check_chain`).
    """

    proto: pb.CompressedTensor
    payload: memoryview
    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    codecs: tuple[str, ...]
    chain: str
    sparsifier: pb.CodecStage | None
    value: tuple[ValueCodec, pb.CodecStage] | None
    entropy: tuple[EntropyCodec, pb.CodecStage] | None
    groups: int
    per_group: int
    group_axis: int | None
    index_nbytes: int
    value_nbytes: int

    @property
    def codec_ids(self) -> tuple[str, ...]:
        """The codecs of the tensor's chain, in encode order (the same as ``codecs``)."""
        return self.codecs


def _fault(name: str, fault: str) -> DecodeError:
    return DecodeError(name, fault)


# --------------------------------------------------------------------------- serialization

PAYLOAD_FIELD = 6  # CompressedTensor.payload
RAW_NBYTES_FIELD = 7  # CompressedTensor.raw_nbytes
#: a CompressedTensor has at most ~20 top-level fields (8 unpacked dims, 3 stages); more goes the slow way
MAX_SCANNED_FIELDS = 32


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def serialize_tensor(
    header: pb.CompressedTensor | bytes, parts: Sequence[bytes | memoryview], raw_nbytes: int
) -> bytes:
    """``header`` (no payload, no raw_nbytes) with ``payload = b"".join(parts)``, serialized.

    Byte for byte what ``SerializeToString`` writes for the whole message (fields in
    number order; proto3 omits an empty payload and a zero raw_nbytes), with the
    payload copied once instead of three times. ``header`` may be given already
    serialized (:func:`plain_header`).
    """
    size = sum(len(p) for p in parts)
    out: list[bytes | memoryview] = [header if isinstance(header, bytes) else header.SerializeToString()]
    if size:
        out += [_varint(PAYLOAD_FIELD << 3 | 2), _varint(size), *parts]
    if raw_nbytes:
        out += [_varint(RAW_NBYTES_FIELD << 3), _varint(raw_nbytes)]
    return b"".join(out)


@functools.lru_cache(maxsize=4096)
def plain_header(name: str, shape: tuple[int, ...], dtype: str) -> bytes:
    """The serialized header of a tensor sent as it is (no codec stage): the same every round, made once."""
    return pb.CompressedTensor(name=name, shape=shape, dtype=dtype).SerializeToString()


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    if pos < len(data) and data[pos] < 0x80:  # tags and short lengths: one byte
        return data[pos], pos + 1
    value = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("bad varint")


def _split_payload(data: memoryview) -> tuple[bytes, memoryview] | None:
    """(the message without its payload field, a view of the payload), or None if unusual.

    Scans the top-level protobuf fields only; any payload field (the last one
    wins, as in protobuf) is cut out, everything else is left for protobuf to parse.
    None (malformed, group wire types, too many fields) sends the caller to a full parse.
    """
    pos, keep_from, n = 0, 0, len(data)
    kept: list[memoryview] = []
    payload = data[0:0]
    try:
        for _ in range(MAX_SCANNED_FIELDS):
            if pos >= n:
                break
            start = pos
            tag, pos = _read_varint(data, pos)
            wire_type = tag & 7
            if wire_type == 0:
                pos = _read_varint(data, pos)[1]
            elif wire_type == 2:
                length, pos = _read_varint(data, pos)
                if tag >> 3 == PAYLOAD_FIELD and pos + length <= n:
                    kept.append(data[keep_from:start])
                    payload, keep_from = data[pos : pos + length], pos + length
                pos += length
            else:
                pos += {1: 8, 5: 4}.get(wire_type, n + 1)
        else:
            return None
    except ValueError:
        return None
    if pos != n:
        return None
    kept.append(data[keep_from:])
    return b"".join(kept), payload


def _parse_proto(data: bytes | bytearray | memoryview, label: str,
                 split: tuple[bytes, memoryview] | None) -> tuple[pb.CompressedTensor, memoryview]:
    ct = pb.CompressedTensor()
    try:
        if split is None:  # the slow way: protobuf parses (and copies) everything
            ct.ParseFromString(bytes(data))
            payload = memoryview(ct.payload)
            ct.ClearField("payload")
        else:
            ct.ParseFromString(split[0])
            payload = split[1]
    except (ProtoDecodeError, RuntimeError, ValueError) as exc:
        raise _fault(label, f"malformed CompressedTensor ({str(exc)[:80]})") from None
    return ct, payload


# --------------------------------------------------------------------------- phase 1: header


def parse_tensor(
    data: bytes, *, name: str | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> ParsedTensor:
    """Parse and fully validate a serialized CompressedTensor header (see module doc).

    ``name``, when given, is what the tensor must be called (the record key). The
    payload is not copied: the result holds a view of ``data``.
    """
    label = name if name is not None else UNNAMED
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fault(label, f"payload is {type(data).__name__}, not bytes")
    if len(data) > limits.max_tensor_bytes:
        raise _fault(label, f"{len(data)} bytes exceed the cap of {limits.max_tensor_bytes}")
    split = _split_payload(memoryview(data).cast("B"))
    key = (split[0], name, limits) if split is not None else None
    seen = _VALIDATED.get(key) if key is not None else None
    if seen is not None and split is not None:  # this very header passed before: only the payload is new
        return _with_payload(seen, split[1])
    ct, payload = _parse_proto(data, label, split)
    if len(ct.name) > limits.max_name_len:
        raise _fault(label, f"name longer than {limits.max_name_len}")
    if name is not None and ct.name != name:
        raise _fault(label, f"header names tensor {ct.name[:80]!r}")
    label = ct.name if name is None else name
    try:
        parsed = _validate(ct, payload, label, limits)
    except ValueError as exc:
        raise _fault(label, str(exc)) from None
    if key is not None and len(key[0]) <= MAX_REMEMBERED_HEADER:
        if len(_VALIDATED) >= MAX_REMEMBERED:
            _VALIDATED.clear()
        _VALIDATED[key] = dataclasses.replace(parsed, payload=memoryview(b""))  # holds no message's bytes
    return parsed


#: headers that passed :func:`_validate`, by (header bytes without the payload, name asked for, limits). A
#: header is a pure function of those, so a repeat (a raw tensor's header is the same every round) skips the
#: parse and the checks; the payload's length is still checked against what the header implies.
_VALIDATED: dict[tuple[bytes, str | None, DecodeLimits], ParsedTensor] = {}
MAX_REMEMBERED = 4096
MAX_REMEMBERED_HEADER = 1024  # bytes: per-channel scales make long headers that rarely repeat


def _with_payload(seen: ParsedTensor, payload: memoryview) -> ParsedTensor:
    """A validated header with this message's payload (checked against the length the header implies)."""
    if seen.entropy is None:
        try:
            _check_payload_length(payload, seen.index_nbytes + seen.value_nbytes)
        except ValueError as exc:
            raise _fault(seen.name, str(exc)) from None
    parsed = copy.copy(seen)
    parsed.payload = payload
    return parsed


def _check_shape(ct: pb.CompressedTensor, limits: DecodeLimits) -> tuple[tuple[int, ...], int]:
    if ct.dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {ct.dtype[:40]!r}")
    if len(ct.shape) > limits.max_ndim:
        raise ValueError(f"{len(ct.shape)} dims exceed the cap of {limits.max_ndim}")
    shape = tuple(int(d) for d in ct.shape)
    numel = 1
    for d in shape:
        if d > limits.max_numel:
            raise ValueError(f"dim {d} exceeds the cap of {limits.max_numel} elements")
        numel *= d
    if numel > limits.max_numel:
        raise ValueError(f"shape {shape} has {numel} elements, over the cap of {limits.max_numel}")
    return shape, numel


_Stages = tuple[
    pb.CodecStage | None, tuple[ValueCodec, pb.CodecStage] | None, tuple[EntropyCodec, pb.CodecStage] | None, str
]


def _check_stages(ct: pb.CompressedTensor) -> _Stages:
    """Codec ids, versions, order and parameters; (sparsifier, value, entropy, applied chain)."""
    sparsifier: pb.CodecStage | None = None
    value: tuple[ValueCodec, pb.CodecStage] | None = None
    entropy: tuple[EntropyCodec, pb.CodecStage] | None = None
    order = {Kind.SPARSIFY: 0, Kind.VALUE: 1, Kind.ENTROPY: 2}
    last = -1
    applied: list[str] = []
    for stage in ct.stages:
        cls = lookup(stage.codec, stage.version)
        rank = order[cls.kind]
        if rank <= last:
            raise ValueError(f"codec {stage.codec} out of order in the chain")
        last = rank
        try:
            applied.append(cls.config_from_stage(stage).to_string())
        except ConfigError as exc:
            raise ValueError(f"{stage.codec} stage parameters: {exc}") from None
        codec = cls()
        if isinstance(codec, Sparsifier):
            codec.check_fields(stage)
            if not (0.0 < stage.ratio <= 1.0):
                raise ValueError(f"sparsifier ratio {stage.ratio} outside (0, 1]")
            sparsifier = stage
        elif isinstance(codec, ValueCodec):
            value = (codec, stage)
        elif isinstance(codec, EntropyCodec):
            codec.check_fields(stage)
            entropy = (codec, stage)
    return sparsifier, value, entropy, "|".join(applied) or "raw"


def _check_sparse(ct: pb.CompressedTensor, numel: int) -> tuple[int, int]:
    """(count of kept values, index section bytes) of a sparse header."""
    sp = ct.sparse
    if sp.count > numel:
        raise ValueError(f"{sp.count} sparse values for {numel} elements")
    if sp.rice_bits and sp.encoding != pb.INDEX_ENCODING_RICE:
        raise ValueError("rice_bits set on an index encoding other than RICE")
    if sp.encoding == pb.INDEX_ENCODING_RICE:
        b = sp.rice_bits
        if b > bitops.MAX_RICE_BITS:
            raise ValueError(f"Rice parameter {b} outside 0..{bitops.MAX_RICE_BITS}")
        remainders = bitops.packed_nbytes(sp.count, b)
        low = bitops.packed_nbytes(sp.count, 1) + remainders
        high = bitops.packed_nbytes(sp.count + (numel >> b), 1) + remainders
        if not low <= sp.nbytes <= high:
            raise ValueError(f"{sp.nbytes} Rice bytes for {sp.count} indices of {numel} elements")
    elif sp.encoding == pb.INDEX_ENCODING_BITMAP:
        if sp.nbytes != bitops.packed_nbytes(numel, 1):
            raise ValueError(f"bitmap of {sp.nbytes} bytes for {numel} elements")
    elif sp.encoding == pb.INDEX_ENCODING_DELTA_VARINT:
        if not sp.count <= sp.nbytes <= bitops.MAX_VARINT_BYTES * sp.count:
            raise ValueError(f"{sp.nbytes} varint bytes for {sp.count} indices")
    else:
        raise ValueError(f"unknown index encoding {sp.encoding}")
    return sp.count, sp.nbytes


def _check_groups(
    value: tuple[ValueCodec, pb.CodecStage], shape: tuple[int, ...], count: int, sparse: bool
) -> tuple[int, int, int | None, int]:
    """(groups G, values per group N, grouping axis, value section bytes) of a value stage."""
    codec, stage = value
    groups, per_group, group_axis = 1, count, None
    if stage.HasField("axis"):
        if sparse:
            raise ValueError("per-channel axis on sparse values")
        if not 0 <= stage.axis < len(shape):
            raise ValueError(f"axis {stage.axis} out of range for {len(shape)} dims")
        group_axis = stage.axis
        groups = shape[group_axis]
        per_group = count // groups if groups else 0
    return groups, per_group, group_axis, codec.check_stage(stage, groups, per_group)


def _check_payload_length(payload: memoryview, expected: int) -> None:
    """A payload without an entropy stage is exactly as long as its header implies; ValueError otherwise."""
    if len(payload) != expected:
        kind = "truncated" if len(payload) < expected else "oversized"
        raise ValueError(f"{kind} payload: {len(payload)} bytes, header implies {expected}")


def _validate(ct: pb.CompressedTensor, payload: memoryview, label: str, limits: DecodeLimits) -> ParsedTensor:
    shape, numel = _check_shape(ct, limits)
    sparsifier, value, entropy, chain = _check_stages(ct)
    is_float = ct.dtype in FLOAT_DTYPES
    if sparsifier is not None and not is_float:
        raise ValueError(f"sparsifier on a {ct.dtype} tensor")
    if value is not None and not (is_float or (ct.dtype == "bool" and value[0].accepts_bool)):
        raise ValueError(f"codec {value[0].codec_id} on a {ct.dtype} tensor")
    if (sparsifier is not None) != ct.HasField("sparse"):
        raise ValueError("sparse header present without a sparsifier or missing after one")
    count, index_nbytes = _check_sparse(ct, numel) if sparsifier is not None else (numel, 0)
    if value is not None:
        groups, per_group, group_axis, value_nbytes = _check_groups(value, shape, count, sparsifier is not None)
    else:
        groups, per_group, group_axis = 1, count, None
        value_nbytes = count * np.dtype(DTYPES[ct.dtype][0]).itemsize
    expected = index_nbytes + value_nbytes
    if ct.raw_nbytes != expected:
        raise ValueError(f"raw_nbytes {ct.raw_nbytes} but the header implies {expected}")
    if entropy is None:
        _check_payload_length(payload, expected)
    codecs = tuple(stage.codec for stage in ct.stages)
    return ParsedTensor(
        ct, payload, label, shape, ct.dtype, numel, codecs, chain, sparsifier, value, entropy,
        groups, per_group, group_axis, index_nbytes, value_nbytes,
    )  # fmt: skip


# --------------------------------------------------------------------------- phase 2: payload


def decode_parsed(p: ParsedTensor) -> torch.Tensor:
    """Second phase of decoding: payload to tensor (see :func:`parse_tensor`)."""
    try:
        return _decode(p, support=False)[0]
    except ValueError as exc:
        raise _fault(p.name, str(exc)) from None


def decode_parsed_with_support(p: ParsedTensor) -> tuple[torch.Tensor, npt.NDArray[np.bool_] | None]:
    """Like :func:`decode_parsed`, and also which elements the sender actually sent.

    The support is a bool array of the tensor's shape, True exactly at the positions
    in the wire's index set (a sent value that decodes to 0 is still True), for a
    tensor encoded with a sparsifier; ``None`` for a dense tensor (every element sent).
    """
    try:
        return _decode(p, support=True)
    except ValueError as exc:
        raise _fault(p.name, str(exc)) from None


def _indices(p: ParsedTensor, section: memoryview) -> npt.NDArray[np.int64]:
    sp = p.proto.sparse
    if sp.encoding == pb.INDEX_ENCODING_BITMAP:
        return bitops.indices_from_bitmap(section, p.numel, sp.count)
    if sp.encoding == pb.INDEX_ENCODING_RICE:
        return bitops.rice_decode(section, sp.count, p.numel, sp.rice_bits)
    return bitops.varint_decode(section, sp.count, p.numel)


def _values(p: ParsedTensor, section: memoryview) -> np.ndarray:
    """The value section as a flat array: float32 after a value codec, else the raw dtype."""
    if p.value is not None:
        codec, stage = p.value
        values = codec.decode(section, stage, p.groups, p.per_group)  # (G, N) float32
        if p.group_axis is not None:
            a = p.group_axis
            moved = (p.shape[a], *p.shape[:a], *p.shape[a + 1 :])
            values = np.moveaxis(values.reshape(moved), 0, a)
        return np.ascontiguousarray(values).reshape(-1)
    if p.dtype == "bool":
        raw = np.frombuffer(section, dtype=np.uint8)
        if raw.size and int(raw.max()) > 1:
            raise ValueError("bool values other than 0 and 1")
        return raw.astype(bool)
    return np.frombuffer(section, dtype=DTYPES[p.dtype][0]).copy()


def all_finite(values: np.ndarray) -> bool:
    """NaN and infinities propagate through a sum: a finite sum proves every value finite in one pass."""
    if values.dtype.kind != "f":
        return True
    if values.dtype == np.float32 and values.flags.c_contiguous and values.flags.writeable and values.size:
        # torch's float32 sum is vectorised (about 2-3x numpy's pairwise sum); any order of summation
        # keeps a NaN or an infinity non-finite, and an overflow falls back to the elementwise check
        total = float(torch.from_numpy(values).sum())
    else:  # torch.from_numpy warns on read-only arrays
        with np.errstate(over="ignore", invalid="ignore"):
            total = values.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(values).all())


def decode_parsed_array(p: ParsedTensor) -> tuple[np.ndarray, npt.NDArray[np.bool_] | None]:
    """:func:`decode_parsed_with_support` as a numpy array of the declared dtype and shape (no torch
    tensor is made); bfloat16, which numpy lacks, comes as float32."""
    try:
        if p.dtype == "bfloat16":
            tensor, sent = _decode(p, support=True)
            return tensor.float().numpy(), sent
        values, sent = _decode_flat(p, support=True)
        target = np.dtype(bool) if p.dtype == "bool" else np.dtype(DTYPES[p.dtype][0])  # bool travels as u1
        if values.dtype != target:  # a value codec's float32 for a float16 or float64 tensor
            values = values.astype(target)
            if not all_finite(values):
                raise ValueError("non-finite values")
        return values.reshape(p.shape), sent
    except ValueError as exc:
        raise _fault(p.name, str(exc)) from None


def _decode(p: ParsedTensor, *, support: bool) -> tuple[torch.Tensor, npt.NDArray[np.bool_] | None]:
    values, sent = _decode_flat(p, support=support)
    return _as_dtype(values, p).reshape(p.shape), sent


def _decode_flat(p: ParsedTensor, *, support: bool) -> tuple[np.ndarray, npt.NDArray[np.bool_] | None]:
    """The tensor's values, flat (float32 after a value codec, else the raw dtype), and what was sent."""
    payload = p.payload
    if p.entropy is not None:
        codec, stage = p.entropy
        payload = memoryview(codec.decompress(payload, stage, p.proto.raw_nbytes))
    idx = _indices(p, payload[: p.index_nbytes]) if p.sparsifier is not None else None
    values = _values(p, payload[p.index_nbytes :])
    # float32 and float64 values are what the tensor holds: check them before the scatter (fewer)
    if not all_finite(values):
        raise ValueError("non-finite values")
    sent: npt.NDArray[np.bool_] | None = None
    if idx is not None:
        dense = np.zeros(p.numel, dtype=values.dtype)
        dense[idx] = values
        values = dense
        if support:
            sent = np.zeros(p.numel, dtype=bool)
            sent[idx] = True
            sent = sent.reshape(p.shape)
    return values, sent


def _as_dtype(values: np.ndarray, p: ParsedTensor) -> torch.Tensor:
    """Flat values as a tensor of the declared dtype (float32 codec output: rounded to nearest even)."""
    t = torch.from_numpy(values)
    torch_dtype = DTYPES[p.dtype][1]
    if p.dtype == "bfloat16" and p.value is None:
        t = t.view(torch.bfloat16)  # raw bits
    elif t.dtype != torch_dtype:
        t = t.to(torch_dtype)
    else:
        return t
    if p.dtype in ("float16", "bfloat16") and not bool(torch.isfinite(t).all()):  # raw bits or an overflow
        raise ValueError("non-finite values")
    return t


def decode_tensor(
    data: bytes, *, name: str | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> torch.Tensor:
    """Decode one serialized CompressedTensor to a tensor of its original dtype and shape.

    Raises :class:`~fedshrink.errors.DecodeError` (naming the tensor and the fault)
    for any malformed, hostile or over-cap input; nothing else escapes.
    """
    return decode_parsed(parse_tensor(data, name=name, limits=limits))
