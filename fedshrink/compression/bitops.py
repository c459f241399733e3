"""Vectorised bit-level helpers: k-bit packing, bitmaps and delta varints.

Pure functions over numpy arrays; no Python loop runs over elements (the only
loops run over bit positions, at most 8, or varint byte positions, at most 5).
Decoders take untrusted bytes and raise :class:`ValueError` with a short fault
description; callers wrap it into :class:`~fedshrink.errors.DecodeError`.

Wire sizes:

* :func:`pack_bits` of ``n`` values with ``k`` bits: ``ceil(n * k / 8)`` bytes,
  MSB first (4-bit values take half a byte), zero padded.
* :func:`bitmap_encode` of ``n`` flags: ``ceil(n / 8)`` bytes.
* :func:`varint_encode` of sorted unique indices: one LEB128 varint per gap
  (``index[0]``, then ``index[i] - index[i-1] - 1``), 1..5 bytes each.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

MAX_VARINT_BYTES = 5  # enough for gaps < 2**35 (tensor sizes are capped far below)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes taken by ``n`` values of ``bits`` bits each: ``ceil(n * bits / 8)``."""
    return (n * bits + 7) // 8


def pack_bits(q: U8, bits: int) -> bytes:
    """Pack values ``0 <= q < 2**bits`` (a 1-D uint8 array), ``bits`` bits each."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    q = np.ascontiguousarray(q, dtype=np.uint8).reshape(-1)
    n = q.size
    if bits == 8:
        return q.tobytes()
    if bits == 1:
        return np.packbits(q).tobytes()
    if bits in (2, 4):
        per = 8 // bits
        m = -(-n // per)
        padded = np.zeros(m * per, dtype=np.uint8)
        padded[:n] = q
        groups = padded.reshape(m, per)  # (bytes, values per byte)
        out = np.zeros(m, dtype=np.uint8)
        for j in range(per):
            out |= groups[:, j] << np.uint8(8 - bits * (j + 1))
        return out.tobytes()
    planes = np.unpackbits(q[:, None], axis=1)[:, 8 - bits :]  # (n, bits), MSB first
    return np.packbits(planes.reshape(-1)).tobytes()


def _check_padding(buf: U8, used_bits: int) -> None:
    pad = buf.size * 8 - used_bits
    if pad and int(buf[-1]) & ((1 << pad) - 1):
        raise ValueError("non-zero padding bits")


def unpack_bits(data: bytes | memoryview, n: int, bits: int) -> U8:
    """Inverse of :func:`pack_bits`; ``data`` must be exactly ``packed_nbytes(n, bits)`` long."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size != packed_nbytes(n, bits):
        raise ValueError(f"packed length {buf.size} != {packed_nbytes(n, bits)} expected")
    if bits == 8:
        return buf.copy()
    _check_padding(buf, n * bits)
    if bits == 1:
        return np.unpackbits(buf, count=n)
    if bits in (2, 4):
        per = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        out = np.empty((buf.size, per), dtype=np.uint8)  # (bytes, values per byte)
        for j in range(per):
            out[:, j] = (buf >> np.uint8(8 - bits * (j + 1))) & mask
        return out.reshape(-1)[:n]
    planes = np.unpackbits(buf, count=n * bits).reshape(n, bits)
    return (np.packbits(planes, axis=1).reshape(-1) >> np.uint8(8 - bits)).astype(np.uint8)


def bitmap_encode(flags: npt.NDArray[np.bool_]) -> bytes:
    """One bit per flag, MSB first: ``ceil(n / 8)`` bytes."""
    return np.packbits(np.asarray(flags, dtype=bool).reshape(-1)).tobytes()


def bitmap_decode(data: bytes | memoryview, n: int) -> npt.NDArray[np.bool_]:
    """Inverse of :func:`bitmap_encode`; checks the exact length and zero padding."""
    return unpack_bits(data, n, 1).view(bool)


def indices_from_bitmap(data: bytes | memoryview, n: int, count: int) -> I64:
    """Sorted positions of the set bits; the bitmap must hold exactly ``count`` ones."""
    flags = bitmap_decode(data, n)
    idx = np.flatnonzero(flags)
    if idx.size != count:
        raise ValueError(f"bitmap has {idx.size} set bits, header says {count}")
    return idx.astype(np.int64, copy=False)


def bitmap_from_indices(indices: I64, n: int) -> bytes:
    flags = np.zeros(n, dtype=bool)
    flags[indices] = True
    return bitmap_encode(flags)


def _varint_lengths(gaps: npt.NDArray[np.uint64]) -> U8:
    nb = np.ones(gaps.shape, dtype=np.uint8)
    for j in range(1, MAX_VARINT_BYTES):
        nb += (gaps >> np.uint64(7 * j)) > 0
    return nb


def varint_nbytes(indices: I64) -> int:
    """Size of :func:`varint_encode` without building it."""
    if indices.size == 0:
        return 0
    gaps = np.diff(indices, prepend=-1).astype(np.uint64) - np.uint64(1)
    return int(_varint_lengths(gaps).sum(dtype=np.int64))


def varint_encode(indices: I64) -> bytes:
    """Delta-varint code of strictly increasing non-negative ``indices`` (< 2**35)."""
    if indices.size == 0:
        return b""
    gaps = np.diff(indices, prepend=-1).astype(np.uint64) - np.uint64(1)
    nb = _varint_lengths(gaps)
    ends = np.cumsum(nb, dtype=np.int64)
    starts = ends - nb
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for j in range(MAX_VARINT_BYTES):
        sel = nb > j
        if not sel.any():
            break
        byte = ((gaps[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        byte |= (nb[sel] > j + 1).astype(np.uint8) << np.uint8(7)
        out[starts[sel] + j] = byte
    return out.tobytes()


def varint_decode(data: bytes | memoryview, count: int, n: int) -> I64:
    """Inverse of :func:`varint_encode`.

    Checks that ``data`` holds exactly ``count`` varints of at most 5 bytes, with no
    trailing bytes, and that every index is ``< n``. Output is strictly increasing.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if buf.size:
            raise ValueError("index bytes present for zero indices")
        return np.zeros(0, dtype=np.int64)
    if buf.size == 0 or buf[-1] & 0x80:
        raise ValueError("truncated varint")
    ends = np.flatnonzero(buf < 0x80)
    if ends.size != count:
        raise ValueError(f"{ends.size} varints, header says {count}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > MAX_VARINT_BYTES:
        raise ValueError("varint longer than 5 bytes")
    pos = np.arange(buf.size, dtype=np.int64) - np.repeat(starts, lengths)
    contrib = (buf & np.uint8(0x7F)).astype(np.uint64) << (np.uint64(7) * pos.astype(np.uint64))
    gaps = np.add.reduceat(contrib, starts)
    if int(gaps.max()) >= n:
        raise ValueError("index out of bounds")
    # gaps < n and count <= n keep the cumulative sum far below 2**63
    idx = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if int(idx[-1]) >= n:
        raise ValueError(f"index {int(idx[-1])} out of bounds for {n} elements")
    return idx
