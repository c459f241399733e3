"""Server-side resource accounting: per-client per-round records, totals, the server's own costs.

The ServerApp adds one :class:`ClientRound` per good reply (by partition-id
and device profile), its own costs per round with :meth:`ResourceLedger.add_server`,
merges :meth:`ResourceLedger.round_record` into the round's ``metrics.jsonl``
line, writes ``clients.csv`` with :meth:`ResourceLedger.write_csv` and puts
:meth:`ResourceLedger.summary` into ``summary.json``.

``clients.csv`` has one row per client per round, columns :data:`CSV_COLUMNS`:

* the :class:`~fedshrink.resources.meter.ResourceRecord` figures under their
  metric keys without ``res-``: exact counts (bytes each way as serialized,
  parameters, MACs, samples, training FLOPs) under their plain names, and
  what the host measured while it ran the client under ``host-`` names
  (wall and CPU time, RSS, energy with ``host-energy-method`` as its label,
  e.g. ``estimated:cpu-time x W/core``, and ``host-energy-estimated`` 0/1).
  In a simulation the host figures are the simulation process's, shared by
  every client it runs: never a device's.
* ``device-*``: what the client's simulated device spent, modelled from its
  device model (:mod:`fedshrink.devices`), and ``device-fedavg-*``, what
  full-width fp32 FedAvg would have cost the same device; empty for a client
  without a device model.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshrink.errors import ConfigError, ReplyError
from fedshrink.resources.energy import method_code, method_label
from fedshrink.resources.meter import METRIC_KEYS, ResourceRecord

CLIENTS_CSV = "clients.csv"
ID_COLUMNS = ("round", "partition-id", "profile", "node-id")
# measured on the host: prefixed host- in clients.csv (counts of bytes, parameters, MACs and samples are not)
HOST_MEASURED = ("res-wall-s", "res-cpu-s", "res-peak-rss-bytes", "res-rss-start-bytes", "res-gpu-peak-bytes",
                 "res-energy-j", "res-energy-method")


def column(metric_key: str) -> str:
    """The clients.csv column of a resource record's metric key."""
    return ("host-" if metric_key in HOST_MEASURED else "") + metric_key.removeprefix("res-")


FIGURE_COLUMNS = tuple(column(key) for key in METRIC_KEYS.values())
DEVICE_COLUMNS = ("device-time-s", "device-download-s", "device-compute-s", "device-upload-s", "device-energy-j",
                  "device-compute-j", "device-radio-j", "device-memory-mb", "device-fedavg-time-s",
                  "device-fedavg-energy-j", "device-fedavg-memory-mb", "device-fedavg-bytes", "device-fedavg-fits")
CSV_COLUMNS = (*ID_COLUMNS, *FIGURE_COLUMNS, "host-energy-estimated", *DEVICE_COLUMNS)
DEFAULT_PROFILE = "default"


@dataclass(frozen=True, slots=True)
class ClientRound:
    """One client's resource record in one round."""

    round: int
    partition_id: int
    profile: str
    node_id: int
    resources: ResourceRecord
    device: Mapping[str, float] = dataclasses.field(default_factory=dict)  # modelled: DEVICE_COLUMNS

    def __post_init__(self) -> None:
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ConfigError("round", self.round, "an integer >= 0")
        if isinstance(self.partition_id, bool) or not isinstance(self.partition_id, int) or self.partition_id < 0:
            raise ConfigError("partition-id", self.partition_id, "an integer >= 0")
        if not isinstance(self.profile, str) or not self.profile or "," in self.profile or "\n" in self.profile:
            raise ConfigError("profile", self.profile, "a non-empty name without commas or newlines")

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"round": self.round, "partition-id": self.partition_id,
                               "profile": self.profile, "node-id": self.node_id}
        for key, value in self.resources.to_metrics().items():
            row[column(key)] = value
        row["host-energy-method"] = method_label(self.resources.energy_method)
        row["host-energy-estimated"] = int(self.resources.energy_estimated)
        row.update({k: self.device.get(k, "") for k in DEVICE_COLUMNS})
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> ClientRound:
        try:
            metrics: dict[str, Any] = {}
            for key in METRIC_KEYS.values():
                col = column(key)
                if col == "host-energy-method":
                    metrics[key] = method_code(row[col])
                else:
                    text = row[col]
                    metrics[key] = float(text) if any(c in text for c in ".eE") else int(text)
            device = {k: float(row[k]) for k in DEVICE_COLUMNS if row.get(k, "") not in ("", None)}
            return cls(int(row["round"]), int(row["partition-id"]), row["profile"], int(row["node-id"]),
                       ResourceRecord.from_metrics(metrics), device)
        except (KeyError, ValueError, ReplyError) as exc:
            raise ConfigError("clients.csv row", dict(row), f"the columns {', '.join(CSV_COLUMNS)}") from exc


@dataclass(frozen=True)
class Totals:
    """Sums over a set of client-round records (peaks and sizes: maxima)."""

    records: int = 0
    rounds: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0  # max
    gpu_peak_bytes: int = 0  # max
    bytes_down: int = 0
    bytes_up: int = 0
    bytes_up_uncompressed: int = 0
    parameters: int = 0  # max
    macs_per_sample: int = 0  # max
    samples: int = 0
    train_flops: float = 0.0
    energy_joules: float = 0.0
    energy_estimated: bool = False  # any part of energy_joules estimated

    def to_json(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


def uncompressed_bytes(rec: ResourceRecord) -> int:
    """The reply's fp32 equivalent; a client that did not measure it (0) is taken as sending fp32."""
    return rec.bytes_sent_fp32 or rec.bytes_sent


def totals(rows: Iterable[ClientRound]) -> Totals:
    """Pure sum of :class:`ClientRound` records."""
    running = RunningTotals()
    for row in rows:
        running.add(row)
    return running.totals()


class ExactSum:
    """A running float sum equal to ``math.fsum`` of everything added (Shewchuk's exact partials).

    Keeps a handful of non-overlapping partials whatever the number of terms,
    so totals kept while a run goes equal those recomputed from ``clients.csv``.
    """

    __slots__ = ("_partials",)

    def __init__(self) -> None:
        self._partials: list[float] = []

    def add(self, x: float) -> None:
        kept: list[float] = []
        for y in self._partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                kept.append(lo)
            x = hi
        kept.append(x)
        self._partials = kept

    @property
    def value(self) -> float:
        return math.fsum(self._partials)


class RunningTotals:
    """:class:`Totals` kept up to date one record at a time, in memory independent of the count."""

    __slots__ = (
        "bytes_down",
        "bytes_up",
        "bytes_up_fp32",
        "cpu",
        "energy",
        "estimated",
        "flops",
        "gpu_peak",
        "macs",
        "parameters",
        "peak_rss",
        "records",
        "rounds",
        "samples",
        "wall",
    )

    def __init__(self) -> None:
        self.records = 0
        self.rounds: set[int] = set()
        self.wall, self.cpu, self.flops, self.energy = ExactSum(), ExactSum(), ExactSum(), ExactSum()
        self.peak_rss = self.gpu_peak = self.parameters = self.macs = 0
        self.bytes_down = self.bytes_up = self.bytes_up_fp32 = self.samples = 0
        self.estimated = False

    def add(self, row: ClientRound) -> None:
        r = row.resources
        self.records += 1
        self.rounds.add(row.round)
        self.wall.add(r.wall_seconds)
        self.cpu.add(r.cpu_seconds)
        self.flops.add(r.train_flops)
        self.energy.add(r.energy_joules)
        self.peak_rss = max(self.peak_rss, r.peak_rss_bytes)
        self.gpu_peak = max(self.gpu_peak, r.gpu_peak_bytes)
        self.parameters = max(self.parameters, r.parameters)
        self.macs = max(self.macs, r.macs_per_sample)
        self.bytes_down += r.bytes_received
        self.bytes_up += r.bytes_sent
        self.bytes_up_fp32 += uncompressed_bytes(r)
        self.samples += r.samples
        self.estimated = self.estimated or r.energy_estimated

    def totals(self) -> Totals:
        if not self.records:
            return Totals()
        return Totals(records=self.records, rounds=len(self.rounds), wall_seconds=self.wall.value,
                      cpu_seconds=self.cpu.value, peak_rss_bytes=self.peak_rss, gpu_peak_bytes=self.gpu_peak,
                      bytes_down=self.bytes_down, bytes_up=self.bytes_up, bytes_up_uncompressed=self.bytes_up_fp32,
                      parameters=self.parameters, macs_per_sample=self.macs, samples=self.samples,
                      train_flops=self.flops.value, energy_joules=self.energy.value,
                      energy_estimated=self.estimated)


@dataclass
class ServerCosts:
    """The server's own costs in one round."""

    aggregation_seconds: float = 0.0
    distillation_seconds: float = 0.0
    bytes_down: int = 0

    def add(self, aggregation_seconds: float, distillation_seconds: float, bytes_down: int) -> None:
        for key, v in (("aggregation-seconds", aggregation_seconds),
                       ("distillation-seconds", distillation_seconds), ("bytes-down", bytes_down)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v >= 0):
                raise ConfigError(key, v, "a finite number >= 0")
        self.aggregation_seconds += aggregation_seconds
        self.distillation_seconds += distillation_seconds
        self.bytes_down += int(bytes_down)


class ResourceLedger:
    """Per-client per-round records and the server's costs, with totals and ``clients.csv``.

    In memory it keeps running totals (overall, per client, per profile) and
    the open round's records. With a ``spool`` path, each round's records are
    appended to that ``clients.csv`` when the round is closed
    (:meth:`close_round`) and leave memory, so a long run or a large fleet
    costs disk, not memory; without one, every record stays in memory
    (:attr:`records`). Records are added round by round.
    """

    def __init__(self, spool: Path | None = None) -> None:
        self.spool = None if spool is None else Path(spool)
        self.server: dict[int, ServerCosts] = {}
        self._kept: list[ClientRound] = []  # every record without a spool; the open round's with one
        self._spooled = 0  # records written to the spool
        self._all = RunningTotals()
        self._by_client: dict[int, RunningTotals] = {}
        self._by_profile: dict[str, RunningTotals] = {}
        self._labels: set[str] = set()

    # -- adding ---------------------------------------------------------------------
    def add(self, round: int, partition_id: int, record: ResourceRecord, *,
            profile: str = DEFAULT_PROFILE, node_id: int = 0, device: Mapping[str, float] | None = None
            ) -> ClientRound:
        return self.add_row(ClientRound(round, partition_id, profile, node_id, record, dict(device or {})))

    def add_row(self, row: ClientRound) -> ClientRound:
        """Add a record as it stands (read back from ``clients.csv`` or a checkpoint)."""
        self._count(row)
        self._kept.append(row)
        return row

    def _count(self, row: ClientRound) -> None:
        self._all.add(row)
        self._by_client.setdefault(row.partition_id, RunningTotals()).add(row)
        self._by_profile.setdefault(row.profile, RunningTotals()).add(row)
        self._labels.add(row.resources.energy_label)

    def add_reply(self, round: int, metrics: Mapping[str, Any], *, profile: str = DEFAULT_PROFILE,
                  node_id: int = 0) -> ClientRound | None:
        """Add the record a reply's MetricRecord carries (None when it carries none).

        ``metrics`` needs ``partition-id`` and the keys of
        :meth:`ResourceRecord.to_metrics`; a malformed record raises ReplyError.
        """
        if not ResourceRecord.present_in(metrics):
            return None
        if "partition-id" not in metrics:
            raise ReplyError("resource record without 'partition-id'")
        return self.add(round, int(metrics["partition-id"]), ResourceRecord.from_metrics(metrics),
                        profile=profile, node_id=node_id)

    def add_server(self, round: int, *, aggregation_seconds: float = 0.0,
                   distillation_seconds: float = 0.0, bytes_down: int = 0) -> ServerCosts:
        """Add the server's own costs for ``round`` (adds up when called more than once)."""
        costs = self.server.setdefault(round, ServerCosts())
        costs.add(aggregation_seconds, distillation_seconds, bytes_down)
        return costs

    # -- the spool --------------------------------------------------------------------
    @property
    def spooled(self) -> int:
        """Records written to the spool so far (what a checkpoint keeps to resume from)."""
        return self._spooled

    def close_round(self) -> None:
        """Append the records kept in memory to the spool, in (round, partition-id) order; no-op without one."""
        if self.spool is None or not self._kept:
            return
        new = not self.spool.exists() or self._spooled == 0
        with open(self.spool, "w" if new else "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
            if new:
                writer.writeheader()
            for row in sorted(self._kept, key=lambda r: (r.round, r.partition_id)):
                writer.writerow(row.to_row())
        self._spooled += len(self._kept)
        self._kept = []

    def resume_spool(self, rows: int) -> None:
        """Take the spool's first ``rows`` records as this ledger's (dropping any after them) and count them.

        A resumed run calls this with the count its checkpoint kept; a spool
        with fewer rows than that raises :class:`ConfigError`.
        """
        if self.spool is None:
            raise ValueError("resume_spool needs a ledger with a spool")
        kept = list(self._read_spool(rows))
        if len(kept) < rows:
            raise ConfigError(CLIENTS_CSV, f"{len(kept)} rows", f"at least the {rows} rows the checkpoint counted")
        for row in kept:
            self._count(ClientRound.from_row(row))
        _write_rows(self.spool, kept)
        self._spooled = rows

    def _read_spool(self, limit: int) -> Iterator[dict[str, str]]:
        """The spool's first ``limit`` rows as read (fewer if it holds fewer)."""
        if self.spool is None or not limit:
            return
        with open(self.spool, newline="") as fh:
            yield from itertools.islice(csv.DictReader(fh), limit)

    # -- reading ----------------------------------------------------------------------
    @property
    def records(self) -> list[ClientRound]:
        """Every record, in (round, partition-id) order within each round (read back from the spool if any)."""
        return list(self.rows())

    def rows(self) -> Iterator[ClientRound]:
        yield from map(ClientRound.from_row, self._read_spool(self._spooled))
        yield from self._kept

    def in_round(self, round: int) -> list[ClientRound]:
        kept = [r for r in self._kept if r.round == round]
        if kept or self.spool is None:
            return kept
        return [r for r in self.rows() if r.round == round]

    def round_record(self, round: int) -> dict[str, Any]:
        """Keys to merge into the round's ``metrics.jsonl`` record.

        ``bytes-down`` is what the server measured sending when it reported it
        (:meth:`add_server`), else the sum the clients measured receiving.
        """
        rows = self.in_round(round)
        t = totals(rows)
        srv = self.server.get(round, ServerCosts())
        return {
            "bytes-up": t.bytes_up,
            "bytes-down": srv.bytes_down or t.bytes_down,
            "bytes-up-uncompressed": t.bytes_up_uncompressed,
            "energy-j": t.energy_joules,
            "energy-estimated": t.energy_estimated,
            "train-flops": t.train_flops,
            "client-wall-s-max": max((r.resources.wall_seconds for r in rows), default=0.0),
            "client-peak-rss-bytes-max": t.peak_rss_bytes,
            "aggregation-s": srv.aggregation_seconds,
            "distillation-s": srv.distillation_seconds,
        }

    def per_client(self) -> dict[int, Totals]:
        return {pid: self._by_client[pid].totals() for pid in sorted(self._by_client)}

    def per_profile(self) -> dict[str, Totals]:
        return {name: self._by_profile[name].totals() for name in sorted(self._by_profile)}

    def server_totals(self) -> ServerCosts:
        out = ServerCosts()
        for c in self.server.values():
            out.add(c.aggregation_seconds, c.distillation_seconds, c.bytes_down)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready totals for ``summary.json`` (under a key such as ``"resources"``)."""
        srv = self.server_totals()
        return {
            "clients": self._all.totals().to_json(),
            "per-profile": {k: v.to_json() for k, v in self.per_profile().items()},
            "per-client": {str(k): v.to_json() for k, v in self.per_client().items()},
            "server": {"aggregation-s": srv.aggregation_seconds, "distillation-s": srv.distillation_seconds,
                       "bytes-down": srv.bytes_down},
            "energy-methods": sorted(self._labels),
        }

    # -- clients.csv ------------------------------------------------------------------
    def write_csv(self, path: Path) -> Path:
        """Write every record to ``path`` (a directory means ``<path>/clients.csv``), atomically.

        When ``path`` is this ledger's spool, the open round is appended to it instead.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CLIENTS_CSV
        if self.spool is not None and path.resolve() == self.spool.resolve():
            self.close_round()
            if not self._spooled:
                _write_rows(path, [])
            return path
        _write_rows(path, (r.to_row() for r in sorted(self.rows(), key=lambda r: (r.round, r.partition_id))))
        return path

    @classmethod
    def read_csv(cls, path: Path) -> ResourceLedger:
        """A ledger holding the client records of a ``clients.csv`` in memory (no server costs)."""
        ledger = cls()
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                ledger.add_row(ClientRound.from_row(row))
        return ledger


def _write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """``clients.csv`` with these rows (column -> value), written to a temporary file and moved into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


__all__ = [
    "CLIENTS_CSV",
    "CSV_COLUMNS",
    "ClientRound",
    "ResourceLedger",
    "RunningTotals",
    "ServerCosts",
    "Totals",
    "totals",
    "uncompressed_bytes",
]
