"""The strategy: FedAvg equal to Flower's on the same replies; sampling; bad replies dropped with a reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from strategy_harness import HelloGrid, first_round, make_strategy, model_state, reply_to, zero_update

from fedshrink.compression import FLAT_KEY, STYPE
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy.batch import UpdateBatch
from fedshrink.strategy.rounds import sample_nodes, wanted_clients
from fedshrink.strategy.stages import holder_mean


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity(run_id=7):
        yield


def test_holder_mean_is_sample_weighted_over_holders() -> None:
    batch = UpdateBatch.simple([[0.0, 2.0, 9.0], [4.0, 6.0, 1.0]], held=[[1, 1, 0], [1, 1, 1]], weights=[1, 3])
    mean, voted = holder_mean(batch)
    np.testing.assert_allclose(mean, [3.0, 5.0, 1.0])  # the third coordinate: only client 2 held it
    assert voted.all()


def test_equals_flower_fedavg_on_same_replies() -> None:
    rng = np.random.default_rng(0)
    glob = model_state()
    s = make_strategy(min_train_clients=2)
    msgs = first_round(s, HelloGrid([11, 12, 13, 14]), glob)
    assert [m.metadata.dst_node_id for m in msgs] == [11, 12, 13, 14]
    ours, flowers = [], []
    for i, msg in enumerate(msgs):
        trained = {k: (v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in glob.items()}
        update = {k: trained[k] - glob[k] for k in glob}
        ours.append(reply_to(msg, update, pid=i, n=10 * (i + 1), loss=1.0 / (i + 1)))
        metrics = MetricRecord({"num-examples": 10 * (i + 1), "train-loss": 1.0 / (i + 1)})
        flowers.append(Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
                                           "metrics": metrics}), reply_to=msg))
    mine, my_metrics = s.aggregate_train(1, ours)
    theirs, their_metrics = FedAvg(fraction_evaluate=0.0).aggregate_train(1, flowers)
    assert mine is not None and theirs is not None and my_metrics is not None and their_metrics is not None
    for k in glob:
        np.testing.assert_allclose(mine[k].numpy(), theirs[k].numpy(), rtol=1e-6, atol=1e-6)
    assert my_metrics["train-loss"] == pytest.approx(their_metrics["train-loss"])
    assert my_metrics["num-examples"] == 100


def test_sampling_is_deterministic_and_respects_fraction() -> None:
    nodes = {n: n - 100 for n in range(100, 120)}  # node id -> partition id
    k = wanted_clients(len(nodes), 0.5, 2)
    a = sample_nodes(nodes, k, 3, 4)
    assert a == sample_nodes(nodes, k, 3, 4) and len(a) == 10 and set(a) <= set(nodes)
    assert a != sample_nodes(nodes, k, 3, 5)
    assert wanted_clients(20, 0.1, 3) == 3 and wanted_clients(1000, 1.0, 2, per_round=50) == 50
    big = {3509238266224309249: 1, 12395491797872431111: 2, 5: 0}  # 64-bit node ids stay exact
    assert sample_nodes(big, 3, 0, 1) == [5, 3509238266224309249, 12395491797872431111]  # partition order


def test_sampling_draws_partitions_whatever_the_node_ids() -> None:
    """Two engines' node ids for the same ten partitions (in process: 1001...; Ray: random 64-bit) sample the
    same partitions for the same seed, in the pure function and through configure_train."""
    rng = np.random.default_rng(11)
    engines = [list(range(1001, 1011)), [int(i) for i in rng.integers(1, 2**63, size=10)]]  # position = partition
    assert sorted(engines[1]) != engines[1]  # the second engine's id order is not the partition order
    glob = model_state()
    for rnd in (1, 2, 3):
        drawn = [[ids.index(n) for n in sample_nodes({n: ids.index(n) for n in ids}, 4, 5, rnd)] for ids in engines]
        assert drawn[0] == drawn[1] and len(drawn[0]) == 4
        sent = []
        for ids in engines:
            grid = HelloGrid(ids)
            msgs = first_round(make_strategy(clients_per_round=4, seed=5), grid, glob, rnd)
            sent.append(sorted(ids.index(m.metadata.dst_node_id) for m in msgs))
        assert sent[0] == sent[1] == drawn[0]
    assert len({tuple(sample_nodes({n: n for n in range(10)}, 4, 5, r)) for r in (1, 2, 3)}) > 1  # rounds differ


def _with_metric(key: str, value: object) -> Callable[[Message, dict, int], Message]:
    return lambda msg, shapes, pid: reply_to(msg, zero_update(shapes), pid=pid, metrics={key: value})


def _nan_payload(msg: Message, shapes: dict, pid: int) -> Message:
    marker = np.float32(1.2345)
    update = zero_update(shapes)
    key = next(iter(update))
    update[key].reshape(-1)[0] = marker
    reply = reply_to(msg, update, pid=pid)
    arr = reply.content["arrays"][key]
    data = arr.data.replace(marker.tobytes(), np.float32(np.nan).tobytes())
    reply.content["arrays"][key] = Array(dtype=arr.dtype, shape=arr.shape, stype=STYPE, data=data)
    return reply


def _truncated(msg: Message, shapes: dict, pid: int) -> Message:
    reply = reply_to(msg, zero_update(shapes), pid=pid)
    key = next(iter(shapes))
    arr = reply.content["arrays"][key]
    reply.content["arrays"][key] = Array(dtype=arr.dtype, shape=arr.shape, stype=STYPE, data=arr.data[:-7])
    return reply


def _reshaped(msg: Message, shapes: dict, pid: int) -> Message:
    update = zero_update(shapes)
    key = next(iter(update))
    update[key] = update[key].reshape(-1)
    return reply_to(msg, update, pid=pid)


def _without_arrays(msg: Message, shapes: dict, pid: int) -> Message:
    reply = reply_to(msg, zero_update(shapes), pid=pid)
    del reply.content["arrays"]
    return reply


def _plain(msg: Message, shapes: dict, pid: int) -> Message:
    reply = reply_to(msg, zero_update(shapes), pid=pid)
    reply.content["arrays"] = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in shapes.items()})
    return reply


BAD_REPLIES: dict[str, Callable[[Message, dict, int], Message]] = {
    "client error": lambda msg, shapes, pid: Message(Error(10, "boom"), reply_to=msg),
    "no arrays": _without_arrays,
    "zero num-examples": _with_metric("num-examples", 0),
    "float num-examples": _with_metric("num-examples", 5.0),
    "nan partition-id": _with_metric("partition-id", float("nan")),
    "inf partition-id": _with_metric("partition-id", float("inf")),
    "another partition": _with_metric("partition-id", 0),
    "nan train-loss": _with_metric("train-loss", float("nan")),
    "negative resource figure": lambda msg, shapes, pid: reply_to(msg, zero_update(shapes), pid=pid, metrics={
        "res-i": [-1] * 9, "res-f": [0.0] * 5}),
    "nan in the resource lists": _with_metric("res-f", [float("nan")] * 5),
    "short resource list": _with_metric("res-i", [1, 2]),
    "wrong shape": _reshaped,
    "extra key": lambda msg, shapes, pid: reply_to(msg, {**zero_update(shapes), "evil": np.zeros(1, np.float32)},
                                                   pid=pid),
    "missing key": lambda msg, shapes, pid: reply_to(msg, dict(list(zero_update(shapes).items())[1:]), pid=pid),
    "other chain": lambda msg, shapes, pid: reply_to(msg, zero_update(shapes), pid=pid, chain="fp16"),
    "plain (unencoded) arrays": _plain,
    "nan payload": _nan_payload,
    "truncated payload": _truncated,
}


@pytest.mark.parametrize("kind", sorted(BAD_REPLIES))
def test_bad_reply_is_dropped_with_reason(kind: str) -> None:
    glob = model_state()
    shapes = {k: v.shape for k, v in glob.items()}
    s = make_strategy(min_train_clients=2)
    msgs = first_round(s, HelloGrid([1, 2, 3]), glob)
    good = [reply_to(m, zero_update(shapes), pid=i) for i, m in enumerate(msgs[:2])]
    arrays, metrics = s.aggregate_train(1, [*good, BAD_REPLIES[kind](msgs[2], shapes, 2)])
    assert arrays is not None and metrics is not None
    assert metrics["replies-good"] == 2 and metrics["replies-dropped"] == 1
    dropped = s.outcomes[-1].dropped
    assert len(dropped) == 1 and dropped[0].node_id == 3 and dropped[0].partition_id == 2 and dropped[0].reason
    for k in glob:
        np.testing.assert_array_equal(arrays[k].numpy(), glob[k])  # the bad reply did not leak in
    assert s.outcomes[-1].bytes_up > 0 and s.outcomes[-1].bytes_down > 0


def test_reply_from_unknown_node_and_duplicates_are_dropped() -> None:
    glob = model_state()
    s = make_strategy(min_train_clients=1)
    msgs = first_round(s, HelloGrid([1, 2]), glob)
    r1 = reply_to(msgs[0], zero_update({k: v.shape for k, v in glob.items()}), pid=0)
    _, metrics = s.aggregate_train(1, [r1, r1])
    assert metrics is not None and metrics["replies-good"] == 1
    reasons = [d.reason for d in s.outcomes[-1].dropped]
    assert any("second reply" in r for r in reasons) and any("no reply" in r for r in reasons)


def test_round_with_too_few_good_replies_is_skipped() -> None:
    glob = model_state()
    s = make_strategy(min_train_clients=3)
    msgs = first_round(s, HelloGrid([1, 2, 3]), glob)
    replies = [reply_to(m, zero_update({k: v.shape for k, v in glob.items()}), pid=i) for i, m in enumerate(msgs[:2])]
    replies.append(Message(Error(10, "crashed"), reply_to=msgs[2]))
    arrays, metrics = s.aggregate_train(1, replies)
    assert arrays is None and metrics is not None and metrics["replies-good"] == 2
    assert s.outcomes[-1].skipped


def test_a_non_finite_aggregate_skips_the_round_and_keeps_the_model() -> None:
    class Overflow:  # as a scaling attack does: finite replies whose aggregate is not
        name = "overflow"

        def refine(self, server_round: int, state: dict, widths: object) -> dict:
            return {k: np.full_like(v, np.inf) for k, v in state.items()}

    glob = model_state()
    s = make_strategy(min_train_clients=2, refiners=[Overflow()])
    msgs = first_round(s, HelloGrid([1, 2]), glob)
    replies = [reply_to(m, zero_update({k: v.shape for k, v in glob.items()}), pid=i) for i, m in enumerate(msgs)]
    arrays, metrics = s.aggregate_train(1, replies)
    assert arrays is None and metrics is not None and metrics["replies-good"] == 2
    assert s.outcomes[-1].skipped and "is not finite" in s.outcomes[-1].skip_reason


def test_flat_uplink_is_split_along_the_fragment_sent() -> None:
    """A ``flat|`` chain's reply: one vector, split back into the tensors sent; a reply whose layout is not the
    one sent (tensors reordered) is dropped, naming the layout."""
    glob = model_state()
    shapes = {k: v.shape for k, v in glob.items()}
    s = make_strategy(min_train_clients=1, uplink="flat|int8")
    msgs = first_round(s, HelloGrid([1, 2]), glob)
    update = {k: np.full(v, 0.25, np.float32) for k, v in shapes.items()}
    good = reply_to(msgs[0], update, pid=0)
    assert FLAT_KEY in good.content["arrays"]
    reordered = reply_to(msgs[1], dict(reversed(list(update.items()))), pid=1)
    arrays, metrics = s.aggregate_train(1, [good, reordered])
    assert arrays is not None and metrics is not None and metrics["replies-good"] == 1
    assert "layout" in s.outcomes[-1].dropped[0].reason
    for k in glob:
        np.testing.assert_allclose(arrays[k].numpy(), glob[k] + 0.25, atol=1e-6)
