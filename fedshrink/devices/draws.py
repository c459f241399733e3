"""Per-client device figures: seeded draws around a profile's medians, or a trace file.

Clients of one profile differ. Client ``c`` of a run seeded ``s`` draws, once
for the whole run, a factor for each of throughput, uplink, downlink and
latency::

    value = median x exp(spread x z),    z ~ N(0, 1)

from ``numpy.random.default_rng([s, c, DRAW_STREAM])``: a log-normal whose
median is the profile's figure and whose spread (sigma of the log) is the
``device-spread`` setting (0: every client at the medians). Memory, powers
and availability stay at the profile's figures.

Whether a sampled client is online in round ``r`` is a Bernoulli draw with
the client's availability, from ``default_rng([s, r, c, AVAILABILITY_STREAM])``:
the same for the same (seed, round, client), independent across them.

A trace file (``device-trace``) gives each client's figures instead, as CSV
with exactly this header (units as in :mod:`fedshrink.devices.model`)::

    client,throughput,uplink,downlink,latency,availability
    0,10.5,6.2,12.0,0.05,0.6            # GFLOP/s, Mbit/s, Mbit/s, s, [0, 1]

Every fault is one :class:`~fedshrink.errors.ConfigError` line naming the
file, the line and the column. Figures not in the trace (memory, powers)
come from the client's profile.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from fedshrink.devices.model import DeviceModel
from fedshrink.errors import ConfigError

DRAW_STREAM = 0x0D5E
AVAILABILITY_STREAM = 0x0A7A
TRACE_COLUMNS = ("client", "throughput", "uplink", "downlink", "latency", "availability")
MAX_TRACE_ROWS = 1_000_000


def _check_seed_parts(*parts: int) -> None:
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 0:
            raise ConfigError("device-draw", parts, "non-negative integers (seed, round, client)")


def draw_device(median: DeviceModel, client: int, seed: int, spread: float) -> DeviceModel:
    """Client ``client``'s device: ``median`` with throughput, links and latency drawn log-normally."""
    _check_seed_parts(seed, client)
    if isinstance(spread, bool) or not isinstance(spread, int | float) or not 0 <= spread <= 3:
        raise ConfigError("device-spread", spread, "a number in [0, 3]")
    if spread == 0:
        return median
    z = np.random.default_rng([int(seed), int(client), DRAW_STREAM]).standard_normal(4)
    f = np.exp(spread * z)
    return median.replace(gflops=median.gflops * float(f[0]), uplink_mbps=median.uplink_mbps * float(f[1]),
                          downlink_mbps=median.downlink_mbps * float(f[2]), latency_s=median.latency_s * float(f[3]))


def client_device(median: DeviceModel, client: int, seed: int, spread: float, trace: DeviceTrace | None = None
                  ) -> DeviceModel:
    """Client ``client``'s device in simulation: its trace row when a trace is given, else its seeded draw."""
    if trace is not None:
        return trace.device_for(client, median)
    return draw_device(median, client, seed, spread)


def is_available(device: DeviceModel, client: int, seed: int, server_round: int) -> bool:
    """Whether the client is online in ``server_round`` (a seeded Bernoulli draw with its availability)."""
    _check_seed_parts(seed, server_round, client)
    u = np.random.default_rng([int(seed), int(server_round), int(client), AVAILABILITY_STREAM]).random()
    return bool(u < device.availability)


@dataclass(frozen=True)
class TraceRow:
    """One client's figures from a trace file (GFLOP/s, Mbit/s, Mbit/s, s, probability)."""

    throughput: float
    uplink: float
    downlink: float
    latency: float
    availability: float

    def apply(self, base: DeviceModel) -> DeviceModel:
        """``base`` (the client's profile device) with this row's figures."""
        return base.replace(gflops=self.throughput, uplink_mbps=self.uplink, downlink_mbps=self.downlink,
                            latency_s=self.latency, availability=self.availability)


@dataclass(frozen=True)
class DeviceTrace:
    """Per-client device figures read from a trace file."""

    source: str
    rows: Mapping[int, TraceRow]

    def device_for(self, client: int, base: DeviceModel) -> DeviceModel:
        """Client ``client``'s device; a client the trace lacks is an error (never a silent default)."""
        if client not in self.rows:
            raise ConfigError("device-trace", self.source, f"a row for every client; client {client} has none")
        return self.rows[client].apply(base)


def _cell(source: str, line: int, column: str, text: str, *, lo: float, lo_open: bool, hi: float | None) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
        raise ConfigError("device-trace", f"{source}:{line}",
                          f"column {column!r} a finite number {bound} (it is {text.strip()!r})")
    return value


def _row(source: str, line: int, cells: list[str]) -> tuple[int, TraceRow]:
    if len(cells) != len(TRACE_COLUMNS):
        raise ConfigError("device-trace", f"{source}:{line}",
                          f"{len(TRACE_COLUMNS)} comma-separated values (it has {len(cells)})")
    text = cells[0].strip()
    if not text.isdigit():
        raise ConfigError("device-trace", f"{source}:{line}", f"column 'client' an integer >= 0 (it is {text!r})")
    def positive(i: int) -> float:
        return _cell(source, line, TRACE_COLUMNS[i], cells[i], lo=0.0, lo_open=True, hi=None)

    row = TraceRow(
        positive(1),
        positive(2),
        positive(3),
        _cell(source, line, "latency", cells[4], lo=0.0, lo_open=False, hi=None),
        _cell(source, line, "availability", cells[5], lo=0.0, lo_open=False, hi=1.0),
    )
    return int(text), row


def parse_trace(text: str, source: str = "<trace>") -> DeviceTrace:
    """A :class:`DeviceTrace` from CSV text (format and errors in the module doc)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != TRACE_COLUMNS:
        raise ConfigError("device-trace", f"{source}:1", "the header " + ",".join(TRACE_COLUMNS))
    rows: dict[int, TraceRow] = {}
    for line, cells in enumerate(reader, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(rows) >= MAX_TRACE_ROWS:
            raise ConfigError("device-trace", f"{source}:{line}", f"at most {MAX_TRACE_ROWS} rows")
        client, row = _row(source, line, cells)
        if client in rows:
            raise ConfigError("device-trace", f"{source}:{line}", f"one row per client; client {client} repeats")
        rows[client] = row
    if not rows:
        raise ConfigError("device-trace", source, "at least one row after the header")
    return DeviceTrace(source, MappingProxyType(rows))


def load_trace(path: str | Path) -> DeviceTrace:
    """Read and parse a trace file (an unreadable file is a one-line error too)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("device-trace", str(path), f"a readable UTF-8 CSV file ({type(exc).__name__})") from None
    return parse_trace(text, str(path))
