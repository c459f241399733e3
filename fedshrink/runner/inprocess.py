"""An in-process Grid: the real ServerApp and ClientApp, no Ray, no SuperLink.

:class:`InProcessGrid` implements Flower's ``Grid`` by calling the ClientApp
object directly (``app(message, context)``), one node after another, each
node with its own persistent ``Context`` (so ``context.state`` survives
across rounds as it does in Flower's engines). A ClientApp exception becomes
an error reply, as Flower's runtime would send. :func:`run_inprocess` drives
the ServerApp itself through it: the same code path as ``flwr run``, in
seconds, for tests and notebooks.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedshrink.config import RunConfig
from fedshrink.errors import ConfigError
from fedshrink.report.rundir import RunDirectory, unique_run_name
from fedshrink.robust.checkpoint import resumed_config
from fedshrink.robust.faults import ClientDropout
from fedshrink.runner.state import close_stores, store_dir

CLIENT_EXCEPTION = 10  # mirrors the code Flower's runtime uses for a ClientApp exception


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: list[dict[str, Any]],
        run_config: Mapping[str, Any],
        *,
        run_id: int = 1,
        first_node_id: int = 1001,
    ) -> None:
        self._app = client_app
        self._run = Run.create_empty(run_id)
        self._run_id = run_id
        self._node_configs = {first_node_id + i: dict(c) for i, c in enumerate(node_configs)}
        self._run_config = dict(run_config)  # one mapping, shared by every node's Context
        self._contexts: dict[int, Context] = {}  # made when a node is first called: a population costs no memory
        self._inbox: dict[str, Message] = {}
        self.calls = 0
        self.dropouts = 0  # deliveries a ClientApp refused as a simulated dropout (no reply sent)

    # -- Grid ------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_configs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            if nid not in self._node_configs:
                raise ValueError(f"message for unknown node {nid}")
            mid = uuid.uuid4().hex
            reply = self._deliver(msg, self.context(nid))
            if not len(self._contexts[nid].state):  # nothing to keep: memory stays flat over a population
                del self._contexts[nid]
            if reply is not None:
                self._inbox[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._inbox.pop(mid) for mid in message_ids if mid in self._inbox]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def context(self, node_id: int) -> Context:
        """Node ``node_id``'s persistent Context (made on first use)."""
        ctx = self._contexts.get(node_id)
        if ctx is None:
            ctx = self._contexts[node_id] = Context(run_id=self._run_id, node_id=node_id,
                                                    node_config=self._node_configs[node_id], state=RecordDict(),
                                                    run_config=self._run_config)
        return ctx

    # -- checkpoints (fedshrink.robust.checkpoint.ClientStateGrid) --------------------------
    def export_client_states(self) -> dict[int, RecordDict]:
        """Every simulated node's non-empty ``context.state`` (live references; the checkpoint serialises them).

        With ``client-state = "disk"`` these are empty: the state lives in the run's store, which is
        versioned by round and needs no copy in the checkpoint (:mod:`fedshrink.runner.state`).
        """
        return {nid: ctx.state for nid, ctx in self._contexts.items() if len(ctx.state)}

    def import_client_states(self, states: dict[int, RecordDict]) -> None:
        unknown = sorted(set(states) - set(self._node_configs))
        if unknown:
            raise ConfigError("resume", unknown[:5], f"a checkpoint of the same {len(self._node_configs)} simulated "
                              "nodes")
        for nid, state in states.items():
            self.context(nid).state = state

    def _deliver(self, msg: Message, context: Context) -> Message | None:
        self.calls += 1
        try:
            return self._app(msg, context)
        except ClientDropout:  # a simulated dropout: the node sends nothing, the server's round times out on it
            self.dropouts += 1
            return None
        except Exception as exc:  # becomes an error reply, as in Flower's runtime
            return Message(Error(CLIENT_EXCEPTION, f"{type(exc).__name__}: {exc}"), reply_to=msg)


@contextlib.contextmanager
def server_identity(run_id: int) -> Iterator[None]:
    """Set the process-wide task identity a ServerApp needs to create messages."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def simulation_node_configs(num_clients: int) -> list[dict[str, Any]]:
    """Node configs as Flower's simulation engine sets them."""
    if num_clients < 1:
        raise ConfigError("num-clients", num_clients, "an integer >= 1")
    return [{"partition-id": i, "num-partitions": num_clients} for i in range(num_clients)]


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    grid: InProcessGrid


_RUN_IDS = itertools.count(1)


def run_inprocess(
    overrides: Mapping[str, Any] | None = None,
    *,
    num_clients: int = 20,
    node_configs: list[dict[str, Any]] | None = None,
    server_app: ServerApp | None = None,
    client_app: ClientApp | None = None,
) -> RunResult:
    """Run the ServerApp and ClientApp in this process; return the run directory and summary.

    ``overrides`` are run-config keys (kebab-case) on top of the defaults, as
    ``flwr run --run-config`` gives them. They are validated before anything
    is written.
    """
    from fedshrink.client_app import app as default_client_app
    from fedshrink.server_app import app as default_server_app

    cfg = resumed_config(RunConfig.from_mapping(dict(overrides or {})))  # resume: the stored settings
    cfg = cfg.with_values({"run-name": unique_run_name(cfg)})  # fixed here so the run directory can be found afterwards
    configs = node_configs if node_configs is not None else simulation_node_configs(num_clients)
    train_pool = _train_pool_size(cfg)
    if len(configs) > train_pool:
        raise ConfigError("num-clients", len(configs), f"an integer in [1, {train_pool}] (the clients the data allows)")
    run_id = next(_RUN_IDS) + int(time.time())
    run_config = cfg.to_mapping()
    grid = InProcessGrid(client_app or default_client_app, configs, run_config, run_id=run_id)
    context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={},
                      state=RecordDict(), run_config=run_config)
    path = Path(cfg.robust.resume).expanduser() if cfg.robust.resume else RunDirectory.resolve(cfg)
    try:
        with server_identity(run_id):
            (server_app or default_server_app)(grid, context)
    finally:
        close_stores(store_dir(run_config, {}, run_id))  # this process's connections to the run's client state
    return RunResult(run_dir=path, summary=RunDirectory(path).read_summary(), grid=grid)


def _train_pool_size(cfg: RunConfig) -> int:
    from fedshrink.data.federated import max_clients

    return max_clients(cfg.split_spec(), cfg.partition_scheme())
