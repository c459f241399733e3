"""Carriage in Flower records and messages, both directions, and byte accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict
from flwr.app.message.message import make_message
from flwr.common.serde import message_from_proto, message_to_proto
from torch import nn

from fedshrink.compression import (
    FLAT_KEY,
    STYPE,
    UPDATE_KEY,
    Chain,
    DecodeLimits,
    FlatLayout,
    ResidualStore,
    decode_record,
    decode_reply,
    encode_state,
    message_nbytes,
    read_update,
    recorddict_nbytes,
)
from fedshrink.errors import ConfigError, DecodeError, ReplyError


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 10)


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in TinyNet().state_dict().items()}


def _message(content: RecordDict) -> Message:
    md = Metadata(
        run_id=1,
        message_id="",
        src_node_id=1,
        dst_node_id=2,
        reply_to_message_id="",
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )
    return make_message(metadata=md, content=content)


@pytest.mark.parametrize("text", ["raw", "fp16|zlib", "topk:0.1|int8|zlib", "q4:axis=0", "sign"])
def test_state_roundtrip_through_a_message(text: str) -> None:
    state = _state()
    record, nbytes = encode_state(state, text, fragment="frag-2", round=7, rng=np.random.default_rng(0))
    assert all(record[k].stype == STYPE for k in state)
    msg = _message(RecordDict({"arrays": record, "config": ConfigRecord({"lr": 0.1})}))
    wire = message_to_proto(msg).SerializeToString()  # through Flower's own serde
    back = message_from_proto(type(message_to_proto(msg)).FromString(wire))
    tensors = decode_reply(back)
    assert list(tensors) == list(state)
    for k, v in state.items():
        assert tensors[k].dtype == v.dtype and tensors[k].shape == v.shape
    assert torch.equal(tensors["bn.num_batches_tracked"], state["bn.num_batches_tracked"])
    if text == "raw":
        assert all(torch.equal(tensors[k], v) for k, v in state.items())
    update = read_update(record)
    assert (update.fragment, update.round, update.direction) == ("frag-2", 7, "uplink")
    assert update.chain == Chain.parse(text).config.to_string()
    payload = sum(len(a.data) for a in record.values())
    assert nbytes == payload
    assert payload < message_nbytes(msg) < payload + 2000
    assert message_nbytes(msg) == len(wire)
    assert message_nbytes(msg, mode="objects") >= message_nbytes(msg)
    assert recorddict_nbytes(msg.content) < message_nbytes(msg)


def test_downlink_has_its_own_chain_and_compresses() -> None:
    state = _state()
    raw_msg = _message(RecordDict({"arrays": encode_state(state, "raw", direction="downlink")[0]}))
    down, _ = encode_state(state, "fp16", direction="downlink")
    up, _ = encode_state(state, "topk:0.05|q4|zlib", residuals=ResidualStore())
    assert read_update(down).direction == "downlink"
    n_raw = message_nbytes(raw_msg)
    n_down = message_nbytes(_message(RecordDict({"arrays": down})))
    n_up = message_nbytes(_message(RecordDict({"arrays": up})))
    assert n_up < n_down < 0.6 * n_raw
    model = TinyNet()
    model.load_state_dict(decode_record(down))  # the client loads the decoded downlink


def test_error_reply_and_missing_record() -> None:
    msg = _message(RecordDict({"metrics": ConfigRecord({"a": 1})}))
    with pytest.raises(ReplyError, match="no record"):
        decode_reply(msg)
    with pytest.raises(ReplyError, match="not an ArrayRecord"):
        decode_reply(msg, key="metrics")


def _tamper(record: ArrayRecord, key: str, **changes: object) -> ArrayRecord:
    arr = record[key]
    fields = {"dtype": arr.dtype, "shape": tuple(arr.shape), "stype": arr.stype, "data": arr.data, **changes}
    out = ArrayRecord({k: v for k, v in record.items()})
    out[key] = Array(**fields)  # type: ignore[call-overload]
    return out


def test_record_faults() -> None:
    record, _ = encode_state(_state(), "int8")
    with pytest.raises(DecodeError, match="stype") as info:
        decode_record(_tamper(record, "fc.weight", stype="numpy.ndarray"))
    assert info.value.tensor == "fc.weight"
    with pytest.raises(DecodeError, match="header says"):
        decode_record(_tamper(record, "fc.weight", shape=(10, 289)))
    with pytest.raises(DecodeError, match="header names tensor"):
        decode_record(_tamper(record, "fc.weight", data=record["fc.bias"].data))
    with pytest.raises(DecodeError, match="total"):
        decode_record(record, limits=DecodeLimits(max_total_numel=1000))
    with pytest.raises(DecodeError, match="bytes exceed"):
        decode_record(record, limits=DecodeLimits(max_record_bytes=1000))
    with pytest.raises(ConfigError):
        DecodeLimits(max_numel=0)
    with pytest.raises(DecodeError, match="arrays exceed"):
        decode_record(record, limits=DecodeLimits(max_tensors=2))
    missing = ArrayRecord({k: v for k, v in record.items() if k != "fc.bias"})
    with pytest.raises(DecodeError, match="tensor names"):
        decode_record(missing)
    with pytest.raises(DecodeError, match="malformed TensorUpdate"):
        decode_record(_tamper(record, UPDATE_KEY, data=b"\xff\xff"))


def test_encode_state_validates() -> None:
    with pytest.raises(ConfigError):
        encode_state({"w": torch.ones(2)}, "int8", direction="sideways")
    with pytest.raises(ConfigError):
        encode_state({UPDATE_KEY: torch.ones(2)}, "int8")
    with pytest.raises(ConfigError):
        message_nbytes(_message(RecordDict()), mode="bits")


def test_flat_chain_sends_one_vector_with_one_topk() -> None:
    """``flat|``: the float tensors as one vector under one header; the int counter apart; a top-k over all."""
    state = _state()
    state["bn.num_batches_tracked"] = torch.tensor(7)
    flat, flat_nbytes = encode_state(state, "flat|topk:0.05|int8|zstd", round=2)
    _per_tensor, per_tensor_nbytes = encode_state(state, "topk:0.05|int8|zstd", round=2)
    assert list(flat) == ["bn.num_batches_tracked", FLAT_KEY, UPDATE_KEY]
    assert flat_nbytes < per_tensor_nbytes
    layout = FlatLayout.of(state)
    assert "bn.num_batches_tracked" not in layout.offsets and layout.numel == sum(
        v.numel() for v in state.values() if v.is_floating_point())
    decoded = decode_record(flat)
    assert decoded["bn.num_batches_tracked"].item() == 7
    parts = layout.split(decoded[FLAT_KEY].numpy())
    whole = torch.cat([v.reshape(-1) for k, v in state.items() if v.is_floating_point()])
    kept = np.flatnonzero(decoded[FLAT_KEY].numpy())
    assert kept.size == math.ceil(0.05 * whole.numel())  # one top-k over the whole update
    assert np.abs(whole.numpy()[kept]).min() >= np.abs(np.delete(whole.numpy(), kept)).max()
    for name, part in parts.items():
        assert part.shape == tuple(state[name].shape)
        sent = part != 0
        np.testing.assert_allclose(part[sent], state[name].numpy()[sent], atol=float(whole.abs().max()) / 100)
    header = read_update(flat)
    assert header.chain == "flat|topk:0.05|quant:8|zstd:1"


def test_flat_chain_keeps_one_residual() -> None:
    state = _state()
    store = ResidualStore()
    encode_state(state, "flat|topk:0.01|int8", residuals=store)
    assert list(store) == [FLAT_KEY]
    residual = store.get(FLAT_KEY)
    assert residual is not None and residual.shape == (FlatLayout.of(state).numel,)


def test_flat_layout_digest_names_the_layout() -> None:
    state = _state()
    a = FlatLayout.of(state)
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()}
    b = FlatLayout.expected({k: tuple(v.shape) for k, v in state.items()}, dtypes)
    assert "bn.num_batches_tracked" in state and "bn.num_batches_tracked" not in b.offsets
    assert a.digest == b.digest
    renamed = dict(zip(["x", *list(state)[1:]], state.values(), strict=True))
    assert FlatLayout.of(renamed).digest != a.digest
    with pytest.raises(ConfigError, match="flat"):
        encode_state({FLAT_KEY: torch.zeros(2)}, "raw")
