"""Fuzzed and mutated replies through the server's whole reply path: checks, decoding, aggregation, the ledger.

Replies are built cheaply from a few valid encoded updates of the default
model: their serialized tensor bytes are flipped, truncated, extended or
replaced; tensors are dropped, added, reshaped, retyped, filled with NaN/Inf
or huge values; metrics are broken (NaN, Inf, huge or fractional counts,
another partition, resource records with bad values); replies are errors,
duplicates, from nodes never asked, or over the size cap. No round may
crash, every reply that must be refused is dropped with a reason, the global
model stays finite, and the server's memory does not grow with what clients
send. ``FEDSHRINK_FUZZ_REPLIES`` sets the count (the fast tier runs fewer).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from strategy_harness import HelloGrid, first_round, make_strategy, model_state

from fedshrink.compression import encode_state
from fedshrink.models import ModelSpec
from fedshrink.resources import ResourceLedger
from fedshrink.resources.meter import ResourceRecord, read_hwm_bytes, reset_hwm
from fedshrink.robust.defences import DefenceEnv, MedianConfig
from fedshrink.robust.guard import NormGuard
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy.rounds import record_to_numpy

# the suite's count; bench_security.py --fuzz 100000 runs this test at 10^5 replies (about 5 minutes here)
TOTAL = int(os.environ.get("FEDSHRINK_FUZZ_REPLIES", "2000"))
ROBUST_EVERY = 10  # one round in ten goes through the median (it sorts every coordinate)
WARM_UP = ROBUST_EVERY  # rounds before memory is measured: one of each strategy, so one-off buffers are made
PER_ROUND = 20  # the default run samples 20 clients a round
SPEC = ModelSpec("cnn", (1, 8, 8), 10)  # the default model
CHAIN = "topk:0.05|int8|zlib"  # the default laptop uplink: every reply runs the sparse, quantized, zlib decoder
HONEST_STD = 1e-3
RECORD = ResourceRecord(0.1, 0.1, 10**8, 10**8, 0, 1000, 1000, 2000, 100, 100, 10, 6000.0, 1.0, 1).to_metrics()


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


def _encode(arrays: dict[str, np.ndarray], chain: str = CHAIN, rnd: int = 1) -> ArrayRecord:
    rec, _ = encode_state({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, chain,
                          round=rnd, direction="uplink")
    return rec


def _with(record: ArrayRecord, key: str, data: bytes, stype: str | None = None) -> ArrayRecord:
    out = ArrayRecord({k: record[k] for k in record.keys()})
    arr = record[key]
    out[key] = Array(dtype=arr.dtype, shape=tuple(arr.shape), stype=stype or arr.stype, data=data)
    return out


class Pool:
    """A few valid and crafted encoded updates, encoded for round 1 and reused (the header's round is checked)."""

    def __init__(self, rng: np.random.Generator, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.keys = list(shapes)
        zeros = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
        self.valid = [_encode({k: rng.normal(0, HONEST_STD, s).astype(np.float32) for k, s in shapes.items()})
                      for _ in range(8)]
        first = self.keys[0]
        self.wrong_shape = _encode({**zeros, first: zeros[first].reshape(-1)})
        self.wrong_dtype = _encode({k: np.zeros(s, np.float64) for k, s in shapes.items()})
        self.extra = _encode({**zeros, "x": np.zeros(2, np.float32)})
        self.missing = _encode({k: v for k, v in zeros.items() if k != first})
        self.other_chain = _encode(zeros, "fp16")
        self.other_round = _encode(zeros, CHAIN, rnd=7)
        self.wrong_stype = _with(self.valid[0], first, self.valid[0][first].data, "numpy")
        self.huge = _encode({k: np.full(s, 1e30, np.float32) for k, s in shapes.items()})

    def pick(self, rng: np.random.Generator) -> ArrayRecord:
        return self.valid[int(rng.integers(len(self.valid)))]


def _metrics(pid: int, **changes: object) -> MetricRecord:
    base = {"num-examples": 10, "partition-id": pid, "train-loss": 0.5, "train-steps": 2, "train-seconds": 0.1,
            **RECORD}
    base.update(changes)
    return MetricRecord(base)  # type: ignore[arg-type]


def _reply(msg: Message, arrays: ArrayRecord | None, metrics: MetricRecord | None) -> Message:
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = arrays
    if metrics is not None:
        content["metrics"] = metrics
    return Message(content, reply_to=msg)


Build = Callable[[Message, np.random.Generator, Pool, int], Message]
PADDING = ConfigRecord({"junk": b"\0" * 2_000_000})  # past the size cap of a reply to the default model


def _padded(reply: Message) -> Message:
    reply.content["junk"] = PADDING
    return reply


def _bytes_mutation(kind: str) -> Build:
    def build(msg: Message, rng: np.random.Generator, pool: Pool, pid: int) -> Message:
        rec = pool.pick(rng)
        keys = [*pool.keys, "_fedshrink_update"]
        key = keys[int(rng.integers(len(keys)))]
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
        return _reply(msg, _with(rec, key, bytes(data)), _metrics(pid))
    return build


BAD_METRICS: list[dict[str, object]] = [
    {"num-examples": 0}, {"num-examples": -3}, {"num-examples": 2.5}, {"partition-id": float("nan")},
    {"partition-id": float("inf")}, {"partition-id": 10**6}, {"partition-id": 1.5}, {"train-loss": float("nan")},
    {"train-loss": float("inf")}, {"res-wall-s": -1.0}, {"res-energy-method": 99}, {"res-bytes-up": float("nan")},
]

MUST_DROP: dict[str, Build] = {
    "wrong-shape": lambda m, r, p, i: _reply(m, p.wrong_shape, _metrics(i)),
    "wrong-dtype": lambda m, r, p, i: _reply(m, p.wrong_dtype, _metrics(i)),
    "extra-tensor": lambda m, r, p, i: _reply(m, p.extra, _metrics(i)),
    "missing-tensor": lambda m, r, p, i: _reply(m, p.missing, _metrics(i)),
    "other-chain": lambda m, r, p, i: _reply(m, p.other_chain, _metrics(i)),
    "other-round": lambda m, r, p, i: _reply(m, p.other_round, _metrics(i)),
    "wrong-stype": lambda m, r, p, i: _reply(m, p.wrong_stype, _metrics(i)),
    "huge": lambda m, r, p, i: _reply(m, p.huge, _metrics(i)),
    "bad-metric": lambda m, r, p, i: _reply(m, p.pick(r), _metrics(i, **BAD_METRICS[r.integers(len(BAD_METRICS))])),
    "no-metrics": lambda m, r, p, i: _reply(m, p.pick(r), None),
    "no-arrays": lambda m, r, p, i: _reply(m, None, _metrics(i)),
    "error": lambda m, r, p, i: Message(Error(10, "client crashed"), reply_to=m),
    "oversize": lambda m, r, p, i: _padded(_reply(m, p.pick(r), _metrics(i))),
}
MAY_PASS: dict[str, Build] = {
    "valid": lambda m, r, p, i: _reply(m, p.pick(r), _metrics(i, **{"num-examples": int(r.integers(1, 4)) * 10})),
    "claims-a-trillion": lambda m, r, p, i: _reply(m, p.pick(r), _metrics(i, **{"num-examples": 10**12})),
    "flip": _bytes_mutation("flip"),
    "truncate": _bytes_mutation("truncate"),
    "extend": _bytes_mutation("extend"),
    "garbage": _bytes_mutation("garbage"),
}
KINDS = {**MAY_PASS, **MUST_DROP}
WEIGHTS = {"valid": 10.0, "flip": 4.0}  # valid replies make most of every round


@pytest.mark.slow
def test_fuzzed_replies_never_crash_a_round_and_bad_ones_are_dropped_with_a_reason(tmp_path: Path) -> None:
    rng = np.random.default_rng(2026)
    glob = model_state(SPEC)
    pool = Pool(rng, {k: v.shape for k, v in glob.items()})
    names = list(KINDS)
    p = np.asarray([WEIGHTS.get(n, 1.0) for n in names])
    p /= p.sum()
    plain = make_strategy(SPEC, min_train_clients=1, stages=[NormGuard(6.0)], update_limit=100.0, uplink=CHAIN)
    robust = make_strategy(SPEC, min_train_clients=1, stages=[NormGuard(6.0), MedianConfig().build(DefenceEnv())],
                           update_limit=100.0, uplink=CHAIN)
    nodes = list(range(1, PER_ROUND + 1))
    grid = HelloGrid(nodes)
    reasons: Counter[str] = Counter()
    kinds_seen: Counter[str] = Counter()
    ledger = ResourceLedger(spool=tmp_path / "clients.csv")  # as the server keeps it: each round to disk
    total, rnd, baseline = 0, 0, 0
    while total < TOTAL:
        rnd += 1
        strategy = robust if rnd % ROBUST_EVERY == 0 else plain
        msgs = first_round(strategy, grid, glob)  # always round 1: the pool's updates are encoded for it
        kinds = rng.choice(len(names), size=len(msgs), p=p)
        replies, kind_of = [], {}
        for i, (msg, k) in enumerate(zip(msgs, kinds, strict=True)):
            kind_of[msg.metadata.dst_node_id] = names[int(k)]
            replies.append(KINDS[names[int(k)]](msg, rng, pool, i))
        replies.append(replies[0])  # a duplicate
        stranger = Message(RecordDict(), dst_node_id=PER_ROUND + 99, message_type="train", group_id="1")
        replies.append(_reply(stranger, pool.pick(rng), _metrics(0)))  # a node that was never asked
        new, _ = strategy.aggregate_train(1, replies)  # must not raise
        outcome = strategy.outcomes[-1]
        for reply in outcome.accepted:
            if reply.resources is not None:
                ledger.add(rnd, reply.partition_id, reply.resources, node_id=reply.node_id)
        ledger.close_round()
        total += len(replies)
        assert len(outcome.accepted) + len(outcome.dropped) == len(replies)
        assert all(d.reason for d in outcome.dropped)
        dropped = Counter(d.node_id for d in outcome.dropped)
        for node, name in kind_of.items():
            kinds_seen[name] += 1
            assert name not in MUST_DROP or dropped[node] >= 1, (name, node)
        claims = outcome.claims  # what the fence saw, before a stage dropped any reply
        if sum(c > 30 for c in claims) < len(claims) / 2:  # an honest majority: no claim outweighs an honest one
            assert max(outcome.weights) <= 30
        reasons.update(_reason_class(d.reason) for d in outcome.dropped)
        assert new is not None  # the valid replies always make the minimum
        state = record_to_numpy(new)
        assert all(np.all(np.isfinite(v)) and np.abs(v - glob[k]).max() < 0.05 for k, v in state.items())
        if rnd == WARM_UP:  # from here on the server's memory must not grow with what clients send
            assert reset_hwm(), "this kernel does not let a process reset its RSS high-water mark"
            baseline = psutil.Process().memory_info().rss
    peak = (read_hwm_bytes() or 0) - baseline
    print(f"\n{total} replies in {rnd} rounds; kinds {dict(kinds_seen)}; drop reasons {dict(reasons.most_common())}; "
          f"peak RSS growth after warm-up {peak / 1e6:.1f} MB")
    assert total >= TOTAL and set(kinds_seen) == set(KINDS)
    assert ledger.spooled > 0 and ledger.summary()["clients"]["records"] == ledger.spooled
    assert peak < 50e6


def _reason_class(reason: str) -> str:
    for needle in ("cannot decode", "over the cap", "NaN or Inf", "robust z-scores", "num-examples", "metric",
                   "reply records", "client error", "second reply", "not sent", "tensor names differ", "chain",
                   "round", "stype", "partition-id", "update norm", "resource record"):
        if needle in reason:
            return needle
    return reason[:40]
