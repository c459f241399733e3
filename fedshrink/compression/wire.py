"""Wire format serde: one :class:`CompressedTensor` proto per tensor, and its decoder.

Public API::

    DecodeLimits(max_numel=2**26, max_total_numel=2**27, max_ndim=8, max_name_len=512,
                 max_tensor_bytes=2**30, max_tensors=4096, max_record_bytes=2**31)
    EncodedTensor(name, shape, dtype, codecs, data, raw_nbytes)   # .nbytes == len(data)
    decode_tensor(data: bytes, *, name: str | None = None,
                  limits: DecodeLimits = DEFAULT_LIMITS) -> torch.Tensor
    parse_tensor(data, *, name=None, limits=DEFAULT_LIMITS) -> ParsedTensor  # header only

Decoding is two-phase. :func:`parse_tensor` parses the proto (which cannot
allocate more than its input) and validates *everything* the header says:
name, dtype, shape (each dim and the element count against ``limits``), codec
ids and versions, stage order, every codec parameter (bits in 1..8, scale
counts, finite scales, no stray fields), the sparse header and the exact payload
length the header implies. Only then does :func:`decode_tensor` decompress
(bounded by the implied length), decode indices (in bounds, strictly increasing
by construction), decode values, reject non-finite results, and allocate the
output, whose size is the declared, capped shape. Every fault raises
:class:`~fedshrink.errors.DecodeError` naming the tensor and the fault. Nothing is
unpickled: payloads are raw little-endian bytes read with ``np.frombuffer``.
"""

from __future__ import annotations

import dataclasses
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

    ``codecs`` are the wire codec ids in encode order and ``chain`` the canonical
    chain string of the stages as they were applied to this tensor (for example
    ``"topk:0.1|quant:4|zlib"``; ``"raw"`` for none); compare it with
    :meth:`~fedshrink.compression.chain.ChainConfig.for_tensor` of the chain asked for.
    """

    proto: pb.CompressedTensor
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


def _fault(name: str, fault: str) -> DecodeError:
    return DecodeError(name, fault)


def parse_tensor(
    data: bytes, *, name: str | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> ParsedTensor:
    """Parse and fully validate a serialized CompressedTensor header (see module doc).

    ``name``, when given, is what the tensor must be called (the record key).
    """
    label = name if name is not None else UNNAMED
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fault(label, f"payload is {type(data).__name__}, not bytes")
    if len(data) > limits.max_tensor_bytes:
        raise _fault(label, f"{len(data)} bytes exceed the cap of {limits.max_tensor_bytes}")
    ct = pb.CompressedTensor()
    try:
        ct.ParseFromString(bytes(data))
    except (ProtoDecodeError, RuntimeError, ValueError) as exc:
        raise _fault(label, f"malformed CompressedTensor ({str(exc)[:80]})") from None
    if len(ct.name) > limits.max_name_len:
        raise _fault(label, f"name longer than {limits.max_name_len}")
    if name is not None and ct.name != name:
        raise _fault(label, f"header names tensor {ct.name[:80]!r}")
    label = ct.name if name is None else name
    try:
        return _validate(ct, label, limits)
    except ValueError as exc:
        raise _fault(label, str(exc)) from None


def _validate(ct: pb.CompressedTensor, label: str, limits: DecodeLimits) -> ParsedTensor:
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

    is_float = ct.dtype in FLOAT_DTYPES
    if sparsifier is not None and not is_float:
        raise ValueError(f"sparsifier on a {ct.dtype} tensor")
    if value is not None and not (is_float or (ct.dtype == "bool" and value[0].accepts_bool)):
        raise ValueError(f"codec {value[0].codec_id} on a {ct.dtype} tensor")
    if (sparsifier is not None) != ct.HasField("sparse"):
        raise ValueError("sparse header present without a sparsifier or missing after one")

    index_nbytes = 0
    count = numel
    if sparsifier is not None:
        sp = ct.sparse
        count = sp.count
        if count > numel:
            raise ValueError(f"{count} sparse values for {numel} elements")
        if sp.encoding == pb.INDEX_ENCODING_BITMAP:
            if sp.nbytes != bitops.packed_nbytes(numel, 1):
                raise ValueError(f"bitmap of {sp.nbytes} bytes for {numel} elements")
        elif sp.encoding == pb.INDEX_ENCODING_DELTA_VARINT:
            if not count <= sp.nbytes <= bitops.MAX_VARINT_BYTES * count:
                raise ValueError(f"{sp.nbytes} varint bytes for {count} indices")
        else:
            raise ValueError(f"unknown index encoding {sp.encoding}")
        index_nbytes = sp.nbytes

    groups, per_group, group_axis = 1, count, None
    if value is not None:
        codec, stage = value
        if stage.HasField("axis"):
            if sparsifier is not None:
                raise ValueError("per-channel axis on sparse values")
            if not 0 <= stage.axis < len(shape):
                raise ValueError(f"axis {stage.axis} out of range for {len(shape)} dims")
            group_axis = stage.axis
            groups = shape[group_axis]
            per_group = numel // groups if groups else 0
        value_nbytes = codec.check_stage(stage, groups, per_group)
    else:
        value_nbytes = count * np.dtype(DTYPES[ct.dtype][0]).itemsize

    expected = index_nbytes + value_nbytes
    if ct.raw_nbytes != expected:
        raise ValueError(f"raw_nbytes {ct.raw_nbytes} but the header implies {expected}")
    if entropy is None and len(ct.payload) != expected:
        kind = "truncated" if len(ct.payload) < expected else "oversized"
        raise ValueError(f"{kind} payload: {len(ct.payload)} bytes, header implies {expected}")
    return ParsedTensor(
        ct,
        label,
        shape,
        ct.dtype,
        numel,
        tuple(stage.codec for stage in ct.stages),
        "|".join(applied) or "raw",
        sparsifier,
        value,
        entropy,
        groups,
        per_group,
        group_axis,
        index_nbytes,
        value_nbytes,
    )


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


def _decode(p: ParsedTensor, *, support: bool) -> tuple[torch.Tensor, npt.NDArray[np.bool_] | None]:
    ct = p.proto
    payload: bytes = ct.payload
    if p.entropy is not None:
        codec, stage = p.entropy
        payload = codec.decompress(payload, stage, ct.raw_nbytes)
    view = memoryview(payload)
    idx: npt.NDArray[np.int64] | None = None
    sent: npt.NDArray[np.bool_] | None = None
    if p.sparsifier is not None:
        section = view[: p.index_nbytes]
        if ct.sparse.encoding == pb.INDEX_ENCODING_BITMAP:
            idx = bitops.indices_from_bitmap(section, p.numel, ct.sparse.count)
        else:
            idx = bitops.varint_decode(section, ct.sparse.count, p.numel)
        if support:
            sent = np.zeros(p.numel, dtype=bool)
            sent[idx] = True
            sent = sent.reshape(p.shape)
    vsection = view[p.index_nbytes :]
    np_dtype, torch_dtype = DTYPES[p.dtype]
    values: np.ndarray
    if p.value is not None:
        codec_v, stage_v = p.value
        values = codec_v.decode(vsection, stage_v, p.groups, p.per_group)  # (G, N) float32
        if p.group_axis is not None:
            a = p.group_axis
            moved = (p.shape[a], *p.shape[:a], *p.shape[a + 1 :])
            values = np.moveaxis(values.reshape(moved), 0, p.group_axis)
        values = values.reshape(-1)
    elif p.dtype == "bool":
        raw = np.frombuffer(vsection, dtype=np.uint8)
        if raw.size and int(raw.max()) > 1:
            raise ValueError("bool values other than 0 and 1")
        values = raw.astype(bool)
    else:
        values = np.frombuffer(vsection, dtype=np_dtype).copy()
    if idx is not None:
        dense = np.zeros(p.numel, dtype=values.dtype)
        dense[idx] = values
        values = dense
    t = torch.from_numpy(np.ascontiguousarray(values))
    if p.dtype == "bfloat16" and p.value is None:
        t = t.view(torch.bfloat16)
    elif t.dtype != torch_dtype:
        t = t.to(torch_dtype)
    if p.dtype in FLOAT_DTYPES and not bool(torch.isfinite(t).all()):
        raise ValueError("non-finite values")
    return t.reshape(p.shape), sent


def decode_tensor(
    data: bytes, *, name: str | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> torch.Tensor:
    """Decode one serialized CompressedTensor to a tensor of its original dtype and shape.

    Raises :class:`~fedshrink.errors.DecodeError` (naming the tensor and the fault)
    for any malformed, hostile or over-cap input; nothing else escapes.
    """
    return decode_parsed(parse_tensor(data, name=name, limits=limits))
