"""ResourceMeter and ResourceRecord: honest bytes, rising peak memory, metric round-trips."""

from __future__ import annotations

import mmap
import time

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from torch import nn

from fedshrink.compression.flower import message_nbytes, recorddict_nbytes
from fedshrink.errors import ConfigError, ReplyError
from fedshrink.models import ModelSpec, build_model, count_parameters
from fedshrink.resources import (
    METRIC_KEYS,
    ResourceMeter,
    ResourceRecord,
    fp32_equivalent_nbytes,
    macs_per_sample,
    message_size,
    reply_with_record,
)
from fedshrink.resources.energy import METHOD_ESTIMATED, EnergyProbe
from fedshrink.resources.meter import WIRE_FLOATS, WIRE_INTS
from fedshrink.runner.inprocess import server_identity


def estimating_probe() -> EnergyProbe:
    return EnergyProbe(watts_per_core=10.0, use_rapl=False, use_nvml=False)


def wire_size(message: Message) -> int:
    """What Flower's serde actually produces for the message."""
    return len(message_to_proto(message).SerializeToString())


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_reported_bytes_equal_serialized_sizes() -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10, width=0.5)
    model = build_model(spec)
    with server_identity(77):
        msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                  "config": ConfigRecord({"server-round": 1, "model-spec": spec.to_json()})}),
                      dst_node_id=1001, message_type="train", group_id="1")
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    with ResourceMeter(energy=estimating_probe()) as meter:
        train_steps(model, x, y, 3)
    record = meter.record(bytes_received=message_size(msg), parameters=count_parameters(model),
                          macs_per_sample=macs_per_sample(model, spec.input_shape), samples=96)
    assert record.bytes_received == message_nbytes(msg) == wire_size(msg)

    for start in (0, 127, 16_383, 2**21 - 1):  # whatever was there before
        reply = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                    "metrics": MetricRecord({"num-examples": 32, "partition-id": 0})}),
                        reply_to=msg)
        settled = reply_with_record(reply, record.replace(bytes_sent=start), metrics_key="metrics")
        metrics = reply.content.metric_records["metrics"]
        assert set(metrics) == {"num-examples", "partition-id", WIRE_INTS, WIRE_FLOATS}  # the compact form
        assert all(isinstance(v, float) for v in metrics[WIRE_FLOATS])  # bytes_sent among them: fixed width
        assert metrics["num-examples"] == 32  # the training metrics stay
        sent = ResourceRecord.from_metrics(metrics)
        assert sent == settled
        assert sent.bytes_sent == message_nbytes(reply) == wire_size(reply)
    # and the figure survives Flower's serialization round-trip
    back = message_from_proto(message_to_proto(reply))
    assert ResourceRecord.from_metrics(back.content.metric_records["metrics"]).bytes_sent == wire_size(reply)


def test_fp32_equivalent_is_the_size_of_the_plain_fp32_reply() -> None:
    model = build_model(ModelSpec("mlp", (1, 8, 8), 10))
    with server_identity(78):
        msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict())}), dst_node_id=1,
                      message_type="train", group_id="1")
    state = model.state_dict()
    half = Message(RecordDict({"arrays": ArrayRecord({k: v.half() for k, v in state.items()}),
                               "metrics": MetricRecord({"a": 1})}), reply_to=msg)
    full = Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"a": 1})}), reply_to=msg)
    assert fp32_equivalent_nbytes(half, "arrays", state) == wire_size(full)
    assert wire_size(half) < wire_size(full)


def test_peak_memory_rises_with_a_larger_model() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4096, 1, 28, 28), torch.randint(0, 10, (4096,))
    peaks = {}
    for width in (0.25, 4.0):  # hidden layers 64/32 against 1024/512 units
        model = build_model(ModelSpec("mlp", (1, 28, 28), 10, width=width))
        with ResourceMeter(energy=estimating_probe()) as meter:
            train_steps(model, x, y, 3)
        assert meter.reading is not None
        peaks[width] = meter.reading
        del model
    small, large = peaks[0.25], peaks[4.0]
    # activations alone: 4096 x (1024 + 512) floats ~ 25 MB per copy, weights + grads + momentum ~ 10 MB
    assert large.peak_increase_bytes > small.peak_increase_bytes + 20 * 2**20
    assert large.peak_rss_bytes > small.peak_rss_bytes
    assert large.peak_rss_bytes >= large.rss_start_bytes > 0


def test_the_sampler_alone_sees_the_rise() -> None:
    """Without the kernel high-water reset, the 10 ms sampler still catches a held allocation."""
    with ResourceMeter(energy=estimating_probe(), reset_high_water=False, sample_interval=0.005) as meter:
        assert meter.sample is None  # the sampler starts by itself when the reset is off
        block = mmap.mmap(-1, 64 * 2**20)  # fresh pages, outside any allocator cache
        block.write(b"\x01" * len(block))  # touched: resident
        time.sleep(0.1)
        block.close()
    r = meter.reading
    assert r is not None and r.samples_taken >= 5 and "sampled" in r.peak_method
    assert r.peak_increase_bytes > 48 * 2**20


def test_time_cpu_and_estimated_energy() -> None:
    with ResourceMeter(energy=estimating_probe()) as meter:
        cpu_end = time.process_time() + 0.1  # busy until this process has used 0.1 s of CPU, however loaded
        while time.process_time() < cpu_end:
            pass
    r = meter.reading
    assert r is not None
    assert r.cpu_seconds >= 0.1 and r.wall_seconds >= 0.1
    assert r.energy_method == METHOD_ESTIMATED
    assert r.energy_joules == pytest.approx(r.cpu_seconds * 10.0)


def test_record_round_trip_through_a_metric_record() -> None:
    with ResourceMeter(energy=estimating_probe()) as meter:
        pass
    rec = meter.record(bytes_received=123, bytes_sent=456, bytes_sent_fp32=789, parameters=10,
                       macs_per_sample=625_920, samples=64)
    assert rec.train_flops == 3 * 2 * 625_920 * 64
    metrics = rec.to_metrics()
    assert set(metrics) == set(METRIC_KEYS.values())
    assert all(type(v) in (int, float) for v in metrics.values())
    assert ResourceRecord.from_metrics(MetricRecord(metrics)) == rec
    assert rec.energy_estimated and "estimated" in rec.energy_label


def test_validation() -> None:
    with ResourceMeter(energy=estimating_probe()) as meter:
        pass
    good = meter.record(bytes_received=1, parameters=1, macs_per_sample=1, samples=1)
    for bad in ({"bytes_sent": -1}, {"wall_seconds": float("nan")}, {"energy_method": 42},
                {"parameters": 1.5}, {"peak_rss_bytes": True}):
        with pytest.raises(ConfigError):
            good.replace(**bad)
    metrics = good.to_metrics()
    del metrics["res-bytes-up"]
    with pytest.raises(ReplyError, match="res-bytes-up"):
        ResourceRecord.from_metrics(metrics)
    with pytest.raises(ReplyError):
        ResourceRecord.from_metrics({**good.to_metrics(), "res-cpu-s": -1.0})
    with pytest.raises(ConfigError):
        ResourceMeter(sample_interval=0)
    with pytest.raises(RuntimeError):
        ResourceMeter(energy=estimating_probe()).record(bytes_received=1, parameters=1, macs_per_sample=1,
                                                        samples=1)


def test_wire_form_is_compact_and_exact() -> None:
    """A reply's resource record: two lists, far smaller than the named keys, read back to the same record."""
    rec = ResourceRecord(0.25, 0.5, 10**9, 9 * 10**8, 0, 123_456, 5_432, 446_800, 110_922, 625_920, 174, 6.5e8,
                         0.9, 1)
    wire, named = rec.to_wire(), rec.to_metrics()
    assert ResourceRecord.from_metrics(MetricRecord(wire)) == rec == ResourceRecord.from_metrics(MetricRecord(named))
    assert recorddict_nbytes(RecordDict({"m": MetricRecord(wire)})) < \
        recorddict_nbytes(RecordDict({"m": MetricRecord(named)})) / 3
    for bad in ({**wire, WIRE_INTS: wire[WIRE_INTS][:-1]}, {**wire, WIRE_FLOATS: [1.0]},
                {**wire, WIRE_INTS: [-1, *list(wire[WIRE_INTS][1:])]}):
        with pytest.raises(ReplyError):
            ResourceRecord.from_metrics(bad)
