"""Fuzz: 10,000+ random and mutated payloads; each decodes to its declared shape or raises DecodeError."""

from __future__ import annotations

import random

import numpy as np
import torch

from fedshrink.compression import Chain, DecodeLimits, decode_tensor
from fedshrink.errors import DecodeError
from fedshrink.v1 import compression_pb2 as pb

LIMITS = DecodeLimits(max_numel=4096, max_tensor_bytes=1 << 16)
CHAINS = [
    "raw",
    "fp16",
    "bf16",
    "int8",
    "q4:axis=0",
    "q3",
    "q1:stochastic=true",
    "sign",
    "zlib",
    "topk:0.1",
    "topk:0.5|q4|zlib",
    "randk:0.2|int8",
    "bf16|zlib",
    "q2:axis=1|zlib",
    "zstd",
    "topk:0.5|q4|zstd",
    "int8|zstd:19",
    "bf16|zstd",
]
N_PAYLOADS = 10_000


def _corpus(rng: np.random.Generator) -> list[bytes]:
    tensors = [
        torch.randn(4, 3, 2),
        torch.randn(17),
        torch.randn(2, 50),
        torch.tensor(1.5),
        torch.randn(6, 6).to(torch.bfloat16),
        torch.zeros(0, 3),
        torch.randn(3, 0, 2),
    ]
    out = [Chain.parse(c).encode("w", t, rng=rng).data for c in CHAINS for t in tensors]
    out += [
        Chain.parse(c).encode("b", t).data
        for c in ("raw", "zlib", "zstd", "bitmap")
        for t in (torch.tensor([True, False, True]), torch.ones(4, 2, 2))
    ]
    out += [Chain.parse(c).encode("i", torch.arange(10)).data for c in ("zlib", "zstd")]
    return out


def _mutate(data: bytes, r: random.Random, corpus: list[bytes]) -> bytes:
    b = bytearray(data)
    op = r.randrange(12)
    if op >= 9:  # keep the header valid, corrupt the payload contents (reaches the decoders)
        return _mutate_payload(data, r)
    if op == 0 and b:  # flip bits
        for _ in range(r.randint(1, 4)):
            i = r.randrange(len(b))
            b[i] ^= 1 << r.randrange(8)
    elif op == 1 and b:  # overwrite bytes with interesting values
        for _ in range(r.randint(1, 4)):
            b[r.randrange(len(b))] = r.choice([0, 1, 0x7F, 0x80, 0xFF, r.randrange(256)])
    elif op == 2:  # truncate
        del b[r.randrange(len(b) + 1) :]
    elif op == 3:  # extend
        b += r.randbytes(r.randint(1, 16))
    elif op == 4:  # splice two payloads
        other = r.choice(corpus)
        b = b[: r.randrange(len(b) + 1)] + other[r.randrange(len(other) + 1) :]
    elif op == 5:  # pure random bytes
        b = bytearray(r.randbytes(r.randint(0, 64)))
    elif op == 6 and b:  # insert / delete a byte
        i = r.randrange(len(b))
        if r.random() < 0.5:
            del b[i]
        else:
            b.insert(i, r.randrange(256))
    else:  # structured: rewrite a header field
        return _mutate_fields(bytes(b), r)
    return bytes(b)


def _mutate_fields(data: bytes, r: random.Random) -> bytes:
    ct = pb.CompressedTensor()
    try:
        ct.ParseFromString(data)
    except Exception:
        return data
    pick = r.randrange(10)
    big = r.choice([0, 1, 2, 3, 7, 8, 9, 255, 2**31, 2**32 + 1, 2**63 - 1])
    if pick == 0:
        ct.shape[:] = [r.choice([0, 1, 2, 3, 4, 50, 2**20, big]) for _ in range(r.randint(0, 9))]
    elif pick == 1 and ct.stages:
        ct.stages[r.randrange(len(ct.stages))].bits = big % 2**32
    elif pick == 2 and ct.stages:
        s = ct.stages[r.randrange(len(ct.stages))]
        s.scales.extend([r.choice([float("nan"), float("inf"), -1.0, 3e38, 0.0, 1e-45])])
    elif pick == 3:
        ct.raw_nbytes = big
    elif pick == 4:
        ct.sparse.count = big
    elif pick == 5:
        ct.sparse.nbytes = big
    elif pick == 6 and ct.stages:
        ct.stages[r.randrange(len(ct.stages))].axis = r.randint(-3, 9)
    elif pick == 7:
        ct.dtype = r.choice(["float32", "bool", "int64", "bfloat16", "float16", "complex64", ""])
    elif pick == 8 and ct.stages:
        ct.stages[r.randrange(len(ct.stages))].codec = r.choice(
            ["quant", "topk", "zlib", "zstd", "sign", "bitmap", "x"]
        )
    else:
        ct.sparse.encoding = r.randint(0, 3)  # type: ignore[assignment]
    return ct.SerializeToString()


def _mutate_payload(data: bytes, r: random.Random) -> bytes:
    ct = pb.CompressedTensor()
    try:
        ct.ParseFromString(data)
    except Exception:
        return data
    p = bytearray(ct.payload)
    if not p:
        return data
    for _ in range(r.randint(1, 3)):
        i = r.randrange(len(p))
        p[i] = r.choice([p[i] ^ (1 << r.randrange(8)), 0, 0xFF, 0x80, 0x7F])
    ct.payload = bytes(p)
    return ct.SerializeToString()


def _declared(data: bytes) -> tuple[tuple[int, ...], str]:
    ct = pb.CompressedTensor()
    ct.ParseFromString(data)
    return tuple(ct.shape), ct.dtype


def test_fuzz_decoder() -> None:
    rng = np.random.default_rng(1234)
    r = random.Random(1234)
    corpus = _corpus(rng)
    decoded = refused = 0
    for i in range(N_PAYLOADS):
        data = r.choice(corpus)
        for _ in range(1 if i % 3 else r.randint(1, 4)):
            data = _mutate(data, r, corpus)
        try:
            t = decode_tensor(data, limits=LIMITS)
        except DecodeError:
            refused += 1
            continue
        shape, dtype = _declared(data)
        assert tuple(t.shape) == shape and str(t.dtype) == f"torch.{dtype}", (data, t.shape, shape)
        assert t.numel() <= LIMITS.max_numel
        decoded += 1
    assert decoded + refused == N_PAYLOADS
    assert refused > N_PAYLOADS // 2 and decoded > 100  # both paths are exercised
