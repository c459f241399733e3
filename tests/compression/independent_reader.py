"""A second, minimal reader of the fedshrink.v1 wire format, written from the comments of
proto/fedshrink/v1/compression.proto alone (it imports nothing from fedshrink.compression).

It exists to show the .proto is a complete specification: the tests check that it decodes
what fedshrink encodes bit for bit. It is deliberately plain (Python loops for varints, a
dot product for bit unpacking) and computes quant in float64, rounding to float32 after each
operation as the spec says a float64 reader must.

    read_tensor(data: bytes) -> Decoded(name, dtype, shape, values, support)
    read_record(arrays: Mapping[str, (stype, dtype, shape, data)]) -> dict[str, Decoded]

``values`` is a numpy array of the original dtype, except bfloat16, which numpy lacks: its
16-bit patterns as uint16. ``support`` is the bool mask of the sent positions (None if dense).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import zstandard

from fedshrink.v1 import compression_pb2 as pb

RAW_DTYPE = {
    "float32": "<f4",
    "float64": "<f8",
    "float16": "<f2",
    "bfloat16": "<u2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "u1",
}
FLOATING = {"float32", "float64", "float16", "bfloat16"}
FIELDS = {
    "topk": {"ratio"},
    "randk": {"ratio"},
    "fp16": set(),
    "bf16": set(),
    "quant": {"bits", "axis", "scales", "zero_points", "stochastic"},
    "sign": {"scales"},
    "bitmap": {"axis"},
    "zlib": {"level"},
    "zstd": {"level"},
}
KIND = {"topk": 0, "randk": 0, "fp16": 1, "bf16": 1, "quant": 1, "sign": 1, "bitmap": 1, "zlib": 2, "zstd": 2}
F32_MAX = 3.4028234663852886e38


class ReaderError(Exception):
    """The bytes break the spec."""


@dataclass
class Decoded:
    name: str
    dtype: str
    shape: tuple[int, ...]
    values: np.ndarray
    support: np.ndarray | None


def need(ok: bool, why: str) -> None:
    if not ok:
        raise ReaderError(why)


# ---------------------------------------------------------------- section 4: bits


def unpack(buf: bytes, n: int, k: int) -> np.ndarray:
    """n codes of k bits from an MSB-first bit stream, zero padded to whole bytes."""
    need(len(buf) == (n * k + 7) // 8, "packed length")
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8))  # MSB of each byte first
    need(not bits[n * k :].any(), "non-zero padding")
    weights = np.array([1 << (k - 1 - b) for b in range(k)], dtype=np.int64)
    return (bits[: n * k].reshape(n, k).astype(np.int64) @ weights).astype(np.int64)


# ---------------------------------------------------------------- section 6: indices


def read_varints(buf: bytes, count: int, numel: int) -> np.ndarray:
    idx = []
    pos, prev = 0, -1
    for _ in range(count):
        gap, shift, used = 0, 0, 0
        while True:
            need(pos < len(buf), "truncated varint")
            byte = buf[pos]
            pos += 1
            used += 1
            need(used <= 5, "varint too long")
            gap |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        need(gap < numel, "gap out of range")
        prev = prev + gap + 1
        need(prev < numel, "index out of range")
        idx.append(prev)
    need(pos == len(buf), "trailing index bytes")
    return np.array(idx, dtype=np.int64)


def read_rice(buf: bytes, count: int, numel: int, b: int) -> np.ndarray:
    """Section 6, RICE: the unary quotients, then b-bit remainders, read one bit at a time."""
    need(0 <= b <= 32, "rice_bits")
    rem_len = (count * b + 7) // 8
    need(rem_len <= len(buf), "Rice section too short")
    first, second = buf[: len(buf) - rem_len], buf[len(buf) - rem_len :]

    def bit(data: bytes, i: int) -> int:
        return (data[i // 8] >> (7 - i % 8)) & 1

    quotients, pos = [], 0
    for _ in range(count):
        q = 0
        while True:
            need(pos < 8 * len(first), "truncated Rice quotient")
            one = bit(first, pos)
            pos += 1
            if not one:
                break
            q += 1
        quotients.append(q)
    need((pos + 7) // 8 == len(first), "Rice quotient part length")
    need(all(bit(first, i) == 0 for i in range(pos, 8 * len(first))), "Rice padding")
    need(all(bit(second, i) == 0 for i in range(count * b, 8 * len(second))), "Rice remainder padding")
    idx, prev = [], -1
    for j, q in enumerate(quotients):
        r = 0
        for i in range(b):
            r = (r << 1) | bit(second, j * b + i)
        gap = (q << b) | r
        need(gap < numel, "gap out of range")
        prev = prev + gap + 1
        need(prev < numel, "index out of range")
        idx.append(prev)
    return np.array(idx, dtype=np.int64)


def read_indices(ct: pb.CompressedTensor, section: bytes, numel: int) -> np.ndarray:
    sp = ct.sparse
    need(sp.count <= numel, "count > numel")
    need(sp.rice_bits == 0 or sp.encoding == pb.INDEX_ENCODING_RICE, "rice_bits without RICE")
    if sp.encoding == pb.INDEX_ENCODING_RICE:
        b = sp.rice_bits
        rem = (sp.count * b + 7) // 8
        need((sp.count + 7) // 8 + rem <= sp.nbytes <= (sp.count + (numel >> b) + 7) // 8 + rem, "Rice nbytes")
        return read_rice(section, sp.count, numel, b)
    if sp.encoding == pb.INDEX_ENCODING_DELTA_VARINT:
        need(sp.count <= sp.nbytes <= 5 * sp.count, "varint nbytes")
        return read_varints(section, sp.count, numel)
    need(sp.encoding == pb.INDEX_ENCODING_BITMAP, "index encoding")
    need(sp.nbytes == (numel + 7) // 8, "index bitmap length")
    flags = unpack(section, numel, 1)
    need(int(flags.sum()) == sp.count, "set bits != count")
    return np.nonzero(flags)[0].astype(np.int64)


# ---------------------------------------------------------------- section 5: value codecs


def f32(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).astype(np.float32)


def groups_of(st: pb.CodecStage, shape: tuple[int, ...], count: int, sparse: bool) -> tuple[int, int, int | None]:
    if not st.HasField("axis"):
        return 1, count, None
    need(not sparse and 0 <= st.axis < len(shape), "bad axis")
    g = shape[st.axis]
    return g, (math.prod(shape) // g if g else 0), st.axis


def value_nbytes(st: pb.CodecStage, g: int, n: int) -> int:
    if st.codec in ("fp16", "bf16"):
        return 2 * g * n
    if st.codec == "quant":
        need(1 <= st.bits <= 8, "bits")
        return (g * n * st.bits + 7) // 8
    if st.codec == "sign":
        return (g * n + 7) // 8
    return (g + 7) // 8 if st.HasField("axis") else (g * n + 7) // 8  # bitmap


def decode_quant(st: pb.CodecStage, buf: bytes, g: int, n: int) -> np.ndarray:
    levels = (1 << st.bits) - 1
    need(len(st.scales) == g and len(st.zero_points) == g, "scale count")
    scale = f32(list(st.scales)).astype(np.float64)[:, None]  # (G, 1)
    low = f32(list(st.zero_points)).astype(np.float64)[:, None]
    need(bool(np.isfinite(scale).all() and np.isfinite(low).all()), "non-finite scale")
    need(bool((scale >= 0).all()) and bool((np.abs(low) + scale * levels <= F32_MAX).all()), "scale range")
    q = unpack(buf, g * n, st.bits).reshape(g, n).astype(np.float64)
    t = f32(q * scale).astype(np.float64)  # round to float32 after the product ...
    return f32(t + low)  # ... and after the sum


def decode_values(st: pb.CodecStage, buf: bytes, g: int, n: int) -> np.ndarray:
    """(G, N) float32 values of a value codec."""
    if st.codec == "fp16":
        return np.frombuffer(buf, dtype="<f2").astype(np.float32).reshape(g, n)
    if st.codec == "bf16":
        hi = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << np.uint32(16)
        return hi.view(np.float32).reshape(g, n)
    if st.codec == "quant":
        return decode_quant(st, buf, g, n)
    if st.codec == "sign":
        need(len(st.scales) == 1, "sign scale count")
        s = np.float32(st.scales[0])
        need(bool(np.isfinite(s)) and s >= 0, "sign scale")
        return np.where(unpack(buf, g * n, 1) == 1, s, -s).astype(np.float32).reshape(g, n)
    if st.HasField("axis"):  # bitmap, one bit per index along the axis
        rows = unpack(buf, g, 1).astype(np.float32)
        return np.repeat(rows[:, None], n, axis=1)
    return unpack(buf, g * n, 1).astype(np.float32).reshape(g, n)


def to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values to the original dtype, round to nearest even (bfloat16 as uint16 bits)."""
    if dtype == "bfloat16":
        u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)).astype(np.uint16)
    if dtype == "bool":
        return x != 0
    return x.astype(RAW_DTYPE[dtype])


def finite(values: np.ndarray, dtype: str) -> bool:
    if dtype == "bfloat16":
        return not bool(((values & 0x7F80) == 0x7F80).any())
    return bool(np.isfinite(values).all())


# ---------------------------------------------------------------- section 7: entropy


def zlib_inflate(payload: bytes, raw: int) -> bytes:
    d = zlib.decompressobj()  # RFC 1950 container
    try:
        out = d.decompress(payload, raw + 1)
    except zlib.error as exc:
        raise ReaderError(f"zlib: {exc}") from None
    need(len(out) == raw and d.eof and not d.unused_data, "zlib length or trailing bytes")
    return out


def zstd_inflate(payload: bytes, raw: int) -> bytes:
    if raw == 0:  # an empty payload is sent as zero bytes
        need(payload == b"", "zstd frame for an empty payload")
        return b""
    try:
        need(zstandard.frame_content_size(payload) == raw, "zstd content size != raw_nbytes")
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ReaderError(f"zstd: {exc}") from None


INFLATE: dict[str, Callable[[bytes, int], bytes]] = {"zlib": zlib_inflate, "zstd": zstd_inflate}


# ---------------------------------------------------------------- sections 2-3: the tensor


def check_stages(ct: pb.CompressedTensor) -> dict[int, pb.CodecStage]:
    by_kind: dict[int, pb.CodecStage] = {}
    last = -1
    for st in ct.stages:
        need(st.codec in KIND and st.version == 1, f"unknown codec {st.codec} v{st.version}")
        need(KIND[st.codec] > last, "stage order")
        last = KIND[st.codec]
        extra = {f.name for f, _ in st.ListFields()} - {"codec", "version"} - FIELDS[st.codec]
        need(not extra, f"stray fields {extra}")
        by_kind[last] = st
    return by_kind


def read_tensor(data: bytes) -> Decoded:
    ct = pb.CompressedTensor.FromString(data)
    need(ct.dtype in RAW_DTYPE, "dtype")
    shape = tuple(int(d) for d in ct.shape)
    numel = math.prod(shape)
    stages = check_stages(ct)
    sparsifier, value, entropy = stages.get(0), stages.get(1), stages.get(2)
    floating = ct.dtype in FLOATING
    need(sparsifier is None or (floating and 0 < sparsifier.ratio <= 1), "sparsifier")
    need(value is None or floating or (ct.dtype == "bool" and value.codec == "bitmap"), "value codec dtype")
    need((sparsifier is not None) == ct.HasField("sparse"), "sparse header")
    index_len = ct.sparse.nbytes if sparsifier is not None else 0
    count = ct.sparse.count if sparsifier is not None else numel
    if value is not None:
        g, n, axis = groups_of(value, shape, count, sparsifier is not None)
        vlen = value_nbytes(value, g, n)
    else:
        vlen = count * np.dtype(RAW_DTYPE[ct.dtype]).itemsize
    need(ct.raw_nbytes == index_len + vlen, "raw_nbytes")
    payload = bytes(ct.payload)
    if entropy is not None:
        payload = INFLATE[entropy.codec](payload, ct.raw_nbytes)
    need(len(payload) == ct.raw_nbytes, "payload length")
    idx = read_indices(ct, payload[:index_len], numel) if sparsifier is not None else None
    vbuf = payload[index_len:]
    if value is not None:
        vals = decode_values(value, vbuf, g, n)  # (G, N) float32
        if axis is not None:
            rest = shape[:axis] + shape[axis + 1 :]
            vals = np.moveaxis(vals.reshape((shape[axis], *rest)), 0, axis)
        flat = vals.reshape(-1)
    else:
        flat = np.frombuffer(vbuf, dtype=RAW_DTYPE[ct.dtype])
        if ct.dtype == "bool":
            need(bool((flat <= 1).all()), "bool byte")
            flat = flat.astype(bool)
    support = None
    if idx is not None:
        dense = np.zeros(numel, dtype=flat.dtype)
        dense[idx] = flat
        flat = dense
        support = np.zeros(numel, dtype=bool)
        support[idx] = True
        support = support.reshape(shape)
    out = to_dtype(flat, ct.dtype) if value is not None else flat.copy()
    need(ct.dtype not in FLOATING or finite(out, ct.dtype), "non-finite values")
    return Decoded(ct.name, ct.dtype, shape, out.reshape(shape), support)


def read_record(arrays: Mapping[str, tuple[str, str, tuple[int, ...], bytes]]) -> dict[str, Decoded]:
    """Tensors of a record given as key -> (stype, dtype, shape, data) (section 1)."""
    names = [k for k in arrays if k != "_fedshrink_update"]
    if "_fedshrink_update" in arrays:
        stype, _, _, data = arrays["_fedshrink_update"]
        need(stype == "fedshrink.v1.update", "header stype")
        header = pb.TensorUpdate.FromString(data)
        need(header.format_version == 1 and header.direction in ("uplink", "downlink"), "header")
        need(list(header.tensor_names) == names, "header names")
    out = {}
    for key in names:
        stype, dtype, shape, data = arrays[key]
        need(stype == "fedshrink.v1", "stype")
        dec = read_tensor(data)
        need(dec.name == key and dec.dtype == dtype and dec.shape == tuple(shape), "Array metadata")
        out[key] = dec
    return out
