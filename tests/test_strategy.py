"""Aggregation: the sample-weighted mean, equal to Flower's FedAvg; bad replies are dropped."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from helpers import FakeGrid

from fedshrink.compression import STYPE, encode_state
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy import FedShrink, weighted_mean


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity(run_id=7):
        yield



def _global(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": rng.normal(size=(4, 3)).astype(np.float32),
        "b": rng.normal(size=(4,)).astype(np.float32),
        "steps": np.array(3, dtype=np.int64),
    }


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _encoded_update(trained: dict[str, np.ndarray], base: dict[str, np.ndarray], chain: str = "raw") -> ArrayRecord:
    update = {k: torch.from_numpy(np.asarray(v - base[k]) if k in base else v) for k, v in trained.items()}
    record, _ = encode_state(update, chain)
    return record


def _reply(
    to: Message,
    arrays: dict[str, np.ndarray] | None,
    metrics: dict[str, int | float],
    *,
    base: dict[str, np.ndarray] | None = None,
    plain: bool = False,
) -> Message:
    """A client's reply: ``arrays`` are the trained tensors; fedshrink sends ``arrays - base`` encoded."""
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = _record(arrays) if plain else _encoded_update(arrays, base or {})
    return Message(content, reply_to=to)


def test_weighted_mean_is_sample_weighted() -> None:
    a = {"x": np.array([0.0, 2.0], np.float32)}
    b = {"x": np.array([4.0, 6.0], np.float32)}
    out = weighted_mean([a, b], [1, 3])
    np.testing.assert_allclose(out["x"], [3.0, 5.0])
    assert out["x"].dtype == np.float32


def test_weighted_mean_rounds_integer_buffers() -> None:
    out = weighted_mean([{"n": np.array(1, np.int64)}, {"n": np.array(4, np.int64)}], [1, 1])
    assert out["n"].dtype == np.int64 and out["n"].shape == () and int(out["n"]) == 2  # rint(2.5) = 2


def test_weighted_mean_refuses_bad_weights() -> None:
    a = {"x": np.zeros(2, np.float32)}
    with pytest.raises(ValueError):
        weighted_mean([a, a], [0, 0])
    with pytest.raises(ValueError):
        weighted_mean([a], [1, 2])
    with pytest.raises(ValueError):
        weighted_mean([], [])


def _round(strategy: FedShrink, nodes: list[int], rng: np.random.Generator) -> tuple[list[Message], dict]:
    glob = _global(rng)
    msgs = list(strategy.configure_train(1, _record(glob), ConfigRecord({"lr": 0.1}), FakeGrid(nodes)))
    return msgs, glob


def test_equals_flower_fedavg_on_same_replies() -> None:
    rng = np.random.default_rng(0)
    ours = FedShrink(min_train_clients=2, min_available_nodes=2)
    msgs, glob = _round(ours, [11, 12, 13, 14], rng)
    assert [m.metadata.dst_node_id for m in msgs] == [11, 12, 13, 14]
    replies, plain = [], []
    for i, msg in enumerate(msgs):
        trained = {k: np.asarray(v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in glob.items()}
        metrics = {"num-examples": 10 * (i + 1), "train-loss": 1.0 / (i + 1)}
        replies.append(_reply(msg, trained, metrics, base=glob))  # fedshrink: encoded update
        plain.append(_reply(msg, trained, metrics, plain=True))  # Flower: plain trained arrays
    mine, my_metrics = ours.aggregate_train(1, replies)
    theirs, their_metrics = FedAvg(fraction_evaluate=0.0).aggregate_train(1, plain)
    assert mine is not None and theirs is not None and my_metrics is not None and their_metrics is not None
    for k in ("w", "b"):  # float tensors: identical to Flower's FedAvg
        np.testing.assert_allclose(mine[k].numpy(), theirs[k].numpy(), rtol=1e-6, atol=1e-6)
    # integer buffers: Flower's FedAvg returns the float mean; fedshrink rounds and keeps dtype and shape
    assert mine["steps"].numpy().dtype == np.int64 and mine["steps"].numpy().shape == ()
    assert mine["steps"].numpy() == np.rint(theirs["steps"].numpy())
    # and both equal the sample-weighted mean computed by hand
    w = np.array([10, 20, 30, 40], np.float64)
    stacked = np.stack([r.content["arrays"]["w"].numpy().astype(np.float64) for r in plain])  # (4, 4, 3)
    hand = np.tensordot(w, stacked, axes=1) / w.sum()
    np.testing.assert_allclose(mine["w"].numpy(), hand, rtol=1e-6)
    assert my_metrics["train-loss"] == pytest.approx(their_metrics["train-loss"])
    assert my_metrics["num-examples"] == 100


def test_sampling_is_deterministic_and_respects_fraction() -> None:
    s = FedShrink(fraction_train=0.5, min_train_clients=2, seed=3)
    nodes = list(range(100, 120))
    a = s.sample_nodes(4, FakeGrid(nodes))  # type: ignore[arg-type]
    b = s.sample_nodes(4, FakeGrid(nodes))  # type: ignore[arg-type]
    assert a == b and len(a) == 10 and set(a) <= set(nodes)
    assert a != s.sample_nodes(5, FakeGrid(nodes))  # type: ignore[arg-type]


def test_sampling_keeps_64_bit_node_ids_exact() -> None:
    nodes = [3509238266224309249, 12395491797872431111, 5]
    s = FedShrink(min_train_clients=3, min_available_nodes=3)
    assert sorted(s.sample_nodes(1, FakeGrid(nodes))) == sorted(nodes)  # type: ignore[arg-type]


def _nan_reply(msg: Message, g: dict[str, np.ndarray]) -> Message:
    """An update whose payload bytes were altered to NaN after encoding."""
    marker = np.float32(1.2345)
    reply = _reply(msg, {k: g[k] + (marker if k == "b" else 0) for k in g}, {"num-examples": 5}, base=g)
    arr = reply.content["arrays"]["b"]
    data = arr.data.replace(marker.tobytes(), np.float32(np.nan).tobytes())
    assert data != arr.data
    reply.content["arrays"]["b"] = Array(dtype=arr.dtype, shape=arr.shape, stype=STYPE, data=data)
    return reply


def _truncated_reply(msg: Message, g: dict[str, np.ndarray]) -> Message:
    reply = _reply(msg, g, {"num-examples": 5}, base=g)
    arr = reply.content["arrays"]["w"]
    reply.content["arrays"]["w"] = Array(dtype=arr.dtype, shape=arr.shape, stype=STYPE, data=arr.data[:-7])
    return reply


BAD_REPLIES = {
    "client error": lambda msg, g: Message(Error(10, "boom"), reply_to=msg),
    "no arrays": lambda msg, g: _reply(msg, None, {"num-examples": 5}),
    "missing num-examples": lambda msg, g: _reply(msg, g, {"train-loss": 1.0}, base=g),
    "zero num-examples": lambda msg, g: _reply(msg, g, {"num-examples": 0}, base=g),
    "wrong shape": lambda msg, g: _reply(msg, {**g, "w": np.zeros((3, 4), np.float32)}, {"num-examples": 5}),
    "wrong dtype": lambda msg, g: _reply(msg, {**g, "w": g["w"].astype(np.float64)}, {"num-examples": 5}, base=g),
    "extra key": lambda msg, g: _reply(msg, {**g, "evil": np.zeros(1, np.float32)}, {"num-examples": 5}, base=g),
    "missing key": lambda msg, g: _reply(msg, {k: v for k, v in g.items() if k != "b"}, {"num-examples": 5}, base=g),
    "plain (unencoded) arrays": lambda msg, g: _reply(msg, g, {"num-examples": 5}, plain=True),
    "nan payload": _nan_reply,
    "truncated payload": _truncated_reply,
}


@pytest.mark.parametrize("kind", sorted(BAD_REPLIES))
def test_bad_reply_is_dropped_with_reason(kind: str) -> None:
    rng = np.random.default_rng(1)
    s = FedShrink(min_train_clients=2, min_available_nodes=2)
    msgs, glob = _round(s, [1, 2, 3], rng)
    good = [_reply(m, glob, {"num-examples": 4, "partition-id": i}, base=glob) for i, m in enumerate(msgs[:2])]
    bad = BAD_REPLIES[kind](msgs[2], glob)
    arrays, metrics = s.aggregate_train(1, [*good, bad])
    assert arrays is not None and metrics is not None
    assert metrics["replies-good"] == 2 and metrics["replies-dropped"] == 1
    dropped = s.outcomes[-1].dropped
    assert len(dropped) == 1 and dropped[0].node_id == 3 and dropped[0].reason
    np.testing.assert_allclose(arrays["w"].numpy(), glob["w"])  # the bad reply did not leak in
    assert s.outcomes[-1].bytes_up > 0 and s.outcomes[-1].bytes_down > 0


def test_reply_from_unknown_node_and_duplicates_are_dropped() -> None:
    rng = np.random.default_rng(2)
    s = FedShrink(min_train_clients=1, min_available_nodes=1)
    msgs, glob = _round(s, [1, 2], rng)
    r1 = _reply(msgs[0], glob, {"num-examples": 3}, base=glob)
    _, metrics = s.aggregate_train(1, [r1, r1])
    assert metrics is not None and metrics["replies-good"] == 1
    reasons = [d.reason for d in s.outcomes[-1].dropped]
    assert any("second reply" in r for r in reasons)
    assert any("no reply" in r for r in reasons)  # node 2 never answered


def test_round_with_too_few_good_replies_is_skipped() -> None:
    rng = np.random.default_rng(3)
    s = FedShrink(min_train_clients=3, min_available_nodes=3)
    msgs, glob = _round(s, [1, 2, 3], rng)
    replies = [_reply(m, glob, {"num-examples": 4}, base=glob) for m in msgs[:2]]
    replies.append(Message(Error(10, "crashed"), reply_to=msgs[2]))
    arrays, metrics = s.aggregate_train(1, replies)
    assert arrays is None
    assert metrics is not None and metrics["replies-good"] == 2
    assert s.outcomes[-1].skipped


def test_constructor_validates() -> None:
    from fedshrink.errors import ConfigError

    with pytest.raises(ConfigError, match="fraction-train"):
        FedShrink(fraction_train=0.0)
    with pytest.raises(ConfigError, match="min-train-clients"):
        FedShrink(min_train_clients=0)


def test_a_non_finite_aggregate_skips_the_round_and_keeps_the_model() -> None:
    class Overflowing(FedShrink):  # as a scaling attack does: finite replies whose aggregate is not
        def refine(self, server_round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: np.full_like(v, np.inf) if k == "w" else v for k, v in arrays.items()}

    rng = np.random.default_rng(4)
    s = Overflowing(min_train_clients=2, min_available_nodes=2)
    msgs, glob = _round(s, [1, 2], rng)
    arrays, metrics = s.aggregate_train(1, [_reply(m, glob, {"num-examples": 4}, base=glob) for m in msgs])
    assert arrays is None and metrics is not None and metrics["replies-good"] == 2
    assert s.outcomes[-1].skipped and "'w' is not finite" in s.outcomes[-1].skip_reason
