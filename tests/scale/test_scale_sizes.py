"""Byte counts by protobuf arithmetic equal Flower's own serialization, for any content."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto, recorddict_to_proto

from fedshrink.compression import Chain, encode_state, message_nbytes, recorddict_nbytes
from fedshrink.resources import fp32_equivalent_nbytes
from fedshrink.runner.inprocess import server_identity


def _contents() -> list[RecordDict]:
    rng = np.random.default_rng(0)
    state = {"conv.weight": torch.randn(8, 1, 3, 3), "fc.bias": torch.randn(10), "steps": torch.tensor(7),
             "empty": torch.zeros(0, 4), "big": torch.randn(300, 50), "mask": torch.ones(3, dtype=torch.bool)}
    encoded, _ = encode_state({k: v for k, v in state.items() if v.is_floating_point()}, Chain("topk:0.1|int8|zstd"),
                              round=3, rng=rng)
    custom = ArrayRecord()
    custom["raw"] = Array(dtype="float32", shape=(2, 3), stype="x", data=b"\0" * 24)
    custom["no-stype"] = Array(dtype="", shape=(), stype="", data=b"")
    custom["ünïcode"] = Array(dtype="int8", shape=(1, 200, 70000), stype="fedshrink.v1", data=bytes(range(256)) * 9)
    return [
        RecordDict(),
        RecordDict({"arrays": ArrayRecord(state)}),
        RecordDict({"arrays": encoded, "metrics": MetricRecord({"a": 1, "b": 2.5, "c": [1, 2]})}),
        RecordDict({"cfg": ConfigRecord({"s": "x" * 300, "b": b"yz", "t": True, "l": [1.0, 2.0]}), "z": custom}),
        RecordDict({"": ArrayRecord(), "m": MetricRecord()}),
    ]


@pytest.mark.parametrize("index", range(5))
def test_message_and_content_sizes_equal_flower_serialization(index: int) -> None:
    content = _contents()[index]
    assert recorddict_nbytes(content) == recorddict_to_proto(content).ByteSize()
    with server_identity(9):
        msg = Message(content, dst_node_id=12345678901234, message_type="train", group_id="3")
        assert message_nbytes(msg) == message_to_proto(msg).ByteSize()
        reply = Message(content, reply_to=msg)
        assert message_nbytes(reply) == message_to_proto(reply).ByteSize()
        error = Message(Error(10, "boom"), reply_to=msg)
        assert message_nbytes(error) == message_to_proto(error).ByteSize()


def test_fp32_equivalent_is_the_size_with_plain_fp32_arrays() -> None:
    trained = {"w": torch.randn(64, 32), "b": torch.randn(32).half(), "n": torch.tensor(3)}
    update, _ = encode_state(trained, Chain("q4|zstd"), round=1, rng=np.random.default_rng(1))
    with server_identity(9):
        query = Message(RecordDict(), dst_node_id=5, message_type="train")
        reply = Message(RecordDict({"arrays": update, "metrics": MetricRecord({"k": 1})}), reply_to=query)
    plain = RecordDict({"arrays": ArrayRecord({k: v.float() if v.is_floating_point() else v for k, v in
                                               trained.items()}), "metrics": MetricRecord({"k": 1})})
    proto = message_to_proto(reply)
    proto.content.CopyFrom(recorddict_to_proto(plain))
    assert fp32_equivalent_nbytes(reply, "arrays", trained) == proto.ByteSize()
    assert fp32_equivalent_nbytes(reply, "arrays", trained) > message_nbytes(reply)  # q4 is smaller


def test_metric_and_config_record_sizes_follow_flower_for_every_value_type() -> None:
    """Each value type Flower's serde knows, with the edges of its encoding: zigzag, uint64, empty lists, unicode."""
    from flwr.common.serde import config_record_to_proto, metric_record_to_proto

    from fedshrink.compression.flower import record_nbytes

    ints = [0, 1, -1, 63, -64, 64, 2**31, -(2**31), 2**63 - 1, -(2**63), 2**63, 2**64 - 1]
    metrics = MetricRecord({f"i{n}": n for n in ints} | {"f": 0.0, "g": -3.5, "empty": [], "fl": [1.5, 2.0],
                                                          "il": [0, -1, 300, -(2**40)], "ul": [1, 2**63 + 5],
                                                          "ключ": 7, "long" * 40: 1})
    assert record_nbytes(metrics) == metric_record_to_proto(metrics).ByteSize()
    config = ConfigRecord({"t": True, "f": False, "s": "", "u": "ünï" * 50, "by": b"", "bb": b"x" * 200,
                           "empty": [], "bl": [True, False], "sl": ["a", "", "ß" * 70], "byl": [b"", b"12"],
                           "il": [3, -3], "fl": [0.25], "n": -(2**63), "big": 2**64 - 1, "x": 2.0})
    assert record_nbytes(config) == config_record_to_proto(config).ByteSize()
    assert record_nbytes(MetricRecord()) == 0 == metric_record_to_proto(MetricRecord()).ByteSize()
