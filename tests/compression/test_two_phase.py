"""Two-phase record decoding: every header is checked before any payload is touched; supports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array

from fedshrink.compression import (
    STYPE,
    Chain,
    ChainConfig,
    check_chain,
    decode_all_with_support,
    decode_parsed,
    decode_parsed_with_support,
    decode_record,
    decode_with_support,
    encode_state,
    parse_record,
    parse_tensor,
)
from fedshrink.errors import DecodeError
from fedshrink.v1 import compression_pb2 as pb

RNG = np.random.default_rng


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "mask": torch.rand(5, 5, generator=g) > 0.5,
    }


def test_parse_record_gives_headers_without_decoding() -> None:
    """A corrupt payload behind a valid header parses; only the second phase refuses it."""
    record, _ = encode_state(_state(), "topk:0.1|q4|zlib", fragment="f0", round=3, rng=RNG(0))
    arr = record["conv.weight"]
    ct = pb.CompressedTensor()
    ct.ParseFromString(arr.data)
    ct.payload = b"\x00" * len(ct.payload)  # no longer a zlib stream
    record["conv.weight"] = Array(dtype=arr.dtype, shape=arr.shape, stype=STYPE, data=ct.SerializeToString())
    header, parsed = parse_record(record)
    assert header is not None and header.round == 3 and header.chain == "topk:0.1|quant:4|zlib:6"
    got = {p.name: (p.shape, p.dtype, p.numel, p.codecs, p.chain) for p in parsed}
    assert got == {
        "conv.weight": ((4, 3, 3, 3), "float32", 108, ("topk", "quant", "zlib"), "topk:0.1|quant:4|zlib:6"),
        "conv.bias": ((4,), "float32", 4, ("topk", "quant", "zlib"), "topk:0.1|quant:4|zlib:6"),
        "bn.num_batches_tracked": ((), "int64", 1, ("zlib",), "zlib:6"),
        "mask": ((5, 5), "bool", 25, ("zlib",), "zlib:6"),
    }
    with pytest.raises(DecodeError, match="zlib"):
        decode_parsed(parsed[0])
    assert torch.equal(decode_parsed(parsed[2]), torch.tensor(7))


@pytest.mark.parametrize(
    "text", ["topk:0.1|q4|zlib", "topk:0.05|int8|zlib", "int8|zlib", "raw", "int8:axis=0", "q4:axis=-1|zlib:1"]
)
def test_check_chain_accepts_the_chain_asked_for(text: str) -> None:
    record, _ = encode_state(_state(), text, rng=RNG(0))
    _, parsed = parse_record(record)
    for p in parsed:
        check_chain(p, text)
        check_chain(p, Chain(text))
        assert p.chain == ChainConfig.parse(text).for_tensor(p.dtype, len(p.shape)).to_string()


@pytest.mark.parametrize(
    ("sent", "asked"),
    [
        ("raw", "topk:0.1|q4|zlib"),
        ("topk:0.1|q4|zlib", "topk:0.1|int8|zlib"),
        ("topk:0.2|q4|zlib", "topk:0.1|q4|zlib"),
        ("randk:0.1|q4|zlib", "topk:0.1|q4|zlib"),
        ("topk:0.1|q4", "topk:0.1|q4|zlib"),
        ("topk:0.1|q4|zlib:1", "topk:0.1|q4|zlib"),
        ("int8:axis=0", "int8"),
        ("int8:stochastic=true", "int8"),
    ],
)
def test_check_chain_refuses_another_chain(sent: str, asked: str) -> None:
    record, _ = encode_state({"w": torch.randn(6, 5)}, sent, rng=RNG(0))
    _, parsed = parse_record(record)
    with pytest.raises(DecodeError, match="encoded with chain") as info:
        check_chain(parsed[0], asked)
    assert info.value.tensor == "w"


def test_support_holds_a_sent_value_that_decodes_to_zero() -> None:
    """Top-3 of 6 keeps -1, 2 and 0.1; 2-bit codes over [-1, 2] decode 0.1 to exactly 0."""
    x = torch.tensor([-1.0, 2.0, 0.1, 0.05, -0.01, 0.02])
    enc = Chain("topk:0.5|q2").encode("w", x)
    values, support = decode_parsed_with_support(parse_tensor(enc.data))
    assert values.tolist() == [-1.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert support is not None and support.dtype == np.bool_
    assert support.tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("ratio", [0.02, 0.5, 0.9, 1.0])  # varint for small ratios, bitmap for large ones
def test_support_is_the_wire_index_set(ratio: float) -> None:
    x = torch.randn(12, 10, generator=torch.Generator().manual_seed(1))
    enc = Chain(f"randk:{ratio}|int8|zlib").encode("w", x, rng=RNG(2))
    p = parse_tensor(enc.data)
    values, support = decode_parsed_with_support(p)
    assert support is not None and support.shape == (12, 10)
    assert int(support.sum()) == p.proto.sparse.count
    assert torch.equal(values, decode_parsed(p))
    assert bool((values[torch.from_numpy(~support)] == 0).all())


def test_dense_tensors_have_no_support() -> None:
    record, _ = encode_state(_state(), "topk:0.1|q4|zlib", rng=RNG(0))
    decoded = decode_with_support(record)
    plain = decode_record(record)
    assert list(decoded) == list(plain)
    assert all(torch.equal(decoded[k][0], plain[k]) for k in plain)
    assert decoded["bn.num_batches_tracked"][1] is None and decoded["mask"][1] is None
    for name in ("conv.weight", "conv.bias"):
        s = decoded[name][1]
        assert s is not None and s.shape == tuple(plain[name].shape)
    dense = decode_all_with_support(parse_record(encode_state(_state(), "int8|zlib")[0])[1])
    assert set(dense) == set(_state()) and all(s is None for _, s in dense.values())


def test_a_header_seen_before_still_checks_its_payload_and_keeps_no_bytes() -> None:
    """Validated headers are remembered (a raw tensor's is the same every round), but each payload is checked
    against the length its header implies, a changed header is validated afresh, and nothing of a payload stays."""
    from fedshrink.compression import wire

    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    data = Chain("raw").encode("w", t).data
    first = wire.parse_tensor(data, name="w")
    again = wire.parse_tensor(Chain("raw").encode("w", t + 1).data, name="w")
    assert again.shape == first.shape and torch.equal(wire.decode_parsed(again), t + 1)
    assert all(len(p.payload) == 0 for p in wire._VALIDATED.values())
    short = wire.serialize_tensor(wire.plain_header("w", (3, 4), "float32"), [bytes(44)], 48)
    with pytest.raises(DecodeError, match="truncated payload"):
        wire.parse_tensor(short, name="w")  # the header seen before, a payload 4 bytes short
    with pytest.raises(DecodeError, match="header names tensor"):
        wire.parse_tensor(data, name="v")  # the name asked for is part of what was checked
    wide = Chain("raw").encode("w", torch.zeros(3, 5)).data
    assert wire.parse_tensor(wide, name="w").shape == (3, 5)


def test_the_numpy_decode_equals_the_torch_decode() -> None:
    from fedshrink.compression.wire import decode_parsed_array, decode_parsed_with_support, parse_tensor

    rng = np.random.default_rng(3)
    for chain, dtype in [("raw", torch.float32), ("raw", torch.float16), ("topk:0.2|int8", torch.float32),
                         ("q4|zlib", torch.float64), ("raw", torch.int64), ("raw", torch.bfloat16),
                         ("raw", torch.bool), ("bitmap", torch.bool)]:
        ints = torch.arange(24).reshape(4, 6)
        t = torch.from_numpy(rng.standard_normal((4, 6))).to(dtype) if dtype.is_floating_point \
            else ints % 3 == 0 if dtype == torch.bool else ints
        p = parse_tensor(Chain(chain).encode("x", t, rng=rng).data)
        array, sent = decode_parsed_array(p)
        tensor, sent_t = decode_parsed_with_support(p)
        assert array.shape == (4, 6) and (sent is None) == (sent_t is None)
        assert np.array_equal(array, tensor.float().numpy() if dtype == torch.bfloat16 else tensor.numpy())
        assert array.dtype == (np.float32 if dtype == torch.bfloat16 else tensor.numpy().dtype)
