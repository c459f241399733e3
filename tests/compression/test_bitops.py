"""Bit packing, bitmaps and delta varints: round trips and hostile inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshrink.compression import bitops


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_pack_roundtrip_and_size(bits: int, n: int, seed: int) -> None:
    q = np.random.default_rng(seed).integers(0, 2**bits, n).astype(np.uint8)
    data = bitops.pack_bits(q, bits)
    assert len(data) == (n * bits + 7) // 8  # 4-bit values take half a byte
    assert np.array_equal(bitops.unpack_bits(data, n, bits), q)


def test_nibbles_are_msb_first() -> None:
    assert bitops.pack_bits(np.array([1, 2, 3], dtype=np.uint8), 4) == bytes([0x12, 0x30])


@pytest.mark.parametrize("bits", range(1, 9))
def test_unpack_rejects_bad_length_and_padding(bits: int) -> None:
    data = bitops.pack_bits(np.zeros(5, dtype=np.uint8), bits)
    with pytest.raises(ValueError):
        bitops.unpack_bits(data + b"\0", 5, bits)
    with pytest.raises(ValueError):
        bitops.unpack_bits(data[:-1], 5, bits)
    if (5 * bits) % 8:
        with pytest.raises(ValueError, match="padding"):
            bitops.unpack_bits(data[:-1] + b"\x01", 5, bits)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_indices_roundtrip(n: int, frac: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, int(frac * n), replace=False)).astype(np.int64)
    code = bitops.varint_encode(idx)
    assert len(code) == bitops.varint_nbytes(idx)
    assert np.array_equal(bitops.varint_decode(code, idx.size, n), idx)
    bitmap = bitops.bitmap_from_indices(idx, n)
    assert len(bitmap) == (n + 7) // 8
    assert np.array_equal(bitops.indices_from_bitmap(bitmap, n, idx.size), idx)


def test_varint_large_gaps() -> None:
    idx = np.array([0, 127, 128, 2**14, 2**21 + 5, 2**34], dtype=np.int64)
    assert np.array_equal(bitops.varint_decode(bitops.varint_encode(idx), idx.size, 2**35), idx)


@pytest.mark.parametrize(
    ("data", "count", "n"),
    [
        (b"\x80", 1, 10),  # truncated
        (b"\x01\x02", 1, 10),  # trailing varint
        (b"\x0a", 1, 10),  # index 10 out of bounds
        (b"\x05\x05", 2, 10),  # 5 then 11: out of bounds
        (b"\xff\xff\xff\xff\xff\x01", 1, 2**40),  # 6-byte varint
        (b"\x00", 0, 10),  # bytes for zero indices
    ],
)
def test_varint_rejects(data: bytes, count: int, n: int) -> None:
    with pytest.raises(ValueError):
        bitops.varint_decode(data, count, n)


def test_bitmap_count_mismatch() -> None:
    with pytest.raises(ValueError, match="set bits"):
        bitops.indices_from_bitmap(b"\xf0", 8, 3)


def _stream_reference(q: np.ndarray, bits: int) -> bytes:
    """The spec's definition: every code MSB first, one bit stream, bytes filled MSB first."""
    stream = "".join(format(int(v), f"0{bits}b") for v in q)
    stream += "0" * (-len(stream) % 8)
    return bytes(int(stream[i : i + 8], 2) for i in range(0, len(stream), 8))


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_is_the_msb_first_bit_stream(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for n in [*range(0, 20), 63, 64, 65, 257]:
        q = rng.integers(0, 2**bits, n).astype(np.uint8)
        assert bitops.pack_bits(q, bits) == _stream_reference(q, bits), n


def _leb128_reference(idx: np.ndarray) -> bytes:
    out, prev = bytearray(), -1
    for i in idx.tolist():
        gap, prev = i - prev - 1, i
        while gap >= 0x80:
            out.append(gap & 0x7F | 0x80)
            gap >>= 7
        out.append(gap)
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 3000),
    long_frac=st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.124, 0.126, 0.5, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_varint_with_few_or_many_long_gaps_is_leb128(count: int, long_frac: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gaps = rng.integers(0, 0x80, count)
    long = rng.random(count) < long_frac
    gaps[long] = rng.choice([0x80, 0x81, 300, 2**14 - 1, 2**14, 2**21, 2**28 + 3], int(long.sum()))
    idx = np.cumsum(gaps + 1) - 1
    code = bitops.varint_encode(idx)
    assert code == _leb128_reference(idx)
    assert len(code) == bitops.varint_nbytes(idx)
    assert np.array_equal(bitops.varint_decode(code, idx.size, int(idx[-1]) + 1), idx)


def test_varint_is_leb128_of_the_gaps() -> None:
    rng = np.random.default_rng(0)
    gaps = rng.choice([0, 1, 127, 128, 300, 2**14 - 1, 2**14, 2**21, 2**28 + 3], size=400)
    idx = np.cumsum(gaps + 1) - 1
    code = bitops.varint_encode(idx)
    assert code == _leb128_reference(idx)
    assert np.array_equal(bitops.varint_decode(code, idx.size, int(idx[-1]) + 1), idx)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0.0, 1.0), b=st.integers(0, 14), seed=st.integers(0, 2**32 - 1))
def test_rice_roundtrip_and_size(n: int, frac: float, b: int, seed: int) -> None:
    idx = np.sort(np.random.default_rng(seed).choice(n, int(frac * n), replace=False)).astype(np.int64)
    code = bitops.rice_encode(idx, b)
    assert len(code) == bitops.rice_nbytes(np.diff(idx, prepend=-1) - 1, b)
    assert np.array_equal(bitops.rice_decode(code, idx.size, n, b), idx)


def test_rice_is_the_spec_bit_stream() -> None:
    """Gaps 5, 0, 9 with b = 2: quotients 1, 0, 2 as ``10 0 110`` (padded), remainders ``01 00 01``."""
    idx = np.array([5, 6, 16], dtype=np.int64)
    assert bitops.rice_encode(idx, 2) == bytes([0b10011000, 0b01000100])


def test_rice_choice_is_the_shortest() -> None:
    idx = np.sort(np.random.default_rng(0).choice(100_000, 300, replace=False)).astype(np.int64)
    b, size = bitops.rice_choice(idx)
    gaps = np.diff(idx, prepend=-1) - 1
    assert size == min(bitops.rice_nbytes(gaps, c) for c in range(0, 20)) == len(bitops.rice_encode(idx, b))
    assert size < bitops.varint_nbytes(idx)


@pytest.mark.parametrize(
    ("data", "count", "n", "b", "fault"),
    [
        (bytes([0b11111111]), 1, 100, 0, "quotients"),  # no terminator
        (bytes([0b01000000]), 1, 100, 0, "padding"),  # a one after the last terminator
        (bytes([0b00000000, 0]), 1, 100, 0, "exactly"),  # a byte too many in the quotient part
        (bytes([0b10000000, 0b01000001]), 1, 100, 2, "padding"),  # a one in the remainders' padding
        (bytes([0b10000000, 0]), 1, 4, 2, "out of bounds"),  # quotient 1, remainder 0: gap 4 for 4 elements
        (bytes([0b11111111, 0b11111110]), 1, 10, 0, "out of bounds"),  # quotient 15 for 10 elements
        (b"\x00", 0, 10, 0, "zero indices"),
        (b"\x00", 1, 10, 40, "Rice parameter"),
    ],
)
def test_rice_rejects(data: bytes, count: int, n: int, b: int, fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        bitops.rice_decode(data, count, n, b)
