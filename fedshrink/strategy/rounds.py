"""fedshrink's Flower Strategy: per-node instructions, checked replies, one aggregation path.

:class:`ShrinkStrategy` is a thin Flower ``Strategy``; the work is in pure
functions and small objects it is given at construction:

* :meth:`~ShrinkStrategy.configure_train` greets the connected nodes it has
  not met (``query.hello``: their partition and device profile), samples them
  by partition id (:func:`sample_nodes`: a pure function of the seed, the round
  and the partitions connected, whatever node ids the engine gave), applies the run's one-off initialisation of
  the global model in round 1 (e.g. nested initialisation), and asks the
  :class:`~.plan.Planner` for each node's
  :class:`~fedshrink.protocol.TrainInstruction` and the
  :class:`~fedshrink.protocol.Expected` its reply must match;
* :meth:`~ShrinkStrategy.aggregate_train` reads every reply against what was
  sent (:func:`~fedshrink.protocol.read_train_reply`; a bad reply is dropped
  with its reason, never raised), bounds the sample counts claimed
  (:func:`~.contributions.accepted_weights`), turns each accepted reply into a
  :class:`~.batch.Contribution` in global coordinates, runs the aggregation
  stages (:func:`~.stages.aggregate`: screens such as the norm guard,
  transforms such as clipping, one combiner -- FedAvg over holders by
  default -- and perturbations), then the refiners (e.g. fusion). With an
  :class:`~.memory.UpdateMemory` (``absent-updates``), the latest updates of
  the sampled clients that were offline or late are stacked under the
  round's own before the stages run.

With lossless chains and the whole model this is exactly FedAvg. What
happened in the last rounds is kept in :attr:`ShrinkStrategy.outcomes`
(``OUTCOMES_KEPT`` of them: the recorder writes every round to the run
directory, so a long run's memory does not grow with its rounds).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedshrink.compression import message_nbytes, recorddict_nbytes
from fedshrink.devices import Budget, DeviceModel, sample_size
from fedshrink.devices.profiles import DeviceProfile
from fedshrink.errors import ConfigError, ReplyError
from fedshrink.fragments import FragmentSpec, extract
from fedshrink.protocol import CONFIG, TRAIN, AcceptedReply, Hello, read_train_reply
from fedshrink.strategy.batch import BatchRows, FloatArray, Layout, UpdateBatch
from fedshrink.strategy.contributions import accepted_weights, contribution
from fedshrink.strategy.fleet import OFFLINE, Fleet, Trained
from fedshrink.strategy.memory import UpdateMemory
from fedshrink.strategy.plan import Assignment, Planner
from fedshrink.strategy.stages import RoundContext, Stage, aggregate, check_stages

log = logging.getLogger("fedshrink.strategy")
OUTCOMES_KEPT = 4  # rounds whose outcome the strategy keeps in memory
State = dict[str, np.ndarray]


class Refiner(Protocol):
    """Server-side work on the aggregated model before it becomes the global one (e.g. fusion)."""

    name: str

    def refine(self, server_round: int, state: Mapping[str, np.ndarray], widths: Sequence[float]) -> State: ...


Initialiser = Callable[[Mapping[str, np.ndarray], Sequence[float]], State]
BudgetPlanner = Callable[[Hello], tuple[DeviceProfile, str]]  # a node's budget -> its profile, and why


@dataclass(frozen=True)
class Dropped:
    node_id: int
    partition_id: int  # -1 when unknown
    reason: str


@dataclass
class RoundOutcome:
    """What happened to one round's replies (kept for the run's records)."""

    server_round: int
    accepted: list[AcceptedReply] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # the sample counts accepted, per accepted reply
    dropped: list[Dropped] = field(default_factory=list)
    unreached: list[Dropped] = field(default_factory=list)  # sampled, but offline or declining (modelled devices)
    capped: list[dict[str, int]] = field(default_factory=list)  # claims the fence capped
    claims: list[int] = field(default_factory=list)  # the sample counts the fence saw (before any stage dropped)
    skipped: bool = False
    skip_reason: str = ""
    aggregate_seconds: float = 0.0  # checks, decoding and aggregation (refiners excluded)
    refine_seconds: dict[str, float] = field(default_factory=dict)  # per refiner
    unrefined: State | None = None  # the aggregate before the refiners, when one changed it (the loop evaluates it)
    bytes_down: int = 0  # train messages sent, serialized
    bytes_up: int = 0  # replies received (good and bad), serialized
    notes: dict[str, Any] = field(default_factory=dict)  # what the aggregation stages did
    device_round: dict[str, float] = field(default_factory=dict)  # the fleet clock's round figures (modelled)
    device_clients: dict[int, dict[str, float]] = field(default_factory=dict)  # node -> its figures (modelled)

    @property
    def sent(self) -> int:
        return len(self.accepted) + len(self.dropped)


def record_to_numpy(record: ArrayRecord) -> State:
    return {k: record[k].numpy() for k in record.keys()}


def numpy_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def _squares(v: np.ndarray) -> float:
    """Sum of squares in float64 (a float32 update of absurd size gives a large number, not an overflow)."""
    flat = v.reshape(-1).astype(np.float64)
    return float(np.dot(flat, flat))


def wanted_clients(connected: int, fraction: float, minimum: int, per_round: int = 0) -> int:
    """Updates a round wants: ``per_round`` when set, else ``max(minimum, round(fraction * connected))``."""
    return per_round if per_round else max(minimum, int(round(fraction * connected)))


def sample_nodes(partitions: Mapping[int, int], count: int, seed: int, server_round: int) -> list[int]:
    """``count`` of the nodes (all when fewer), drawn over their partition ids from ``(seed, round)``.

    ``partitions``: node id -> the partition id its hello gave. The draw picks positions in the nodes sorted by
    partition id (node id breaks a tie), so it does not depend on the node ids an engine assigns: the same seed
    samples the same partitions in process, under Ray or in a deployment. Returns the picked node ids in
    partition order.
    """
    nodes = sorted(partitions, key=lambda n: (partitions[n], n))
    rng = np.random.default_rng([seed, server_round])
    picked = rng.choice(len(nodes), size=min(count, len(nodes)), replace=False)  # positions: ids are 64-bit
    return [nodes[int(i)] for i in sorted(picked)]


class ShrinkStrategy(Strategy):
    """Federated training of fragments with checked replies and staged aggregation (see the module doc)."""

    def __init__(self, planner: Planner, *, fraction_train: float = 1.0, min_train_clients: int = 2,
                 clients_per_round: int = 0, seed: int = 0, wait_timeout: float = 600.0,
                 stages: Sequence[Stage] = (), refiners: Sequence[Refiner] = (),
                 initialise: Initialiser | None = None, pruned_as_zero: bool = True, examples_fence: float = 3.0,
                 update_limit: float = 0.0, fleet: Fleet | None = None, plan_budget: BudgetPlanner | None = None,
                 memory: UpdateMemory | None = None) -> None:
        check_stages(stages)
        self.planner = planner
        self.fraction_train = fraction_train
        self.min_train_clients = min_train_clients
        self.clients_per_round = clients_per_round
        self.fleet = fleet
        self.plan_budget = plan_budget
        self.plans: dict[int, str] = {}  # node -> what the planner picked for its budget, and why
        self.seed = seed
        self.wait_timeout = wait_timeout
        self.stages = list(stages)
        self.refiners = list(refiners)
        self.initialise = initialise
        self.pruned_as_zero = pruned_as_zero
        self.examples_fence = examples_fence
        self.update_limit = update_limit
        self.memory = memory  # absent clients' latest updates, counted again (absent-updates = reuse)
        self.nodes: dict[int, Hello] = {}  # what each node said in its hello
        self.outcomes: deque[RoundOutcome] = deque(maxlen=OUTCOMES_KEPT)
        self._global: State = {}
        self._assigned: dict[int, Assignment] = {}
        self._bytes_to: dict[int, int] = {}  # node -> bytes of its train message this round
        self._skipped: dict[int, str] = {}  # sampled nodes the fleet clock left out this round, with the reason
        self._stragglers: set[int] = set()  # nodes whose reply missed this round's deadline
        self._wanted = 0
        self._bytes_down = 0
        self._last_batch: UpdateBatch | None = None
        self._rows: np.ndarray | None = None  # the batches' buffer, filled again each round
        self._sent_norms: dict[FragmentSpec | None, float] = {}  # this round's L2 norm of what each fragment sent
        self._synced: dict[int, int] = {}  # node -> the round of the downlink reference it holds (downlink deltas)

    # -- nodes -----------------------------------------------------------------------------
    def connected_nodes(self, grid: Grid) -> list[int]:
        """The connected node ids, once at least ``min_train_clients`` are (or TimeoutError)."""
        deadline = time.monotonic() + self.wait_timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.min_train_clients:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(nodes)} nodes connected after {self.wait_timeout:.0f}s; "
                                   f"{self.min_train_clients} needed")
            log.info("waiting for nodes: %d of %d connected", len(nodes), self.min_train_clients)
            time.sleep(1.0)
        return nodes

    def greet(self, node_ids: Iterable[int], grid: Grid) -> None:
        """Ask every node not met yet who it is; a node whose answer is bad is left out (and asked again later)."""
        unknown = [n for n in node_ids if n not in self.nodes]
        if not unknown:
            return
        for reply in grid.send_and_receive([Hello.query(n) for n in unknown], timeout=self.wait_timeout):
            node = reply.metadata.src_node_id
            try:
                self.nodes[node] = self._planned(node, Hello.read(reply))
            except (ReplyError, ConfigError) as exc:
                log.warning("node %d: hello failed, node left out this round: %s", node, exc)

    def _planned(self, node: int, hello: Hello) -> Hello:
        """A node that states a budget gets the profile the planner picks for it (ConfigError: nothing fits)."""
        if hello.budget is None or hello.profile is not None or not self.planner.fragments:
            return hello
        if self.plan_budget is None:
            raise ConfigError("budget", hello.budget.to_text(), "a run that plans budgets (a budget-mix)")
        profile, why = self.plan_budget(hello)
        self.plans[node] = why
        log.info("node %d (partition %d): %s", node, hello.partition_id, why)
        return dataclasses.replace(hello, profile=profile)

    def widths_in_use(self) -> list[float]:
        return self.planner.widths_in_use(list(self.nodes.values()))

    def profile_of(self, node_id: int) -> DeviceProfile | None:
        hello = self.nodes.get(node_id)
        return hello.profile if hello is not None and self.planner.fragments else None

    # -- train ------------------------------------------------------------------------------
    def wanted(self, connected: int) -> int:
        """How many updates a round with ``connected`` nodes wants."""
        return wanted_clients(connected, self.fraction_train, self.min_train_clients, self.clients_per_round)

    def sample_count(self, connected: int, wanted: int | None = None) -> int:
        """How many of ``connected`` nodes a round samples: the updates wanted, plus the fleet's over-selection."""
        wanted = self.wanted(connected) if wanted is None else wanted
        return min(sample_size(wanted, self.fleet.over_select) if self.fleet is not None else wanted, connected)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self._global = record_to_numpy(arrays)
        connected = self.connected_nodes(grid)
        self._wanted = self.wanted(len(connected))
        self.greet(connected, grid)  # sampling is by partition id: every node's hello first (once per node)
        known = {n: self.nodes[n].partition_id for n in connected if n in self.nodes}
        picked = sample_nodes(known, self.sample_count(len(connected), self._wanted), self.seed, server_round)
        self._skipped = {}
        if self.fleet is not None:  # offline devices are not reached; too little memory declines
            picked, self._skipped = self.fleet.reachable(server_round, picked, self.nodes)
        widths = self.widths_in_use()
        if server_round == 1 and self.initialise is not None:
            self._global = self.initialise(self._global, widths)  # the run's one-off start (nested init)
        self._assigned, self._bytes_to, messages, self._bytes_down = {}, {}, [], 0
        sizes: dict[tuple[int | str, ...], int] = {}  # content size, measured once per distinct instruction
        for node in picked:
            assignment = self.planner.assign(self.nodes[node], server_round, node, self._global, widths,
                                             base=self._synced.get(node))
            self._assigned[node] = assignment
            content = assignment.instruction.to_records()
            key: tuple[int | str, ...] = (id(assignment.instruction.model),
                                          *(id(d) for d in assignment.instruction.deltas),
                                          repr(sorted(content.config_records[CONFIG].items())))
            if key not in sizes:
                sizes[key] = recorddict_nbytes(content)
            msg = Message(content, dst_node_id=node, message_type=TRAIN, group_id=str(server_round))
            self._bytes_to[node] = message_nbytes(msg, content_nbytes=sizes[key])
            self._bytes_down += self._bytes_to[node]
            messages.append(msg)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t0 = time.perf_counter()
        outcome = RoundOutcome(server_round, bytes_down=self._bytes_down)
        self.outcomes.append(outcome)
        layout = Layout.of(self._global)
        global_flat = layout.flatten(self._global)
        self._sent_norms = {}
        batch = self._read_replies(outcome, list(replies), layout, global_flat)
        outcome.unreached = [Dropped(n, self.nodes[n].partition_id, why) for n, why in self._skipped.items()]
        self._stragglers = set()
        if self.fleet is not None:
            batch = self._settle(outcome, batch)
        outcome.claims = [r.num_examples for r in outcome.accepted]
        weights, capped = accepted_weights(outcome.claims, self.examples_fence)
        outcome.weights = weights
        outcome.capped = [{"node-id": outcome.accepted[i].node_id, "partition-id": outcome.accepted[i].partition_id,
                           "claimed": outcome.accepted[i].num_examples, "accepted": int(weights[i])} for i in capped]
        new_state = None
        if len(outcome.accepted) >= self.min_train_clients:
            new_state = self._aggregate(outcome, batch.with_weights(np.asarray(weights)), layout, global_flat)
        if new_state is None and not outcome.skipped:
            self._skip(outcome, f"{len(outcome.accepted)} good replies, {self.min_train_clients} needed")
        for d in outcome.dropped:
            log.warning("round %d: dropped reply of node %d (partition %d): %s", server_round, d.node_id,
                        d.partition_id, d.reason)
        metrics = MetricRecord({"replies-good": len(outcome.accepted), "replies-dropped": len(outcome.dropped)})
        if new_state is not None:
            metrics["num-examples"] = int(sum(outcome.weights))
            metrics["train-loss"] = float(np.average([r.metrics["train-loss"] for r in outcome.accepted],
                                                     weights=outcome.weights))
        outcome.aggregate_seconds = time.perf_counter() - t0 - sum(outcome.refine_seconds.values())
        return (numpy_to_record(new_state) if new_state is not None else None), metrics

    def _read_replies(self, outcome: RoundOutcome, replies: list[Message], layout: Layout, global_flat: FloatArray
                      ) -> UpdateBatch:
        """Check every reply; each accepted one goes straight into a row of the round's batch (its decoded
        tensors are not kept), so memory holds one batch, not every reply's arrays too."""
        rows = BatchRows(layout.size, len(replies), reuse=self._rows)
        self._rows = rows.values if rows.values.base is None else self._rows  # a new, bigger buffer is kept
        seen: set[int] = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            nbytes = message_nbytes(msg)
            outcome.bytes_up += nbytes
            assignment = self._assigned.get(node)
            if assignment is not None and assignment.instruction.downlink_reference and node not in seen:
                if msg.has_error():  # it may hold any round now: it is sent the whole reference next time
                    self._synced.pop(node, None)
                else:  # it replied: it holds this round's reference
                    self._synced[node] = outcome.server_round
            try:
                if assignment is None:
                    raise ReplyError("reply from a node that was not sent a train message")
                if node in seen:
                    raise ReplyError("second reply from the same node")
                seen.add(node)
                reply = read_train_reply(msg, assignment.expected, nbytes=nbytes)
                self._check_size(reply, assignment)
                rows.add(contribution(node_id=node, partition_id=reply.partition_id, weight=reply.num_examples,
                                      update=reply.update, support=reply.support,
                                      prune_masks=reply.masks or assignment.masks, fragment=assignment.fragment,
                                      layout=layout, graph=self.planner.graph, global_flat=global_flat,
                                      pruned_as_zero=self.pruned_as_zero, out=rows.next_row()))
                outcome.accepted.append(dataclasses.replace(reply, update={}, support={}, masks={}))
            except ReplyError as exc:
                hello = self.nodes.get(node)
                outcome.dropped.append(Dropped(node, hello.partition_id if hello else -1, str(exc)))
        for node in sorted(set(self._assigned) - seen):
            outcome.dropped.append(Dropped(node, self.nodes[node].partition_id, "no reply before the round timeout"))
            self._synced.pop(node, None)  # it may hold any round now: it is sent the whole reference next time
        return rows.batch()

    def _settle(self, outcome: RoundOutcome, batch: UpdateBatch) -> UpdateBatch:
        """The fleet clock's verdict: replies past the deadline or beyond the wanted count are dropped."""
        assert self.fleet is not None
        trained = []
        for r in outcome.accepted:
            hello = self.nodes[r.node_id]
            profile = self.fleet.profile_of(hello)
            flops = r.resources.train_flops if r.resources is not None else \
                self.fleet.estimate(profile).train_flops(r.num_examples * profile.local_epochs)
            trained.append(Trained(r.node_id, hello, self._bytes_to[r.node_id], r.nbytes, flops))
        verdict = self.fleet.settle(outcome.server_round, self._wanted, list(self._skipped), self.nodes, trained)
        self._stragglers = verdict.stragglers
        outcome.device_round = verdict.round_metrics
        outcome.device_clients = verdict.client_metrics
        rows = [i for i, r in enumerate(outcome.accepted) if r.node_id in verdict.dropped]
        self._drop_rows(outcome, rows, [verdict.dropped[outcome.accepted[i].node_id] for i in rows])
        dropped = set(rows)
        return batch.take([i for i in range(len(batch)) if i not in dropped])

    def _check_size(self, reply: AcceptedReply, assignment: Assignment) -> None:
        """Refuse an update whose L2 norm is over ``update_limit`` times that of the fragment it updates."""
        if self.update_limit <= 0:
            return
        base = self._sent_norms.get(assignment.fragment)
        if base is None:  # once per round and fragment: every whole-model reply updates the same model
            sent = extract(self._global, self.planner.graph, assignment.fragment).values() \
                if assignment.fragment is not None else self._global.values()
            base = self._sent_norms[assignment.fragment] = math.sqrt(sum(_squares(v) for v in sent))
        size = math.sqrt(sum(_squares(v) for v in reply.update.values()))
        bound = self.update_limit * max(base, 1.0)
        if size > bound:
            raise ReplyError(f"update norm {size:.3g} is over {self.update_limit:g} x the norm of the model it "
                             f"updates ({bound:.3g}; update-limit)")

    def _aggregate(self, outcome: RoundOutcome, batch: UpdateBatch, layout: Layout, global_flat: FloatArray
                   ) -> State | None:
        ctx = RoundContext(outcome.server_round, self._global, layout)
        self._last_batch = batch
        counted, note = self._with_absent(outcome.server_round, batch)
        new_flat, report = aggregate(global_flat, counted, self.stages, ctx)
        own = [(row, reason) for row, reason in report.dropped if row < len(batch)]  # not remembered rows
        if own:
            self._drop_rows(outcome, [row for row, _ in own], [reason for _, reason in own])
            batch = batch.take([i for i in range(len(batch)) if i not in {row for row, _ in own}])
            if len(outcome.accepted) < self.min_train_clients:
                return None
        outcome.notes = report.notes
        if note:
            outcome.notes["absent-updates"] = note
        state = aggregated = layout.unflatten(new_flat)
        for refiner in self.refiners:
            t = time.perf_counter()
            state = refiner.refine(outcome.server_round, state, self.widths_in_use())
            outcome.refine_seconds[refiner.name] = time.perf_counter() - t
        if any(state[k] is not v for k, v in aggregated.items()):
            outcome.unrefined = aggregated
        bad = [k for k, v in state.items() if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v))]
        if bad:  # finite replies can still sum past float32's range (e.g. under a scaling attack)
            self._skip(outcome, f"the aggregate of {bad[0]!r} is not finite; the model stays as it was")
            return None
        if self.memory is not None:  # only a client with a device model can be offline or late
            self.memory.remember(batch, outcome.server_round,
                                 {h.partition_id for h in self.nodes.values() if h.device is not None})
        return state

    def _with_absent(self, server_round: int, batch: UpdateBatch) -> tuple[UpdateBatch, dict[str, Any]]:
        """``batch`` with the remembered updates of this round's absent clients stacked under it (offline, or
        past the deadline; :mod:`.memory`), and a note of what was added (empty when nothing was)."""
        if self.memory is None:
            return batch, {}
        absent = {n for n, why in self._skipped.items() if why == OFFLINE} | self._stragglers
        partitions = {self.nodes[n].partition_id for n in absent if n in self.nodes} - set(batch.clients)
        recalled, ages = self.memory.recall(partitions, server_round)
        note = {"absent": len(partitions), "reused": len(ages), "max-age": max(ages, default=0),
                "memory-bytes": self.memory.nbytes, "forgotten": self.memory.forgotten}
        if recalled is None:
            return batch, note
        return UpdateBatch(np.concatenate([batch.values, recalled.values.astype(batch.values.dtype)]),
                           np.concatenate([np.asarray(batch.held), recalled.held]),
                           np.concatenate([np.asarray(batch.sent), recalled.sent]),
                           np.concatenate([batch.weights, recalled.weights]),
                           batch.clients + recalled.clients), note

    def _drop_rows(self, outcome: RoundOutcome, rows: list[int], reasons: list[str]) -> None:
        for row, reason in zip(rows, reasons, strict=True):
            r = outcome.accepted[row]
            outcome.dropped.append(Dropped(r.node_id, r.partition_id, reason))
        dropped = set(rows)
        keep = [i for i in range(len(outcome.accepted)) if i not in dropped]
        outcome.accepted = [outcome.accepted[i] for i in keep]
        if outcome.weights:
            outcome.weights = [outcome.weights[i] for i in keep]

    def _skip(self, outcome: RoundOutcome, reason: str) -> None:
        outcome.skipped, outcome.skip_reason = True, reason
        log.warning("round %d skipped: %s", outcome.server_round, reason)

    # -- what else the server reads ------------------------------------------------------------
    def client_models(self) -> list[State]:
        """The whole models the latest round's aggregated replies trained (global sent + update); whole-model runs."""
        if self.planner.fragments:
            raise ValueError("client models of fragments are not whole models")
        if self._last_batch is None:
            return []
        layout = Layout.of(self._global)
        base = layout.flatten(self._global)
        return [layout.unflatten(base + row) for row in self._last_batch.values]

    def checkpoint_state(self) -> dict[str, object]:
        """What a resumed run needs (JSON-ready); sampling is a pure function of the seed, the round and the
        partitions connected."""
        return {"nodes": {str(n): {"partition-id": h.partition_id, "num-partitions": h.num_partitions,
                                   "profile": h.profile.to_json() if h.profile is not None else "",
                                   "device": h.device.to_json() if h.device is not None else "",
                                   "budget": h.budget.to_json() if h.budget is not None else "",
                                   "num-examples": h.num_examples}
                          for n, h in self.nodes.items()},
                "plans": {str(n): why for n, why in self.plans.items()},
                **({"memory": self.memory.state()[0]} if self.memory is not None else {}),
                **({"downlink": {**self.planner.references.state()[0],
                                 "synced": {str(n): r for n, r in self._synced.items()}}}
                   if self.planner.references is not None else {})}

    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        """The arrays a resumed run needs besides the model's (the remembered updates, the downlink references),
        by name."""
        arrays = {f"memory/{k}": v for k, v in self.memory.state()[1].items()} if self.memory is not None else {}
        if self.planner.references is not None:
            arrays |= {f"downlink/{k}": v for k, v in self.planner.references.state()[1].items()}
        return arrays

    def restore_arrays(self, state: Mapping[str, object], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`checkpoint_arrays` saved (``state``: :meth:`checkpoint_state`'s)."""
        if self.planner.references is not None:
            downlink = state.get("downlink")
            if not isinstance(downlink, dict) or not isinstance(downlink.get("synced"), dict):
                raise ValueError("checkpoint strategy state: 'downlink' is missing (a run with downlink-delta)")
            self.planner.references.load(downlink, {k.removeprefix("downlink/"): v for k, v in arrays.items()
                                                    if k.startswith("downlink/")})
            self._synced = {int(n): int(r) for n, r in downlink["synced"].items()}
        if self.memory is None:
            return
        meta = state.get("memory")
        if not isinstance(meta, dict):
            raise ValueError("checkpoint strategy state: 'memory' is missing (a run with absent-updates reused)")
        self.memory.load(meta, {k.removeprefix("memory/"): v for k, v in arrays.items() if k.startswith("memory/")})

    def restore_state(self, state: Mapping[str, object]) -> None:
        nodes, plans = state.get("nodes", {}), state.get("plans", {})
        if not isinstance(nodes, dict) or not isinstance(plans, dict):
            raise ValueError("checkpoint strategy state: 'nodes' and 'plans' must be objects")
        self.nodes = {int(n): Hello(int(h["partition-id"]), int(h["num-partitions"]),
                                    DeviceProfile.from_json(h["profile"]) if h["profile"] else None,
                                    DeviceModel.from_json(h["device"]) if h["device"] else None,
                                    Budget.from_json(h["budget"]) if h["budget"] else None, int(h["num-examples"]))
                      for n, h in nodes.items()}
        self.plans = {int(n): str(why) for n, why in plans.items()}

    # -- evaluation is server-side ---------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log.info("%s: fraction-train=%s min-train-clients=%d stages=%s", type(self).__name__, self.fraction_train,
                 self.min_train_clients, [s.name for s in self.stages] or ["mean"])
