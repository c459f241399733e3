"""fedshrink's Flower Strategy: per-node train messages, validated replies, weighted averaging.

The maths lives in :mod:`.aggregate`; reply checks in :mod:`.replies`. This
class wires them to Flower's message API:

* :meth:`configure_train` samples nodes (deterministically for a seed) and
  builds one message per node through :meth:`train_content`, the seam where
  per-client payloads go; the global model travels encoded by the downlink
  codec chain (``"raw"``: lossless);
* :meth:`aggregate_train` decodes every reply's update (trained minus
  received, encoded by the client's uplink chain), checks it against what that
  node was sent, drops bad replies with a logged reason, skips a round that
  has fewer good replies than ``min_train_clients``, and adds the
  sample-weighted mean update to the global model. With lossless chains this
  is exactly FedAvg: ``g + sum_i w_i (t_i - g) = sum_i w_i t_i``.

Bytes are counted exactly, as serialized Flower Messages, in both directions.

Evaluation is server-side (see :mod:`fedshrink.server_app`), so
``configure_evaluate`` sends nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedshrink.compression import DEFAULT_LIMITS, Chain, DecodeLimits, encode_state, message_nbytes
from fedshrink.errors import ConfigError, ReplyError
from fedshrink.robust.fold import ClientContribution, Stage, robust_fold, to_batch
from fedshrink.robust.rules import rms, robust_zscores
from fedshrink.strategy.aggregate import weighted_mean, weighted_metric_mean
from fedshrink.strategy.replies import (
    ARRAYS_KEY,
    CONFIG_KEY,
    Dropped,
    Expected,
    GoodReply,
    expected_from,
    parse_reply,
    partition_of,
)

log = logging.getLogger("fedshrink.strategy")


@dataclass
class RoundOutcome:
    """What happened to one round's replies (kept for the run's records)."""

    server_round: int
    good: list[GoodReply] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    skipped: bool = False
    skip_reason: str = ""  # why the round left the model as it was
    aggregate_seconds: float = 0.0  # validation, aggregation and refine
    refine_seconds: float = 0.0  # of which server-side refinement (fragments: fusion)
    bytes_down: int = 0  # train messages sent, serialized
    bytes_up: int = 0  # replies received (good and bad), serialized
    robust: dict[str, object] = field(default_factory=dict)  # notes of robust aggregation stages (issue 8)


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: record[k].numpy() for k in record.keys()}


def numpy_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


class FedShrink(Strategy):
    """Federated averaging over validated per-node replies.

    Parameters
    ----------
    fraction_train:
        Share of connected nodes sampled each round, in (0, 1].
    min_train_clients:
        Fewest nodes to sample, and fewest good replies a round needs to be
        aggregated; a round with fewer is skipped (the model stays as it was).
    min_available_nodes:
        Nodes that must be connected before a round starts.
    seed:
        Seeds node sampling (with the round number).
    wait_timeout:
        Seconds to wait for ``min_available_nodes`` before failing the run.
    downlink_chain:
        Codec chain the global model is sent with (see :mod:`fedshrink.compression`).
    limits:
        Caps applied when decoding replies (element counts, bytes).
    max_reply_bytes:
        A reply whose serialized Message is larger is dropped before decoding (0: no cap beyond ``limits``).
    norm_guard:
        Drop a good reply whose update RMS (over the coordinates it held) is more
        than this many robust z-scores (median / MAD of the round) above the
        round's median; 0 turns the guard off. Needs at least 3 good replies.

    Robust aggregation wrappers (:mod:`fedshrink.robust.wrappers`) install
    their stages in :attr:`aggregation_stages`; with any installed, the round's
    :meth:`contributions` are folded through them instead of :meth:`aggregate_arrays`.
    """

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        min_train_clients: int = 2,
        min_available_nodes: int = 2,
        seed: int = 0,
        wait_timeout: float = 600.0,
        downlink_chain: str = "raw",
        limits: DecodeLimits = DEFAULT_LIMITS,
        max_reply_bytes: int = 0,
        norm_guard: float = 0.0,
    ) -> None:
        if not 0.0 < fraction_train <= 1.0:
            raise ConfigError("fraction-train", fraction_train, "a number in (0, 1]")
        if min_train_clients < 1:
            raise ConfigError("min-train-clients", min_train_clients, "an integer >= 1")
        if min_available_nodes < 1:
            raise ConfigError("min-available-nodes", min_available_nodes, "an integer >= 1")
        self.fraction_train = fraction_train
        self.min_train_clients = min_train_clients
        self.min_available_nodes = max(min_available_nodes, min_train_clients)
        self.seed = seed
        self.wait_timeout = wait_timeout
        self.downlink = Chain.parse(downlink_chain)
        if max_reply_bytes < 0:
            raise ConfigError("max-reply-bytes", max_reply_bytes, "an integer >= 0 (0 = no cap)")
        if norm_guard < 0:
            raise ConfigError("norm-guard", norm_guard, "a number >= 0 (0 = off)")
        if max_reply_bytes:
            limits = dataclasses.replace(limits, max_record_bytes=min(limits.max_record_bytes, max_reply_bytes))
        self.limits = limits
        self.max_reply_bytes = max_reply_bytes
        self.norm_guard = norm_guard
        self.aggregation_stages: list[Stage] = []
        self.known_partitions: dict[int, int] = {}  # node id -> partition id its replies reported
        self._expected: dict[int, Expected] = {}
        self._global: dict[str, np.ndarray] = {}
        self._downlink_cache: tuple[int, ArrayRecord] | None = None
        self._bytes_down = 0
        self.outcomes: list[RoundOutcome] = []

    # -- sampling ----------------------------------------------------------------
    def sample_nodes(self, server_round: int, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.wait_timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(nodes)} nodes connected after {self.wait_timeout:.0f}s; "
                    f"{self.min_available_nodes} needed"
                )
            log.info("waiting for nodes: %d of %d connected", len(nodes), self.min_available_nodes)
            time.sleep(1.0)
        k = max(self.min_train_clients, int(round(self.fraction_train * len(nodes))))
        k = min(k, len(nodes))
        rng = np.random.default_rng([self.seed, server_round])
        # sample positions, not ids: node ids are unsigned 64-bit and must not pass through numpy
        picked = rng.choice(len(nodes), size=k, replace=False)
        return sorted(nodes[int(i)] for i in picked)

    # -- train -------------------------------------------------------------------
    def encode_downlink(self, server_round: int) -> ArrayRecord:
        """The global model encoded by the downlink chain (once per round)."""
        if self._downlink_cache is None or self._downlink_cache[0] != server_round:
            state = {k: torch.from_numpy(v) for k, v in self._global.items()}
            record, _ = encode_state(state, self.downlink, round=server_round, direction="downlink")
            self._downlink_cache = (server_round, record)
        return self._downlink_cache[1]

    def train_content(self, node_id: int, server_round: int, config: ConfigRecord) -> tuple[RecordDict, Expected]:
        """The content sent to ``node_id`` and what its reply must match; subclasses send per-node payloads."""
        cfg = ConfigRecord(dict(config))
        cfg["server-round"] = server_round
        content = RecordDict({ARRAYS_KEY: self.encode_downlink(server_round), CONFIG_KEY: cfg})
        return content, expected_from(self._global)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = record_to_numpy(arrays)
        messages = []
        self._expected = {}
        self._bytes_down = 0
        for node_id in self.sample_nodes(server_round, grid):
            content, expected = self.train_content(node_id, server_round, config)
            self._expected[node_id] = expected
            msg = Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN, group_id=str(server_round))
            self._bytes_down += message_nbytes(msg)
            messages.append(msg)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t0 = time.perf_counter()
        outcome = RoundOutcome(server_round, bytes_down=self._bytes_down)
        seen: set[int] = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            expected = self._expected.get(node)
            nbytes = message_nbytes(msg)
            outcome.bytes_up += nbytes
            try:
                if expected is None:
                    raise ReplyError("reply from a node that was not sent a train message")
                if node in seen:
                    raise ReplyError("second reply from the same node")
                seen.add(node)
                if self.max_reply_bytes and nbytes > self.max_reply_bytes:
                    raise ReplyError(f"reply of {nbytes} bytes is over the cap of {self.max_reply_bytes} "
                                     "(max-reply-bytes)")
                good = parse_reply(msg, expected, limits=self.limits, nbytes=nbytes)
                self.accept_reply(msg, good)
                outcome.good.append(good)
                self.known_partitions[node] = good.partition_id
            except ReplyError as exc:
                outcome.dropped.append(Dropped(node, partition_of(msg), str(exc)))
        for node in sorted(set(self._expected) - seen):
            outcome.dropped.append(
                Dropped(node, self.known_partitions.get(node, -1), "no reply before the round timeout"))
        contributions: list[ClientContribution] | None = None
        if self.norm_guard > 0 or self.aggregation_stages:
            contributions = self.contributions(outcome.good)
            if self.norm_guard > 0:
                contributions = self.screen_norms(outcome, contributions)
        for d in outcome.dropped:
            log.warning("round %d: dropped reply of node %d (partition %d): %s",
                        server_round, d.node_id, d.partition_id, d.reason)
        self.outcomes.append(outcome)

        metrics = MetricRecord({"replies-good": len(outcome.good), "replies-dropped": len(outcome.dropped)})
        if len(outcome.good) < self.min_train_clients:
            outcome.skipped = True
            outcome.skip_reason = f"{len(outcome.good)} good replies, {self.min_train_clients} needed"
            log.warning("round %d skipped: %s", server_round, outcome.skip_reason)
            return None, metrics

        if self.aggregation_stages:
            assert contributions is not None
            new_arrays, outcome.robust = robust_fold(self._global, contributions, self.aggregation_stages,
                                                     server_round)
        else:
            new_arrays = self.aggregate_arrays(outcome.good)
        t_refine = time.perf_counter()
        new_arrays = self.refine(server_round, new_arrays)
        outcome.refine_seconds = time.perf_counter() - t_refine
        overflow = [k for k, v in new_arrays.items()
                    if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v))]
        if overflow:  # finite replies can still sum past float32's range (e.g. under a scaling attack)
            outcome.skipped = True
            outcome.skip_reason = f"the aggregate of {overflow[0]!r} is not finite; the model stays as it was"
            log.warning("round %d skipped: %s", server_round, outcome.skip_reason)
            outcome.aggregate_seconds = time.perf_counter() - t0
            return None, metrics
        weights = [r.num_examples for r in outcome.good]
        metrics["num-examples"] = int(sum(weights))
        for key in ("train-loss",):
            vals = [r.metrics[key] for r in outcome.good if key in r.metrics]
            if len(vals) == len(outcome.good):
                metrics[key] = weighted_metric_mean(vals, weights)
        outcome.aggregate_seconds = time.perf_counter() - t0
        return numpy_to_record(new_arrays), metrics

    def refine(self, server_round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Server-side work on the aggregated model before it becomes the global one; none here."""
        return arrays

    def accept_reply(self, msg: Message, reply: GoodReply) -> None:
        """Extra checks of a parsed reply (raise :class:`ReplyError` to drop it); none here."""

    # -- robust aggregation seams (issue 8) -------------------------------------------
    def contributions(self, good: list[GoodReply]) -> list[ClientContribution]:
        """Each good reply's update in the global model's coordinates, with what it held (everything here)."""
        return [ClientContribution(r.partition_id, r.node_id, r.arrays, None, float(r.num_examples)) for r in good]

    def screen_norms(self, outcome: RoundOutcome, contributions: list[ClientContribution]
                     ) -> list[ClientContribution]:
        """The norm guard: move replies whose update RMS is far above the round's to ``outcome.dropped``."""
        if len(contributions) < 3:
            return contributions
        values = rms(to_batch(self._global, contributions))
        z = robust_zscores(values)
        median = float(np.median(values))
        keep_good, keep_contrib = [], []
        for reply, contrib, v, zi in zip(outcome.good, contributions, values, z, strict=True):
            if zi > self.norm_guard:
                outcome.dropped.append(Dropped(
                    reply.node_id, reply.partition_id,
                    f"update norm {v:.3g} (RMS per held coordinate) is {zi:.1f} robust z-scores above "
                    f"the round's median {median:.3g} (norm-guard {self.norm_guard:g})"))
            else:
                keep_good.append(reply)
                keep_contrib.append(contrib)
        outcome.good = keep_good
        return keep_contrib

    # -- checkpoint seams (issue 8) ------------------------------------------------------
    def checkpoint_state(self) -> dict[str, object]:
        """The strategy's state a resumed run needs (JSON-ready); sampling is a pure function of seed and round."""
        return {"known-partitions": {str(n): p for n, p in self.known_partitions.items()}}

    def restore_state(self, state: dict[str, object]) -> None:
        """Inverse of :meth:`checkpoint_state`."""
        known = state.get("known-partitions", {})
        assert isinstance(known, dict)
        self.known_partitions = {int(n): int(p) for n, p in known.items()}

    def client_states(self, outcome: RoundOutcome) -> list[dict[str, np.ndarray]]:
        """The models the round's good replies trained (global sent that round + each update)."""
        assert outcome is self.outcomes[-1], "client states are known for the latest round only"
        return [{k: (g + r.arrays[k]).astype(g.dtype) for k, g in self._global.items()} for r in outcome.good]

    def aggregate_arrays(self, good: list[GoodReply]) -> dict[str, np.ndarray]:
        """New global model: the current one plus the sample-weighted mean update."""
        mean_update = weighted_mean([r.arrays for r in good], [r.num_examples for r in good])
        return {k: (g + mean_update[k]).astype(g.dtype) for k, g in self._global.items()}

    # -- evaluate (server-side only) ----------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log.info(
            "%s: fraction-train=%s min-train-clients=%d min-available-nodes=%d",
            type(self).__name__, self.fraction_train, self.min_train_clients, self.min_available_nodes,
        )
