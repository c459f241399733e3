"""Validation of client replies before anything is aggregated.

A reply carries the client's update (trained minus received) encoded by
fedshrink's codecs (:mod:`fedshrink.compression`). It is decoded under the
server's :class:`~fedshrink.compression.DecodeLimits` (nothing is unpickled,
nothing larger than declared is allocated) and checked against what the
server sent that node: the same tensor names, shapes and dtypes, finite
values, a positive example count. A bad reply becomes a :class:`Dropped`
record with the reason; it never raises out of the Strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from fedshrink.compression import DEFAULT_LIMITS, DecodeLimits, decode_reply, message_nbytes
from fedshrink.errors import DecodeError, ReplyError

ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
CONFIG_KEY = "config"


@dataclass(frozen=True)
class Expected:
    """What a node's reply must contain: the arrays it was sent, by shape and dtype."""

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]


@dataclass(frozen=True)
class GoodReply:
    node_id: int
    partition_id: int
    num_examples: int
    arrays: dict[str, np.ndarray]  # the decoded update: trained minus received
    metrics: dict[str, float]
    nbytes: int  # the reply's size as a Flower Message


@dataclass(frozen=True)
class Dropped:
    node_id: int
    partition_id: int  # -1 when the reply did not say
    reason: str


def expected_from(arrays: Mapping[str, np.ndarray]) -> Expected:
    return Expected(
        shapes={k: tuple(v.shape) for k, v in arrays.items()},
        dtypes={k: str(v.dtype) for k, v in arrays.items()},
    )


def parse_reply(msg: Message, expected: Expected, *, limits: DecodeLimits = DEFAULT_LIMITS,
                nbytes: int | None = None) -> GoodReply:
    """Return the reply's content, or raise :class:`ReplyError` naming the fault.

    ``nbytes``: the message's serialized size when the caller measured it already.
    """
    if msg.has_error():
        raise ReplyError(f"client error {msg.error.code}: {msg.error.reason}")
    content = msg.content
    records = content.metric_records  # a view Flower rebuilds on every access: read it once
    if METRICS_KEY not in records:
        raise ReplyError(f"no MetricRecord {METRICS_KEY!r}")
    metrics = records[METRICS_KEY]
    num_examples = metrics.get("num-examples")
    if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples <= 0:
        raise ReplyError(f"num-examples must be a positive int, got {num_examples!r}")
    try:
        decoded = decode_reply(msg, key=ARRAYS_KEY, limits=limits)
    except DecodeError as exc:
        raise ReplyError(str(exc)) from exc
    got_keys, want_keys = set(decoded), set(expected.shapes)
    if got_keys != want_keys:
        missing, extra = sorted(want_keys - got_keys), sorted(got_keys - want_keys)
        raise ReplyError(f"tensor names differ from what was sent: missing {missing[:3]}, extra {extra[:3]}")
    arrays: dict[str, np.ndarray] = {}
    for key in expected.shapes:
        arr = decoded[key].numpy()
        if arr.shape != tuple(expected.shapes[key]) or str(arr.dtype) != expected.dtypes[key]:
            raise ReplyError(
                f"tensor {key!r} is {arr.dtype}{list(arr.shape)}, "
                f"sent {expected.dtypes[key]}{list(expected.shapes[key])}"
            )
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ReplyError(f"tensor {key!r} holds NaN or Inf")
        arrays[key] = arr
    scalar = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return GoodReply(
        node_id=msg.metadata.src_node_id,
        partition_id=int(scalar.get("partition-id", -1)),
        num_examples=num_examples,
        arrays=arrays,
        metrics=scalar,
        nbytes=message_nbytes(msg) if nbytes is None else nbytes,
    )


def partition_of(msg: Message) -> int:
    """Best-effort partition id of a (possibly bad) reply, -1 if unknown."""
    try:
        value = msg.content.metric_records[METRICS_KEY].get("partition-id", -1)
        return int(value) if isinstance(value, (int, float)) else -1
    except Exception:
        return -1
