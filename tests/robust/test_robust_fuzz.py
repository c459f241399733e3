"""100,000 fuzzed and mutated replies through the server's reply path: decode, validation, guards, aggregation.

Replies are built cheaply from a few valid encoded updates: their serialized
tensor bytes are flipped, truncated, extended or replaced; tensors are
dropped, added, reshaped, retyped, filled with NaN/Inf or huge values; metrics
are broken; replies are errors, duplicates, from nodes never asked, or over
the size cap. No round may crash, every reply that must be refused is dropped
with a reason, and the global model stays finite and near the honest updates.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from helpers import FakeGrid

from fedshrink.compression import encode_state
from fedshrink.robust.defences import MedianConfig
from fedshrink.robust.wrappers import NormClipping, RobustAggregation
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy import FedShrink, numpy_to_record
from fedshrink.strategy.replies import ARRAYS_KEY, METRICS_KEY

TOTAL = int(os.environ.get("FEDSHRINK_FUZZ_REPLIES", "100000"))
PER_ROUND = 2_500
CAP = 3_000  # max-reply-bytes: a valid reply is about 700 bytes
SHAPES = {"w": (4, 3), "b": (4,)}
HONEST_STD = 0.01


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    logger = logging.getLogger("fedshrink.strategy")
    level = logger.level
    logger.setLevel(logging.ERROR)  # one warning per dropped reply would be 100,000 log records
    try:
        with server_identity(run_id=21):
            yield
    finally:
        logger.setLevel(level)



def _encode(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    rec, _ = encode_state({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, "raw")
    return rec


class Pool:
    """A few valid and a few crafted encoded updates, reused for every reply."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.valid = [_encode({k: rng.normal(0, HONEST_STD, s).astype(np.float32) for k, s in SHAPES.items()})
                      for _ in range(16)]
        self.wrong_shape = _encode({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)})
        self.wrong_dtype = _encode({k: np.zeros(s, np.float64) for k, s in SHAPES.items()})
        self.extra = _encode({**{k: np.zeros(s, np.float32) for k, s in SHAPES.items()},
                              "x": np.zeros(2, np.float32)})
        self.missing = _encode({"w": np.zeros((4, 3), np.float32)})
        self.wrong_stype = _with(self.valid[0], "w", self.valid[0]["w"].data, "numpy")
        self.padded = MetricRecord({"num-examples": 10, "partition-id": 0, "padding": [0.0] * 600})
        self.huge = _encode({k: np.full(s, 1e30, np.float32) for k, s in SHAPES.items()})
        marker = (np.arange(1, 13, dtype=np.float32) * 1e-3).reshape(4, 3)
        base = _encode({"w": marker, "b": np.zeros(4, np.float32)})
        self.non_finite = []
        for bad in (np.nan, np.inf, -np.inf):
            arr = base["w"]
            data = arr.data
            at = data.find(marker.tobytes())
            assert at > 0
            poisoned = data[:at] + np.full(12, bad, np.float32).tobytes() + data[at + 48:]
            rec = ArrayRecord({k: base[k] for k in base.keys()})
            rec["w"] = Array(dtype=arr.dtype, shape=tuple(arr.shape), stype=arr.stype, data=poisoned)
            self.non_finite.append(rec)
        _POOLED.update(id(r) for r in [*self.valid, *self.non_finite, self.wrong_shape, self.wrong_dtype, self.extra,
                                       self.missing, self.huge, self.wrong_stype])


def _with(record: ArrayRecord, key: str, data: bytes, stype: str | None = None) -> ArrayRecord:
    out = ArrayRecord({k: record[k] for k in record.keys()})
    arr = record[key]
    out[key] = Array(dtype=arr.dtype, shape=tuple(arr.shape), stype=stype or arr.stype, data=data)
    return out


_METRICS: dict[tuple[object, int], MetricRecord] = {}
_CONTENT: dict[tuple[int, int], RecordDict] = {}
_POOLED: set[int] = set()  # ids of the pool's records (kept alive by the pool)


def _metrics(n: object = 10, pid: int = 0) -> MetricRecord:
    """Records are shared between replies (the server only reads them): building Flower records is the slow part."""
    key = (n, pid % 64)
    if key not in _METRICS:
        _METRICS[key] = MetricRecord({"num-examples": n, "partition-id": key[1]})  # type: ignore[dict-item]
    return _METRICS[key]


Build = Callable[[Message, np.random.Generator, Pool, int], list[Message]]


def _reply(msg: Message, arrays: ArrayRecord | None, metrics: MetricRecord | None) -> Message:
    key = (id(arrays), id(metrics))
    content = _CONTENT.get(key)
    if content is None:
        content = RecordDict()
        if arrays is not None:
            content[ARRAYS_KEY] = arrays
        if metrics is not None:
            content[METRICS_KEY] = metrics
        if arrays is None or id(arrays) in _POOLED:  # one-off mutated records are not cached
            _CONTENT[key] = content
    return Message(content, reply_to=msg)


def _pick(rng: np.random.Generator, pool: Pool) -> ArrayRecord:
    return pool.valid[int(rng.integers(len(pool.valid)))]


def _bytes_mutation(kind: str) -> Build:
    def build(msg: Message, rng: np.random.Generator, pool: Pool, pid: int) -> list[Message]:
        rec = _pick(rng, pool)
        key = ("w", "b", "_fedshrink_update")[int(rng.integers(3))]
        data = bytearray(rec[key].data)
        if kind == "flip":
            for i in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
                data[int(i)] ^= int(rng.integers(1, 256))
        elif kind == "truncate":
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == "extend":
            data += rng.bytes(int(rng.integers(1, 64)))
        else:  # garbage
            data = bytearray(rng.bytes(int(rng.integers(0, 200))))
        return [_reply(msg, _with(rec, key, bytes(data)), _metrics(10, pid))]
    return build


def _fixed(make: Callable[[Message, np.random.Generator, Pool, int], Message]) -> Build:
    return lambda msg, rng, pool, pid: [make(msg, rng, pool, pid)]


MUST_DROP: dict[str, Build] = {
    "wrong-shape": _fixed(lambda m, r, p, i: _reply(m, p.wrong_shape, _metrics(10, i))),
    "wrong-dtype": _fixed(lambda m, r, p, i: _reply(m, p.wrong_dtype, _metrics(10, i))),
    "extra-tensor": _fixed(lambda m, r, p, i: _reply(m, p.extra, _metrics(10, i))),
    "missing-tensor": _fixed(lambda m, r, p, i: _reply(m, p.missing, _metrics(10, i))),
    "nan-inf": _fixed(lambda m, r, p, i: _reply(m, p.non_finite[int(r.integers(3))], _metrics(10, i))),
    "huge": _fixed(lambda m, r, p, i: _reply(m, p.huge, _metrics(10, i))),
    "wrong-stype": _fixed(lambda m, r, p, i: _reply(m, p.wrong_stype, _metrics(10, i))),
    "bad-count": _fixed(lambda m, r, p, i: _reply(m, _pick(r, p), _metrics([0, -3, 2.5][int(r.integers(3))], i))),
    "no-metrics": _fixed(lambda m, r, p, i: _reply(m, _pick(r, p), None)),
    "no-arrays": _fixed(lambda m, r, p, i: _reply(m, None, _metrics(10, i))),
    "error": _fixed(lambda m, r, p, i: Message(Error(10, "client crashed"), reply_to=m)),
    "oversize": _fixed(lambda m, r, p, i: _reply(m, _pick(r, p), p.padded)),
}
MAY_PASS: dict[str, Build] = {
    "valid": _fixed(lambda m, r, p, i: _reply(m, _pick(r, p), _metrics(int(r.integers(1, 4)) * 10, i))),
    "flip": _bytes_mutation("flip"),
    "truncate": _bytes_mutation("truncate"),
    "extend": _bytes_mutation("extend"),
    "garbage": _bytes_mutation("garbage"),
}
KINDS = {**MAY_PASS, **MUST_DROP}
# the truncate and garbage mutations can only decode by chance; "valid" and "flip" replies make most of a round
WEIGHTS = {"valid": 8.0, "flip": 4.0}


def test_100k_fuzzed_replies_never_crash_a_round_and_bad_ones_are_dropped_with_a_reason() -> None:
    rng = np.random.default_rng(2026)
    pool = Pool(rng)
    names = list(KINDS)
    p = np.asarray([WEIGHTS.get(n, 1.0) for n in names])
    p /= p.sum()
    glob = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    base = FedShrink(min_train_clients=1, min_available_nodes=1, norm_guard=6.0, max_reply_bytes=CAP)
    strategy = NormClipping(RobustAggregation(base, MedianConfig()))
    nodes = list(range(1, PER_ROUND + 1))
    reasons: Counter[str] = Counter()
    kinds_seen: Counter[str] = Counter()
    total = 0
    t0 = time.perf_counter()
    rnd = 0
    while total < TOTAL:
        rnd += 1
        msgs = list(strategy.configure_train(rnd, numpy_to_record(glob), ConfigRecord({}), FakeGrid(nodes)))  # type: ignore[arg-type]
        kinds = rng.choice(len(names), size=len(msgs), p=p)
        replies: list[Message] = []
        kind_of: dict[int, str] = {}
        for msg, k in zip(msgs, kinds, strict=True):
            name = names[int(k)]
            kind_of[msg.metadata.dst_node_id] = name
            replies += KINDS[name](msg, rng, pool, msg.metadata.dst_node_id)
        # a duplicate and a reply from a node that was never asked
        replies.append(replies[0])
        stranger = Message(RecordDict(), dst_node_id=PER_ROUND + 99, message_type="train", group_id=str(rnd))
        replies.append(_reply(stranger, _pick(rng, pool), _metrics()))
        new, _ = strategy.aggregate_train(rnd, replies)  # must not raise
        outcome = base.outcomes[-1]
        total += len(replies)
        assert len(outcome.good) + len(outcome.dropped) == len(replies)
        assert all(d.reason for d in outcome.dropped)
        dropped_nodes = Counter(d.node_id for d in outcome.dropped)
        for node, name in kind_of.items():
            kinds_seen[name] += 1
            if name in MUST_DROP:
                assert dropped_nodes[node] >= 1, (name, node)
        assert any("second reply" in d.reason for d in outcome.dropped)
        assert any("not sent a train message" in d.reason for d in outcome.dropped)
        for d in outcome.dropped:
            reasons[_reason_class(d.reason)] += 1
        assert new is not None  # the valid replies always make the minimum
        glob = {k: new[k].numpy() for k in new.keys()}
        for v in glob.values():
            assert np.all(np.isfinite(v)) and np.abs(v).max() < 0.1 * rnd  # median of honest-scale updates
    seconds = time.perf_counter() - t0
    print(f"\n{total} replies in {rnd} rounds, {seconds:.1f} s; kinds {dict(kinds_seen)}; "
          f"drop reasons {dict(reasons.most_common())}")
    assert total >= TOTAL and set(kinds_seen) == set(KINDS)
    assert seconds < 300


def _reason_class(reason: str) -> str:
    for needle in ("cannot decode", "over the cap", "NaN or Inf", "robust z-scores", "num-examples",
                   "no MetricRecord", "has no record", "client error", "second reply", "not sent",
                   "tensor names differ", "sent float32", "stype"):
        if needle in reason:
            return needle
    return reason[:40]
