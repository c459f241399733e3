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
* :func:`rice_encode` of the same gaps with parameter ``b``: the quotients
  ``gap >> b`` in unary, then the remainders in ``b`` bits each:
  ``ceil((count + sum(gap >> b)) / 8) + ceil(count * b / 8)`` bytes
  (:func:`rice_nbytes`; :func:`rice_choice` picks the shortest ``b``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

MAX_VARINT_BYTES = 5  # enough for gaps < 2**35 (tensor sizes are capped far below)
MAX_RICE_BITS = 32  # the largest Rice parameter a header may name


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes taken by ``n`` values of ``bits`` bits each: ``ceil(n * bits / 8)``."""
    return (n * bits + 7) // 8


def pack_bits(q: U8, bits: int) -> bytes:
    """Pack values ``0 <= q < 2**bits`` (a 1-D uint8 array), ``bits`` bits each.

    The codes, each MSB first, form one bit stream that fills bytes MSB first;
    the last byte is zero padded. Eight codes of ``bits`` bits are exactly
    ``bits`` bytes, so groups of eight are assembled in a 64-bit word and its
    low ``bits`` bytes are written big-endian.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    q = np.ascontiguousarray(q, dtype=np.uint8).reshape(-1)
    n = q.size
    if bits == 8:
        return q.tobytes()
    if bits == 1:
        return np.packbits(q).tobytes()
    if bits == 4:  # two codes per byte: the first in the high nibble
        if n % 2:
            q = np.concatenate([q, np.zeros(1, dtype=np.uint8)])
        pairs = q.view("<u2")  # (ceil(n/2),): low byte = first code
        packed = ((pairs & 0x0F) << 4) | (pairs >> 8)
        return packed.astype(np.uint8).tobytes()
    if n % 8:
        q = np.concatenate([q, np.zeros(8 - n % 8, dtype=np.uint8)])
    groups = q.reshape(-1, 8)  # (n/8, 8)
    word = groups[:, 0].astype(np.uint64) << np.uint64(7 * bits)
    for j in range(1, 8):
        word |= groups[:, j].astype(np.uint64) << np.uint64((7 - j) * bits)
    out = word.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - bits :]  # (n/8, bits)
    return out.tobytes()[: packed_nbytes(n, bits)]


def _check_padding(buf: U8, used_bits: int) -> None:
    pad = buf.size * 8 - used_bits
    if pad and int(buf[-1]) & ((1 << pad) - 1):
        raise ValueError("non-zero padding bits")


def unpack_bits(data: bytes | memoryview | U8, n: int, bits: int) -> U8:
    """Inverse of :func:`pack_bits` (a new array); ``data`` must be exactly ``packed_nbytes(n, bits)`` long."""
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
    if bits == 4:  # (high nibble, low nibble) as the (low, high) bytes of a little-endian uint16
        wide = buf.astype("<u2")
        return ((wide >> 4) | ((wide & 0x0F) << 8)).view(np.uint8)[:n]
    m = -(-n // 8)  # groups of 8 codes = ``bits`` bytes each
    word = np.zeros((m, 8), dtype=np.uint8)
    padded = np.zeros(m * bits, dtype=np.uint8)
    padded[: buf.size] = buf
    word[:, 8 - bits :] = padded.reshape(m, bits)
    w = word.view(">u8").reshape(-1).astype(np.uint64)  # (m,)
    out = np.empty((m, 8), dtype=np.uint8)
    mask = np.uint64((1 << bits) - 1)
    for j in range(8):
        out[:, j] = (w >> np.uint64((7 - j) * bits)) & mask
    return out.reshape(-1)[:n]


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


def _gaps(indices: I64) -> I64:
    """``index[0]``, then ``index[i] - index[i-1] - 1``."""
    gaps = np.diff(indices, prepend=-1)
    gaps -= 1
    return gaps


def _varint_lengths(gaps: I64, top: int) -> U8:
    """Bytes of each gap's varint; ``top`` is the largest gap."""
    nb = np.ones(gaps.shape, dtype=np.uint8)
    for j in range(1, max(1, (top.bit_length() + 6) // 7)):
        nb += gaps >= (1 << (7 * j))
    return nb


def varint_nbytes(indices: I64) -> int:
    """Size of :func:`varint_encode` without building it."""
    if indices.size == 0:
        return 0
    gaps = _gaps(indices)
    return int(_varint_lengths(gaps, int(gaps.max())).sum(dtype=np.int64))


def varint_encode(indices: I64) -> bytes:
    """Delta-varint code of strictly increasing non-negative ``indices`` (< 2**35)."""
    if indices.size == 0:
        return b""
    indices = np.asarray(indices, dtype=np.int64)
    steps = np.diff(indices)  # the gaps after the first, plus 1
    top = max(int(indices[0]), int(steps.max()) - 1 if steps.size else 0)
    if top < 0x80:  # every gap fits one byte
        out = np.empty(indices.size, dtype=np.uint8)
        out[0] = indices[0]
        np.subtract(steps, 1, out=out[1:], casting="unsafe")
        return out.tobytes()
    gaps = np.empty(indices.size, dtype=np.int64)
    gaps[0] = indices[0]
    np.subtract(steps, 1, out=gaps[1:])
    long = np.flatnonzero(gaps >= 0x80)
    if 8 * long.size <= gaps.size:
        return _varint_encode_few_long(gaps, long, top)
    nb = _varint_lengths(gaps, top)
    starts = np.cumsum(nb, dtype=np.int64)
    total = int(starts[-1])
    starts -= nb
    out = np.empty(total, dtype=np.uint8)
    first = gaps.astype(np.uint8)  # low 8 bits
    first &= 0x7F
    first |= (nb > 1).view(np.uint8) << 7
    out[starts] = first
    rest = np.flatnonzero(nb > 1)  # the few long gaps
    for j in range(1, MAX_VARINT_BYTES):
        if rest.size == 0:
            break
        byte = ((gaps[rest] >> (7 * j)) & 0x7F).astype(np.uint8)
        byte |= (nb[rest] > j + 1).view(np.uint8) << 7
        out[starts[rest] + j] = byte
        rest = rest[nb[rest] > j + 1]
    return out.tobytes()


def _varint_encode_few_long(gaps: I64, long: I64, top: int) -> bytes:
    """:func:`varint_encode` of ``gaps`` whose multi-byte varints (at positions ``long``) are few:
    the one-byte stream, with the continuation bytes inserted after their gaps' first bytes."""
    first = gaps.astype(np.uint8)  # low 8 bits
    first &= 0x7F
    first[long] |= 0x80
    lg = gaps[long]  # (L,)
    nb = _varint_lengths(lg, top)
    at: list[I64] = []
    extra: list[U8] = []
    rest = np.arange(long.size)
    for j in range(1, MAX_VARINT_BYTES):
        if rest.size == 0:
            break
        byte = ((lg[rest] >> (7 * j)) & 0x7F).astype(np.uint8)
        byte |= (nb[rest] > j + 1).view(np.uint8) << 7
        at.append(long[rest] + 1)
        extra.append(byte)
        rest = rest[nb[rest] > j + 1]
    # np.insert sorts the positions stably: a gap's continuation bytes keep their order
    return np.insert(first, np.concatenate(at), np.concatenate(extra)).tobytes()


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
    last = buf < 0x80  # (bytes,) the final byte of each varint
    if buf.size == count and bool(last.all()):  # every gap fits one byte
        gaps = buf.astype(np.int64)
    else:
        gaps = _decode_long_varints(buf, last, count)
    if int(gaps.max()) >= n:
        raise ValueError("index out of bounds")
    return _indices_of_gaps(gaps, n)


def _indices_of_gaps(gaps: I64, n: int) -> I64:
    """The strictly increasing indices of gaps (each ``< n``, changed in place); ValueError past ``n``.

    Gaps below ``n`` and at most ``n`` of them keep the cumulative sum far below 2**63."""
    gaps += 1
    idx = np.cumsum(gaps)
    idx -= 1
    if int(idx[-1]) >= n:
        raise ValueError(f"index {int(idx[-1])} out of bounds for {n} elements")
    return idx


def _decode_long_varints(buf: U8, last: npt.NDArray[np.bool_], count: int) -> I64:
    """Gaps of a stream with multi-byte varints, assembled from the last (most significant) byte back."""
    ends = np.flatnonzero(last)  # (count,)
    if ends.size != count:
        raise ValueError(f"{ends.size} varints, header says {count}")
    lengths = np.diff(ends, prepend=-1)
    if int(lengths.max()) > MAX_VARINT_BYTES:
        raise ValueError("varint longer than 5 bytes")
    gaps = buf[ends].astype(np.int64)  # the final byte holds the most significant 7 bits
    rest = np.flatnonzero(lengths > 1)
    for j in range(1, MAX_VARINT_BYTES):
        if rest.size == 0:
            break
        gaps[rest] = (gaps[rest] << 7) | (buf[ends[rest] - j] & 0x7F)
        rest = rest[lengths[rest] > j + 1]
    return gaps


# --------------------------------------------------------------------------- Rice codes of index gaps


def rice_nbytes(gaps: I64, b: int) -> int:
    """Size of the Rice code of ``gaps`` (non-negative) with parameter ``b``: unary part + remainders."""
    unary = int((gaps >> b).sum(dtype=np.int64)) + gaps.size
    return (unary + 7) // 8 + packed_nbytes(gaps.size, b)


def rice_choice(indices: I64) -> tuple[int, int]:
    """``(b, nbytes)`` of the shortest Rice code of strictly increasing ``indices`` (near log2 of the mean gap)."""
    gaps = _gaps(np.asarray(indices, dtype=np.int64))
    if gaps.size == 0:
        return 0, 0
    mean = float(gaps.mean())
    centre = int(np.log2(mean)) if mean >= 1 else 0
    best = (0, rice_nbytes(gaps, 0)) if centre <= 2 else None
    for b in range(max(0, centre - 2), min(MAX_RICE_BITS, centre + 2) + 1):
        size = rice_nbytes(gaps, b)
        if best is None or size < best[1]:
            best = (b, size)
    assert best is not None
    return best


def rice_encode(indices: I64, b: int) -> bytes:
    """Rice code of the gaps of strictly increasing non-negative ``indices`` with parameter ``b``.

    Two parts, each a bit stream filling bytes MSB first and zero padded to a byte:
    first the quotients ``q = gap >> b``, each as ``q`` one-bits and a zero-bit;
    then the remainders ``gap & (2**b - 1)``, ``b`` bits each, MSB first.
    """
    if not 0 <= b <= MAX_RICE_BITS:
        raise ValueError(f"Rice parameter {b} outside 0..{MAX_RICE_BITS}")
    gaps = _gaps(np.asarray(indices, dtype=np.int64))
    if gaps.size == 0:
        return b""
    q = gaps >> b
    ends = np.cumsum(q + 1) - 1  # position of each quotient's terminating zero
    unary = np.ones(int(ends[-1]) + 1, dtype=np.uint8)
    unary[ends] = 0
    parts = [np.packbits(unary).tobytes()]
    if b:
        rem = gaps & ((1 << b) - 1)
        if b <= 8:
            parts.append(pack_bits(rem.astype(np.uint8), b))
        else:
            shifts = np.arange(b - 1, -1, -1, dtype=np.int64)
            parts.append(np.packbits(((rem[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)).tobytes())
    return b"".join(parts)


def rice_decode(data: bytes | memoryview, count: int, n: int, b: int) -> I64:
    """Inverse of :func:`rice_encode`; checks both parts' lengths and zero padding, and every index ``< n``."""
    if not 0 <= b <= MAX_RICE_BITS:
        raise ValueError(f"Rice parameter {b} outside 0..{MAX_RICE_BITS}")
    buf = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if buf.size:
            raise ValueError("index bytes present for zero indices")
        return np.zeros(0, dtype=np.int64)
    rem_nbytes = packed_nbytes(count, b)
    unary_buf = buf[: buf.size - rem_nbytes]
    ends = np.flatnonzero(np.unpackbits(unary_buf) == 0)  # terminators, then the padding's zeros
    if ends.size < count:
        raise ValueError(f"{ends.size} Rice quotients, header says {count}")
    ends = ends[:count]
    used = int(ends[-1]) + 1
    if (used + 7) // 8 != unary_buf.size:
        raise ValueError("Rice quotients do not fill their part exactly")
    _check_padding(unary_buf, used)  # only zeros may follow the last terminator
    q = np.diff(ends, prepend=-1)
    q -= 1
    if int(q.max()) > (n >> b):
        raise ValueError("index out of bounds")
    gaps = q << b
    if b:
        rem = buf[buf.size - rem_nbytes :]
        gaps |= unpack_bits(rem, count, b) if b <= 8 else unpack_wide(rem, count, b)
    if int(gaps.max()) >= n:
        raise ValueError("index out of bounds")
    return _indices_of_gaps(gaps, n)


def unpack_wide(buf: U8, n: int, bits: int) -> I64:
    """``n`` unsigned values of ``bits`` (1..32) bits each, MSB first, from exactly ``packed_nbytes`` bytes."""
    if buf.size != packed_nbytes(n, bits):
        raise ValueError(f"packed length {buf.size} != {packed_nbytes(n, bits)} expected")
    _check_padding(buf, n * bits)
    flat = np.unpackbits(buf, count=n * bits).reshape(n, bits).astype(np.int64)
    weights = np.left_shift(1, np.arange(bits - 1, -1, -1, dtype=np.int64))
    return flat @ weights
