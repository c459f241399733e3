"""Client state between rounds, on disk: one store per run, each client's state versioned by round.

A ClientApp keeps what it needs from one round to the next (the error-feedback
residual of a lossy uplink) in a :class:`~flwr.app.RecordDict`. Flower keeps
``context.state`` in memory for every node of the federation, so 10,000
clients of a 1M-parameter model would hold 40 GB of residuals. With
``client-state = "disk"`` (the default) the ClientApp instead reads and writes
its state through a :class:`ClientStateStore`, so memory holds the clients of
one round, not the population::

    slot = state_slot(cfg, context)        # the store of this run, keyed by this node's partition
    state = slot.load(server_round)        # RecordDict: the latest version from an earlier round
    ... ResidualStore.load(state) ... residuals.save(state) ...
    slot.save(server_round, state)

**Why SQLite** (the standard library's ``sqlite3``): one file per run; every
write is a transaction, so a process killed mid-write (SIGKILL) leaves the
last committed version and never a torn one; several processes (the Ray
engine's actors) may read and write the same file (file locks, write-ahead
log); no map size to reserve up front (LMDB) and no fixed row layout (numpy
memmaps would need one shape per client, while clients train fragments of
different shapes). It is not safe on a network file system (NFS): on a
multi-machine Ray cluster, give ``client-state-dir`` a local disk per node
only if each client always lands on the same node, else keep
``client-state = "memory"`` (see ``docs/scale.md``).

**Versions and resume.** A state is stored under ``(client, round)``.
:meth:`ClientStateStore.load` returns the newest version from a round
*before* the current one; :meth:`ClientStateStore.save` writes the current
round's version and deletes the versions older than the one it read, in one
transaction. So a client keeps at most two versions, and a round that is
played again (the server was killed after the client wrote, and resumed from
the previous round's checkpoint) reads exactly what it read the first time:
resume is bit-exact without copying the store into the checkpoint. When the
server can reach the store (simulation) it also drops versions newer than its
checkpoint (:meth:`ClientStateStore.discard_after`).

**What is stored.** The RecordDict in Flower's own protobuf serialisation
(read back with Flower's parser, never unpickled), optionally compressed with
zstd (``client-state-compress = "zstd"``). Both are exact: the residual's
float32 bits come back unchanged. Nothing lossy is applied: a top-k residual
is dense in general (only the sent coordinates are zero), a quantizer's too,
and a lower precision would change the next round's update. zstd gains
little on float32 residuals: on the default CNN's top-k residual (110,922
values) 9 % smaller for about 2.6 ms more per client to pack and unpack.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flwr.app import Context, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedshrink.errors import ConfigError, FedShrinkError

STORE_FILE = "state.sqlite"
STATE_DIR = "client-state"  # inside a run directory
COMPRESSIONS = ("none", "zstd")
_MAGIC = b"FSCS1"  # fedshrink client state, format 1; then one byte: compression
_ZSTD_LEVEL = 1  # float32 residuals gain little from higher levels and cost ~10x the time


class StateStoreError(FedShrinkError):
    """A stored client state cannot be read (a foreign or damaged blob), or the store cannot be opened."""


def pack_state(state: RecordDict, compression: str = "none") -> bytes:
    """``state`` as bytes: a magic, the compression, then Flower's protobuf serialisation (zstd'd or not)."""
    if compression not in COMPRESSIONS:
        raise ConfigError("client-state-compress", compression, f"one of {', '.join(COMPRESSIONS)}")
    body = recorddict_to_proto(state).SerializeToString()
    if compression == "zstd":
        import zstandard

        body = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(body)
    return _MAGIC + bytes([COMPRESSIONS.index(compression)]) + body


def unpack_state(blob: bytes, *, what: str = "client state", max_bytes: int = 1 << 34) -> RecordDict:
    """The RecordDict :func:`pack_state` wrote; :class:`StateStoreError` naming ``what`` for anything else."""
    if len(blob) < len(_MAGIC) + 1 or blob[: len(_MAGIC)] != _MAGIC or blob[len(_MAGIC)] >= len(COMPRESSIONS):
        raise StateStoreError(f"{what}: not a fedshrink client state (format {_MAGIC.decode()})")
    body = blob[len(_MAGIC) + 1:]
    try:
        if COMPRESSIONS[blob[len(_MAGIC)]] == "zstd":
            import zstandard

            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=max_bytes)
        proto = ProtoRecordDict()
        proto.ParseFromString(body)
        return recorddict_from_proto(proto)
    except Exception as exc:  # zstd or protobuf errors, or Flower refusing a record
        raise StateStoreError(f"{what}: damaged ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class StoreStats:
    """What a store holds: distinct clients, stored versions, and bytes of state (blobs, not file pages)."""

    clients: int
    versions: int
    state_bytes: int


class ClientStateStore:
    """The on-disk, round-versioned store of a run's client states (see the module doc)."""

    def __init__(self, path: Path, *, compression: str = "none", timeout: float = 120.0) -> None:
        if compression not in COMPRESSIONS:
            raise ConfigError("client-state-compress", compression, f"one of {', '.join(COMPRESSIONS)}")
        self.path = Path(path)
        self.compression = compression
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
            self._db.execute("PRAGMA synchronous=NORMAL")  # a killed process loses no committed write
            self._db.execute("CREATE TABLE IF NOT EXISTS state (client TEXT NOT NULL, round INTEGER NOT NULL, "
                             "blob BLOB NOT NULL, PRIMARY KEY (client, round)) WITHOUT ROWID")
        except sqlite3.Error as exc:
            raise StateStoreError(f"cannot open the client state store {self.path}: {exc}") from exc

    def load(self, client: str, server_round: int) -> RecordDict:
        """``client``'s newest state from a round before ``server_round`` (an empty RecordDict if none)."""
        with self._lock:
            row = self._db.execute("SELECT round, blob FROM state WHERE client = ? AND round < ? "
                                   "ORDER BY round DESC LIMIT 1", (client, server_round)).fetchone()
        if row is None:
            return RecordDict()
        return unpack_state(bytes(row[1]), what=f"state of client {client} from round {row[0]} in {self.path}")

    def save(self, client: str, server_round: int, state: RecordDict) -> None:
        """Store ``state`` as ``client``'s version of ``server_round``; drop versions older than the one
        :meth:`load` returns for this round (one transaction)."""
        blob = pack_state(state, self.compression)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO state (client, round, blob) VALUES (?, ?, ?)",
                                 (client, server_round, blob))
                self._db.execute("DELETE FROM state WHERE client = ? AND round < (SELECT MAX(round) FROM state "
                                 "WHERE client = ? AND round < ?)", (client, client, server_round))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def discard_after(self, server_round: int) -> int:
        """Delete every version written in a round after ``server_round`` (a resume); returns how many."""
        with self._lock:
            return int(self._db.execute("DELETE FROM state WHERE round > ?", (server_round,)).rowcount)

    def stats(self) -> StoreStats:
        with self._lock:
            clients, versions, size = self._db.execute(
                "SELECT COUNT(DISTINCT client), COUNT(*), COALESCE(SUM(LENGTH(blob)), 0) FROM state").fetchone()
        return StoreStats(int(clients), int(versions), int(size))

    def close(self) -> None:
        with self._lock:
            self._db.close()


_OPEN: dict[tuple[Path, str], ClientStateStore] = {}
_OPEN_LOCK = threading.Lock()


def open_store(path: Path, compression: str = "none") -> ClientStateStore:
    """The process's connection to the store at ``path`` (opened once, then reused by every client call)."""
    key = (Path(path).resolve(), compression)
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is None:
            store = _OPEN[key] = ClientStateStore(key[0], compression=compression)
        return store


def close_stores(under: Path | None = None) -> None:
    """Close this process's connections (those to stores below ``under`` only, when given)."""
    with _OPEN_LOCK:
        for key in list(_OPEN):
            if under is None or key[0].is_relative_to(Path(under).resolve()):
                _OPEN.pop(key).close()


# -- where a run's store lives ---------------------------------------------------------------------
def store_dir(run_config: Mapping[str, object], node_config: Mapping[str, object], run_id: int) -> Path:
    """The directory of this run's store, as a ClientApp (and the server) finds it.

    * ``client-state-dir`` in the node config (a SuperNode's own disk), else in the run config:
      ``<dir>/<run>``, where ``<run>`` names the run (below);
    * else the run directory: ``<resume>/client-state`` when resuming, else
      ``<output-dir>/<run>/client-state``.

    ``<run>`` is ``run-name`` (the fedshrink CLI and the in-process runner always set it), the resumed run's
    directory name, or, for a bare ``flwr run`` without a name, ``run-<Flower run id>``.
    """
    resume = str(run_config.get("resume", "") or "")
    name = Path(resume).expanduser().name if resume else str(run_config.get("run-name", "") or "")
    name = name or f"run-{run_id}"
    root = str(node_config.get("client-state-dir", "") or run_config.get("client-state-dir", "") or "")
    if root:
        return Path(root).expanduser().absolute() / name
    if resume:
        return Path(resume).expanduser().absolute() / STATE_DIR
    out = Path(str(run_config.get("output-dir", "runs") or "runs")).expanduser().absolute()
    return out / name / STATE_DIR


class StateSlot(Protocol):
    """Where one client's state lives between rounds."""

    def load(self, server_round: int) -> RecordDict: ...

    def save(self, server_round: int, state: RecordDict) -> None: ...


class ContextSlot:
    """Flower's ``context.state``, in memory (``client-state = "memory"``)."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def load(self, server_round: int) -> RecordDict:
        return self.context.state

    def save(self, server_round: int, state: RecordDict) -> None:
        self.context.state = state


class StoreSlot:
    """One client's versions in the run's :class:`ClientStateStore` (``client-state = "disk"``)."""

    def __init__(self, store: ClientStateStore, client: str) -> None:
        self.store = store
        self.client = client

    def load(self, server_round: int) -> RecordDict:
        return self.store.load(self.client, server_round)

    def save(self, server_round: int, state: RecordDict) -> None:
        self.store.save(self.client, server_round, state)


def state_slot(mode: str, compression: str, context: Context, client: str) -> StateSlot:
    """The slot of ``client`` (its partition id) under ``client-state = mode``."""
    if mode == "memory":
        return ContextSlot(context)
    if mode != "disk":
        raise ConfigError("client-state", mode, "'disk' or 'memory'")
    path = store_dir(context.run_config, context.node_config, context.run_id) / STORE_FILE
    return StoreSlot(open_store(path, compression), client)
