"""The hand-assembled serialization is protobuf's, and the zero-copy payload split parses as protobuf does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedshrink.compression import Chain, decode_tensor, parse_tensor
from fedshrink.errors import DecodeError
from fedshrink.v1 import compression_pb2 as pb

CHAINS = ["raw", "zlib", "zstd", "int8", "q4:axis=0|zlib", "topk:0.1|q4|zlib", "topk:0.05|int8|zstd", "bitmap"]
TENSORS = [torch.randn(6, 5), torch.tensor(2.5), torch.zeros(0), (torch.rand(4, 4) > 0.5).float()]


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize("text", CHAINS)
def test_serialization_is_protobufs(text: str) -> None:
    for t in TENSORS:
        try:
            enc = Chain(text).encode("w", t, rng=np.random.default_rng(0))
        except ValueError:
            continue  # bitmap on a non-mask
        assert pb.CompressedTensor.FromString(enc.data).SerializeToString() == enc.data
        p = parse_tensor(enc.data)
        assert bytes(p.payload) == pb.CompressedTensor.FromString(enc.data).payload
        assert p.proto.payload == b""  # the header only; the payload is a view


def _ref(data: bytes) -> torch.Tensor:
    """Decode after protobuf itself re-serialized the message (canonical field order, one payload)."""
    return decode_tensor(pb.CompressedTensor.FromString(data).SerializeToString())


def test_last_payload_field_wins_as_in_protobuf() -> None:
    x = torch.arange(6, dtype=torch.float32)
    enc = Chain("raw").encode("w", x)
    other = np.arange(10, 16, dtype="<f4").tobytes()
    data = enc.data + _field(6, other)
    assert torch.equal(decode_tensor(data), torch.arange(10, 16, dtype=torch.float32))
    assert torch.equal(decode_tensor(data), _ref(data))


def test_payload_first_and_unknown_fields() -> None:
    enc = Chain("int8|zlib").encode("w", torch.randn(3, 4))
    ct = pb.CompressedTensor.FromString(enc.data)
    payload = ct.payload
    ct.ClearField("payload")
    unknown = bytes([15 << 3 | 0, 7])  # field 15 (unknown), varint 7
    data = bytes([6 << 3 | 2]) + bytes([len(payload)]) + payload + unknown + ct.SerializeToString()
    assert len(payload) < 128
    assert torch.equal(decode_tensor(data), decode_tensor(enc.data))


def test_many_fields_take_the_full_parse() -> None:
    enc = Chain("q4").encode("w", torch.randn(5))
    data = enc.data + bytes([15 << 3 | 0, 1]) * 40  # more top-level fields than the scan looks at
    assert torch.equal(decode_tensor(data), decode_tensor(enc.data))
    assert parse_tensor(data).proto.payload == b""


@pytest.mark.parametrize("cut", [1, 5, 50])
def test_truncated_message_is_malformed(cut: int) -> None:
    enc = Chain("raw").encode("w", torch.randn(40))  # ... payload (160 bytes), raw_nbytes (3 bytes)
    with pytest.raises(DecodeError, match="malformed"):
        decode_tensor(enc.data[:-cut])
