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
import math
from collections.abc import Iterable, Mapping
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
    rows = list(rows)
    recs = [r.resources for r in rows]
    if not recs:
        return Totals()
    return Totals(
        records=len(recs),
        rounds=len({r.round for r in rows}),
        wall_seconds=math.fsum(r.wall_seconds for r in recs),
        cpu_seconds=math.fsum(r.cpu_seconds for r in recs),
        peak_rss_bytes=max(r.peak_rss_bytes for r in recs),
        gpu_peak_bytes=max(r.gpu_peak_bytes for r in recs),
        bytes_down=sum(r.bytes_received for r in recs),
        bytes_up=sum(r.bytes_sent for r in recs),
        bytes_up_uncompressed=sum(uncompressed_bytes(r) for r in recs),
        parameters=max(r.parameters for r in recs),
        macs_per_sample=max(r.macs_per_sample for r in recs),
        samples=sum(r.samples for r in recs),
        train_flops=math.fsum(r.train_flops for r in recs),
        energy_joules=math.fsum(r.energy_joules for r in recs),
        energy_estimated=any(r.energy_estimated for r in recs),
    )


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
    """Per-client per-round records and the server's costs, with totals and ``clients.csv``."""

    def __init__(self) -> None:
        self.records: list[ClientRound] = []
        self.server: dict[int, ServerCosts] = {}

    # -- adding ---------------------------------------------------------------------
    def add(self, round: int, partition_id: int, record: ResourceRecord, *,
            profile: str = DEFAULT_PROFILE, node_id: int = 0, device: Mapping[str, float] | None = None
            ) -> ClientRound:
        row = ClientRound(round, partition_id, profile, node_id, record, dict(device or {}))
        self.records.append(row)
        return row

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

    # -- reading ----------------------------------------------------------------------
    def in_round(self, round: int) -> list[ClientRound]:
        return [r for r in self.records if r.round == round]

    def round_record(self, round: int) -> dict[str, Any]:
        """Keys to merge into the round's ``metrics.jsonl`` record.

        ``bytes-down`` is what the server measured sending when it reported it
        (:meth:`add_server`), else the sum the clients measured receiving.
        """
        t = totals(self.in_round(round))
        srv = self.server.get(round, ServerCosts())
        return {
            "bytes-up": t.bytes_up,
            "bytes-down": srv.bytes_down or t.bytes_down,
            "bytes-up-uncompressed": t.bytes_up_uncompressed,
            "energy-j": t.energy_joules,
            "energy-estimated": t.energy_estimated,
            "train-flops": t.train_flops,
            "client-wall-s-max": max((r.resources.wall_seconds for r in self.in_round(round)), default=0.0),
            "client-peak-rss-bytes-max": t.peak_rss_bytes,
            "aggregation-s": srv.aggregation_seconds,
            "distillation-s": srv.distillation_seconds,
        }

    def per_client(self) -> dict[int, Totals]:
        ids = sorted({r.partition_id for r in self.records})
        return {pid: totals(r for r in self.records if r.partition_id == pid) for pid in ids}

    def per_profile(self) -> dict[str, Totals]:
        names = sorted({r.profile for r in self.records})
        return {name: totals(r for r in self.records if r.profile == name) for name in names}

    def server_totals(self) -> ServerCosts:
        out = ServerCosts()
        for c in self.server.values():
            out.add(c.aggregation_seconds, c.distillation_seconds, c.bytes_down)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready totals for ``summary.json`` (under a key such as ``"resources"``)."""
        srv = self.server_totals()
        labels = sorted({r.resources.energy_label for r in self.records})
        return {
            "clients": totals(self.records).to_json(),
            "per-profile": {k: v.to_json() for k, v in self.per_profile().items()},
            "per-client": {str(k): v.to_json() for k, v in self.per_client().items()},
            "server": {"aggregation-s": srv.aggregation_seconds, "distillation-s": srv.distillation_seconds,
                       "bytes-down": srv.bytes_down},
            "energy-methods": labels,
        }

    # -- clients.csv ------------------------------------------------------------------
    def write_csv(self, path: Path) -> Path:
        """Write every record to ``path`` (a directory means ``<path>/clients.csv``), atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / CLIENTS_CSV
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
            writer.writeheader()
            for row in sorted(self.records, key=lambda r: (r.round, r.partition_id)):
                writer.writerow(row.to_row())
        tmp.replace(path)
        return path

    @classmethod
    def read_csv(cls, path: Path) -> ResourceLedger:
        """A ledger holding the client records of a ``clients.csv`` (no server costs)."""
        ledger = cls()
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                ledger.records.append(ClientRound.from_row(row))
        return ledger


__all__ = [
    "CLIENTS_CSV",
    "CSV_COLUMNS",
    "ClientRound",
    "ResourceLedger",
    "ServerCosts",
    "Totals",
    "totals",
    "uncompressed_bytes",
]
