"""Hostile headers and payloads: each raises DecodeError naming the tensor and the fault."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
import zstandard

from fedshrink.compression import Chain, DecodeLimits, bitops, decode_tensor
from fedshrink.errors import DecodeError
from fedshrink.v1 import compression_pb2 as pb

X = torch.linspace(-1, 1, 96).reshape(8, 12)


def _proto(text: str, x: torch.Tensor = X) -> pb.CompressedTensor:
    ct = pb.CompressedTensor()
    ct.ParseFromString(Chain.parse(text).encode("w", x, rng=np.random.default_rng(0)).data)
    return ct


def _mutated(text: str, mutate: Callable[[pb.CompressedTensor], None]) -> bytes:
    ct = _proto(text)
    mutate(ct)
    return ct.SerializeToString()


def _set(**fields: object) -> Callable[[pb.CompressedTensor], None]:
    def f(ct: pb.CompressedTensor) -> None:
        for k, v in fields.items():
            setattr(ct, k, v)

    return f


def _stage(i: int, **fields: object) -> Callable[[pb.CompressedTensor], None]:
    def f(ct: pb.CompressedTensor) -> None:
        for k, v in fields.items():
            if k in ("scales", "zero_points"):
                getattr(ct.stages[i], k)[:] = v  # type: ignore[index]
            else:
                setattr(ct.stages[i], k, v)

    return f


def _zstd(data: bytes, *, size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_content_size=size).compress(data)


def _shape(*dims: int) -> Callable[[pb.CompressedTensor], None]:
    def f(ct: pb.CompressedTensor) -> None:
        ct.shape[:] = dims

    return f


def _sparse(**fields: object) -> Callable[[pb.CompressedTensor], None]:
    def f(ct: pb.CompressedTensor) -> None:
        for k, v in fields.items():
            setattr(ct.sparse, k, v)

    return f


CASES: list[tuple[str, str, Callable[[pb.CompressedTensor], None], str]] = [
    ("int8", "unknown codec", _stage(0, codec="lz77"), "unknown codec"),
    ("int8", "codec version", _stage(0, version=2), "version"),
    ("q4", "bits 0", _stage(0, bits=0), "bits"),
    ("q4", "bits 9", _stage(0, bits=9), "bits"),
    ("q4", "NaN scale", _stage(0, scales=[float("nan")]), "non-finite scale"),
    ("q4", "Inf zero point", _stage(0, zero_points=[float("inf")]), "non-finite zero point"),
    ("q4", "negative scale", _stage(0, scales=[-1.0]), "negative scale"),
    ("q4", "overflowing scale", _stage(0, scales=[3e38]), "overflows"),
    ("q4", "scale count", _stage(0, scales=[1.0, 2.0]), "scales"),
    ("q4:axis=0", "axis out of range", _stage(0, axis=5), "axis"),
    ("sign", "stray field", _stage(0, bits=3), "unexpected field"),
    ("sign", "NaN sign scale", _stage(0, scales=[float("nan")]), "non-finite"),
    ("int8", "shape mismatch", _shape(8, 13), "implies"),
    ("int8", "huge shape", _shape(2**20, 2**20), "cap"),
    ("raw", "too many dims", _shape(*([1] * 9)), "dims"),
    ("raw", "dtype", _set(dtype="object"), "dtype"),
    ("raw", "truncated", lambda ct: setattr(ct, "payload", ct.payload[:-1]), "truncated"),
    ("raw", "oversized", lambda ct: setattr(ct, "payload", ct.payload + b"\0"), "oversized"),
    ("raw", "raw_nbytes", _set(raw_nbytes=1), "raw_nbytes"),
    ("int8|zlib", "zlib truncated", lambda ct: setattr(ct, "payload", ct.payload[:-3]), "zlib"),
    ("int8|zlib", "zlib garbage", lambda ct: setattr(ct, "payload", b"\x00" * 20), "zlib"),
    ("int8|zlib", "zlib trailing", lambda ct: setattr(ct, "payload", ct.payload + b"x"), "trailing"),
    ("int8|zlib", "zlib level", _stage(1, level=10), "zlib.level"),
    ("int8|zstd", "zstd truncated", lambda ct: setattr(ct, "payload", ct.payload[:-3]), "zstd"),
    ("int8|zstd", "zstd garbage", lambda ct: setattr(ct, "payload", b"\x00" * 20), "zstd frame header"),
    ("int8|zstd", "zstd trailing", lambda ct: setattr(ct, "payload", ct.payload + b"x"), "corrupt zstd"),
    ("int8|zstd", "zstd second frame", lambda ct: setattr(ct, "payload", ct.payload * 2), "corrupt zstd"),
    ("int8|zstd", "zstd level", _stage(1, level=23), "zstd.level"),
    ("int8|zstd", "zstd stray field", _stage(1, bits=3), "unexpected field"),
    ("int8|zstd", "zstd no size", lambda ct: setattr(ct, "payload", _zstd(b"\0" * 96, size=False)), "no content"),
    ("int8|zstd", "zstd wrong size", lambda ct: setattr(ct, "payload", _zstd(b"\0" * 95)), "declares 95"),
    ("topk:0.1", "count > numel", _sparse(count=1000), "sparse values"),
    ("topk:0.1", "index encoding", _sparse(encoding=7), "index encoding"),
    ("topk:0.1", "varint bytes", _sparse(encoding=1, rice_bits=0, nbytes=1), "varint bytes"),
    ("flat|topk:0.1", "rice bytes", _sparse(nbytes=1), "Rice bytes"),
    ("flat|topk:0.1", "rice parameter", _sparse(rice_bits=33), "Rice parameter"),
    ("flat|topk:0.1", "rice_bits on varint", _sparse(encoding=1), "rice_bits set"),
    ("topk:0.1", "ratio", _stage(0, ratio=2.0), "ratio"),
    ("topk:0.1", "no sparse header", lambda ct: ct.ClearField("sparse"), "sparse header"),
    ("int8", "stage order", lambda ct: ct.stages.add(codec="topk", version=1, ratio=0.5), "out of order"),
    ("topk:0.1", "sparsifier on ints", _set(dtype="int32"), "sparsifier on a int32"),
    ("int8", "quant on ints", _set(dtype="int64"), "quant on a int64"),
]


@pytest.mark.parametrize(("chain", "label", "mutate", "fault"), CASES, ids=[c[1] for c in CASES])
def test_fault_is_named(
    chain: str, label: str, mutate: Callable[[pb.CompressedTensor], None], fault: str
) -> None:
    data = _mutated(chain, mutate)
    with pytest.raises(DecodeError) as info:
        decode_tensor(data, limits=DecodeLimits(max_numel=10**6))
    assert info.value.tensor == "w"
    assert fault in info.value.fault, info.value.fault


def test_out_of_bounds_index() -> None:
    ct = _proto("topk:0.05")  # 5 of 96 elements
    gaps = [0, 0, 0, 0, 120]  # the last index points past the end
    ct.payload = bytes(gaps) + ct.payload[ct.sparse.nbytes :]
    ct.sparse.nbytes = 5
    ct.sparse.encoding, ct.sparse.rice_bits = pb.INDEX_ENCODING_DELTA_VARINT, 0
    ct.raw_nbytes = len(ct.payload)
    with pytest.raises(DecodeError, match="out of bounds"):
        decode_tensor(ct.SerializeToString())


def test_out_of_bounds_rice_index() -> None:
    ct = _proto("flat|topk:0.05")  # 5 of 96 elements, Rice coded (a flat chain's vector)
    assert ct.sparse.encoding == pb.INDEX_ENCODING_RICE
    b = ct.sparse.rice_bits
    section = bitops.rice_encode(np.array([0, 1, 2, 3, 96], dtype=np.int64), b)  # index 96 of 96
    ct.payload = section + ct.payload[ct.sparse.nbytes :]
    ct.sparse.nbytes = len(section)
    ct.raw_nbytes = len(ct.payload)
    with pytest.raises(DecodeError, match=r"Rice bytes|out of bounds"):
        decode_tensor(ct.SerializeToString())


def test_non_finite_values_rejected() -> None:
    ct = _proto("raw")
    ct.payload = np.full(96, np.nan, dtype="<f4").tobytes()
    with pytest.raises(DecodeError, match="non-finite"):
        decode_tensor(ct.SerializeToString())


def test_name_must_match() -> None:
    data = Chain.parse("int8").encode("w", X).data
    with pytest.raises(DecodeError) as info:
        decode_tensor(data, name="other")
    assert info.value.tensor == "other"


def test_not_a_proto() -> None:
    with pytest.raises(DecodeError, match="malformed"):
        decode_tensor(b"\xff\xff\xff")


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Peak Python-tracked allocation (bytes objects, numpy arrays) while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
    except DecodeError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_cap_checked_before_allocating() -> None:
    """A tiny message declaring 2**40 elements is refused, by the cap, without allocating them."""
    ct = pb.CompressedTensor(name="w", shape=[2**20, 2**20], dtype="float32")
    with pytest.raises(DecodeError, match="cap of 67108864"):
        decode_tensor(ct.SerializeToString())
    assert _peak_bytes(lambda: decode_tensor(ct.SerializeToString())) < 1 << 20
    small = DecodeLimits(max_numel=50)
    with pytest.raises(DecodeError, match="96 elements, over the cap of 50"):
        decode_tensor(Chain.parse("int8").encode("w", X).data, limits=small)


def test_zip_bomb_is_bounded() -> None:
    """A 64 MiB zlib bomb behind a 96-byte header is cut off at the declared size."""
    ct = _proto("int8|zlib")
    ct.payload = zlib.compress(b"\0" * (64 << 20), 9)
    data = ct.SerializeToString()
    with pytest.raises(DecodeError, match="beyond the 96 bytes"):
        decode_tensor(data)
    assert _peak_bytes(lambda: decode_tensor(data)) < 1 << 20


def test_zstd_bomb_is_refused_by_its_declared_size() -> None:
    """A 64 MiB zstd frame behind a 96-byte header is refused before it is decompressed."""
    ct = _proto("int8|zstd")
    ct.payload = _zstd(b"\0" * (64 << 20))
    data = ct.SerializeToString()
    with pytest.raises(DecodeError, match="declares 67108864 bytes, the header implies 96"):
        decode_tensor(data)
    assert _peak_bytes(lambda: decode_tensor(data)) < 1 << 20


def test_zstd_frame_that_lies_about_its_size_stops_at_the_declared_size() -> None:
    """The same bomb with its content size field forged to 96: decompression stops at 96 bytes."""
    frame = bytearray(_zstd(b"\0" * (64 << 20)))
    assert frame[4] == 0x80  # 4-byte content size field, not single segment: bytes 6..9
    frame[6:10] = (96).to_bytes(4, "little")
    ct = _proto("int8|zstd")
    ct.payload = bytes(frame)
    data = ct.SerializeToString()
    with pytest.raises(DecodeError, match="corrupt zstd stream"):
        decode_tensor(data)
    assert _peak_bytes(lambda: decode_tensor(data)) < 1 << 20


def test_zstd_empty_payload_is_sent_empty() -> None:
    enc = Chain.parse("zstd").encode("e", torch.zeros(0, 3))
    ct = pb.CompressedTensor.FromString(enc.data)
    assert ct.payload == b"" and ct.raw_nbytes == 0
    assert decode_tensor(enc.data).shape == (0, 3)
    ct.payload = _zstd(b"")
    with pytest.raises(DecodeError, match="empty payload is sent empty"):
        decode_tensor(ct.SerializeToString())


def test_tensor_bytes_cap() -> None:
    with pytest.raises(DecodeError, match="cap"):
        decode_tensor(Chain.parse("raw").encode("w", X).data, limits=DecodeLimits(max_tensor_bytes=100))
