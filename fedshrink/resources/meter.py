"""Client-side metering: :class:`ResourceMeter` around a round, :class:`ResourceRecord` in the reply.

Usage in a ClientApp::

    meter = ResourceMeter(watts_per_core=cfg_watts)          # or ResourceMeter() for the default
    with meter:
        ...decode, train, encode...
    record = meter.record(bytes_received=message_size(msg), parameters=count_parameters(model),
                          macs_per_sample=macs_per_sample(model, spec.input_shape),
                          samples=result.num_examples * epochs)
    reply = Message(RecordDict({"arrays": ..., "metrics": MetricRecord({...training metrics...})}),
                    reply_to=msg)
    record = reply_with_record(reply, record, metrics_key="metrics")   # exact bytes_sent, in place

What is measured, and how:

* ``wall_seconds``: ``time.perf_counter`` over the block (after a CUDA
  synchronise when a GPU device is given).
* ``cpu_seconds``: process CPU time, user + system, of every thread
  (``time.process_time``), so it includes the sampler thread (a few
  microseconds per sample).
* ``peak_rss_bytes``: the process's resident-set high-water during the block.
  On Linux the kernel's high-water mark (``VmHWM`` in ``/proc/self/status``)
  is reset at the start by writing ``5`` to ``/proc/self/clear_refs`` and read
  at the end: the exact peak, however short. Where the reset is not allowed
  (or a meter is already running in this process), a background thread
  samples the RSS every ``sample_interval`` seconds (default
  :data:`DEFAULT_SAMPLE_INTERVAL` = 10 ms; spikes shorter than that can be
  missed) and the high-water is used only if it rose during the block. The
  sampler runs only when the exact reset is unavailable (``sample=None``,
  the default; ``sample=True`` forces it, ``False`` turns it off): on a
  Python-heavy training loop its wake-ups cost a few percent of round time
  for nothing when the kernel already keeps the exact peak. The method used
  is :attr:`MeterReading.peak_method` ("hwm-reset", "hwm-delta+sampled",
  "sampled"; "+sampled" only when the sampler ran).
* ``gpu_peak_bytes``: on a CUDA device, ``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats`` (tensors only, not the allocator's cache).
* energy: see :mod:`fedshrink.resources.energy` (measured where readable,
  otherwise estimated from ``cpu_seconds`` and labelled so).

The meter measures the whole process: clients that run concurrently in one
process (threads) share their figures.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedshrink.errors import ConfigError, ReplyError
from fedshrink.resources.energy import (
    DEFAULT_WATTS_PER_CORE,
    ENERGY_METHODS,
    EnergyProbe,
    check_watts,
    is_estimated,
    method_label,
)
from fedshrink.resources.flops import training_flops

DEFAULT_SAMPLE_INTERVAL = 0.01  # seconds between RSS samples of the fallback sampler
_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_HWM = re.compile(rb"VmHWM:\s+(\d+)\s+kB")


# ---------------------------------------------------------------------------------
# the record that travels in the reply
# ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ResourceRecord:
    """One client's costs for one round. Units are in the field names' comments."""

    wall_seconds: float  # s, the metered block
    cpu_seconds: float  # core-s, process user + system
    peak_rss_bytes: int  # B, process RSS high-water during the block
    rss_start_bytes: int  # B, RSS when the block began
    gpu_peak_bytes: int  # B, torch allocator peak on the GPU (0 without one)
    bytes_received: int  # B, encoded size of the message received (downlink)
    bytes_sent: int  # B, encoded size of the reply (uplink), this record included
    bytes_sent_fp32: int  # B, the same reply with plain fp32 arrays (0 = not measured)
    parameters: int  # parameters of the client's model (its fragment)
    macs_per_sample: int  # multiply-accumulates of one forward pass of one sample
    samples: int  # samples processed in training (examples x epochs)
    train_flops: float  # FLOPs = 3 x 2 x MACs x samples (see fedshrink.resources.flops)
    energy_joules: float  # J
    energy_method: int  # a key of fedshrink.resources.energy.ENERGY_METHODS

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            key = METRIC_KEYS[f.name]
            if f.type == "int" or f.type is int:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(key, value, "an integer >= 0")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ConfigError(key, value, "a finite number >= 0")
        method_label(self.energy_method)  # raises for an unknown code

    @property
    def energy_label(self) -> str:
        return method_label(self.energy_method)

    @property
    def energy_estimated(self) -> bool:
        return is_estimated(self.energy_method)

    def replace(self, **changes: Any) -> ResourceRecord:
        return dataclasses.replace(self, **changes)

    def to_metrics(self) -> dict[str, int | float]:
        """Plain ints and floats under :data:`METRIC_KEYS`, for a Flower ``MetricRecord``.

        Integer figures are ints, except those in :data:`FIXED_WIDTH_KEYS`
        (``bytes_sent``), written as floats: a double is 8 bytes on the wire
        whatever its value, so a reply can carry its own exact size (exact
        for sizes below 2**53 bytes). :meth:`from_metrics` turns them back into ints.
        """
        out: dict[str, int | float] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            as_int = f.type in ("int", int) and f.name not in FIXED_WIDTH_KEYS
            out[METRIC_KEYS[f.name]] = int(value) if as_int else float(value)
        return out

    def to_wire(self) -> dict[str, list[int] | list[float]]:
        """The record as a reply carries it: two lists in field order, :data:`WIRE_INTS` and
        :data:`WIRE_FLOATS` (about 100 bytes against about 360 under :data:`METRIC_KEYS`' names).
        ``bytes_sent`` is among the floats (8 bytes whatever its value, as in :meth:`to_metrics`)."""
        return {WIRE_INTS: [int(getattr(self, name)) for name in _WIRE_INT_FIELDS],
                WIRE_FLOATS: [float(getattr(self, name)) for name in _WIRE_FLOAT_FIELDS]}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> ResourceRecord:
        """Read back what :meth:`to_wire` or :meth:`to_metrics` wrote (other keys are ignored).

        A missing key or a bad value raises :class:`~fedshrink.errors.ReplyError`.
        """
        if WIRE_INTS in metrics or WIRE_FLOATS in metrics:
            return cls._from_wire(metrics)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = METRIC_KEYS[f.name]
            if key not in metrics:
                raise ReplyError(f"resource record lacks {key!r}")
            value = metrics[key]
            if f.type in ("int", int) and isinstance(value, float) and value.is_integer():
                value = int(value)
            kwargs[f.name] = value
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ReplyError(f"bad resource record: {exc}") from exc

    @classmethod
    def _from_wire(cls, metrics: Mapping[str, Any]) -> ResourceRecord:
        ints, floats = metrics.get(WIRE_INTS), metrics.get(WIRE_FLOATS)
        if not isinstance(ints, list) or len(ints) != len(_WIRE_INT_FIELDS) or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise ReplyError(f"resource record {WIRE_INTS!r} must be {len(_WIRE_INT_FIELDS)} integers")
        if not isinstance(floats, list) or len(floats) != len(_WIRE_FLOAT_FIELDS) or \
                not all(isinstance(v, float) for v in floats):
            raise ReplyError(f"resource record {WIRE_FLOATS!r} must be {len(_WIRE_FLOAT_FIELDS)} numbers")
        kwargs: dict[str, Any] = dict(zip(_WIRE_INT_FIELDS, ints, strict=True))
        kwargs.update(zip(_WIRE_FLOAT_FIELDS, floats, strict=True))
        if kwargs["bytes_sent"].is_integer():
            kwargs["bytes_sent"] = int(kwargs["bytes_sent"])
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ReplyError(f"bad resource record: {exc}") from exc

    @staticmethod
    def present_in(metrics: Mapping[str, Any]) -> bool:
        """Whether ``metrics`` carries a resource record (as a reply does, or under its named keys)."""
        return WIRE_INTS in metrics or METRIC_KEYS["energy_method"] in metrics


# field name -> MetricRecord key ("res-" prefix keeps them apart from training metrics)
METRIC_KEYS: dict[str, str] = {
    "wall_seconds": "res-wall-s",
    "cpu_seconds": "res-cpu-s",
    "peak_rss_bytes": "res-peak-rss-bytes",
    "rss_start_bytes": "res-rss-start-bytes",
    "gpu_peak_bytes": "res-gpu-peak-bytes",
    "bytes_received": "res-bytes-down",
    "bytes_sent": "res-bytes-up",
    "bytes_sent_fp32": "res-bytes-up-fp32",
    "parameters": "res-params",
    "macs_per_sample": "res-macs-per-sample",
    "samples": "res-samples",
    "train_flops": "res-train-flops",
    "energy_joules": "res-energy-j",
    "energy_method": "res-energy-method",
}
FIXED_WIDTH_KEYS = frozenset({"bytes_sent"})  # fields written as doubles (fixed 8 bytes on the wire)
assert set(METRIC_KEYS) == {f.name for f in dataclasses.fields(ResourceRecord)}
# a reply's form (ResourceRecord.to_wire): the integer fields, then the others, each in field order
WIRE_INTS, WIRE_FLOATS = "res-i", "res-f"
_WIRE_INT_FIELDS = tuple(f.name for f in dataclasses.fields(ResourceRecord)
                         if f.type in ("int", int) and f.name not in FIXED_WIDTH_KEYS)
_WIRE_FLOAT_FIELDS = tuple(f.name for f in dataclasses.fields(ResourceRecord) if f.name not in _WIRE_INT_FIELDS)


# ---------------------------------------------------------------------------------
# memory probes
# ---------------------------------------------------------------------------------
def read_hwm_bytes() -> int | None:
    """The process's RSS high-water mark in bytes (Linux ``VmHWM``), or None where unavailable."""
    try:
        m = _HWM.search(_PROC_STATUS.read_bytes())
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def reset_hwm() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False if refused."""
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


_active = 0
_active_lock = threading.Lock()


@dataclass(frozen=True)
class MeterReading:
    """What a :class:`ResourceMeter` measured over its block."""

    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    rss_start_bytes: int
    gpu_peak_bytes: int
    energy_joules: float
    energy_method: int
    peak_method: str  # "hwm-reset", "hwm-delta+sampled", "sampled" (or "start-end" without sampler)
    samples_taken: int = field(default=0)

    @property
    def peak_increase_bytes(self) -> int:
        return max(0, self.peak_rss_bytes - self.rss_start_bytes)


@lru_cache(maxsize=4)
def _process(pid: int) -> psutil.Process:
    """This process's psutil handle, made once per pid (a fork gets its own): making one costs tens of us."""
    return psutil.Process(pid)


@lru_cache(maxsize=8)
def default_probe(watts_per_core: float = DEFAULT_WATTS_PER_CORE) -> EnergyProbe:
    """One EnergyProbe per per-core figure, discovered once per process."""
    return EnergyProbe(watts_per_core)


class ResourceMeter:
    """Context manager measuring time, CPU, peak memory and energy of the block it wraps."""

    def __init__(
        self,
        *,
        sample_interval: float = DEFAULT_SAMPLE_INTERVAL,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        energy: EnergyProbe | None = None,
        device: torch.device | str | None = None,
        reset_high_water: bool = True,
        sample: bool | None = None,
    ) -> None:
        if not (math.isfinite(sample_interval) and 0 < sample_interval <= 10):
            raise ConfigError("sample-interval", sample_interval, "a number of seconds in (0, 10]")
        self.sample_interval = float(sample_interval)
        self.energy = energy if energy is not None else default_probe(check_watts(watts_per_core))
        self.device = torch.device(device) if device is not None else None
        self.reset_high_water = reset_high_water
        self.sample = sample
        self.reading: MeterReading | None = None
        self._proc = _process(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_rss = 0
        self._nsamples = 0
        self._entered = False

    # -- sampling ------------------------------------------------------------------
    def _sample(self) -> None:
        rss = int(self._proc.memory_info().rss)
        self._nsamples += 1
        if rss > self._max_rss:
            self._max_rss = rss

    def _run(self) -> None:
        while not self._stop.wait(self.sample_interval):
            self._sample()

    @property
    def _cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> ResourceMeter:
        global _active
        if self._entered:
            raise RuntimeError("ResourceMeter is not reentrant")
        with _active_lock:
            outermost = _active == 0
            _active += 1
        self._did_reset = self.reset_high_water and outermost and reset_hwm()
        self._hwm_start = None if self._did_reset else read_hwm_bytes()  # compared only when not reset
        self.reading = None
        self._max_rss, self._nsamples = 0, 0
        self._rss_start = int(self._proc.memory_info().rss)
        self._max_rss = self._rss_start
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._stop.clear()
        self._entered = True
        self._sampling = self.sample if self.sample is not None else not self._did_reset
        if self._sampling:
            self._thread = threading.Thread(target=self._run, name="fedshrink-rss-sampler", daemon=True)
            self._thread.start()
        self._energy_start = self.energy.start()
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _active
        if self._cuda:
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self._t0
        cpu = time.process_time() - self._cpu0
        energy = self.energy.stop(self._energy_start, cpu)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._entered = False
        self._sample()
        with _active_lock:
            _active -= 1
        hwm = read_hwm_bytes()
        peak = self._max_rss
        if self._did_reset and hwm is not None:
            peak, method = max(peak, hwm), "hwm-reset" + ("+sampled" if self._sampling else "")
        elif hwm is not None and self._hwm_start is not None and hwm > self._hwm_start:
            peak, method = max(peak, hwm), "hwm-delta"  # the high-water rose inside the block
        else:
            method = "start-end"
        if self._sampling and not method.startswith("hwm-reset"):
            method = "sampled" if method == "start-end" else method + "+sampled"
        gpu_peak = int(torch.cuda.max_memory_allocated(self.device)) if self._cuda else 0
        self.reading = MeterReading(
            wall_seconds=wall,
            cpu_seconds=cpu,
            peak_rss_bytes=int(peak),
            rss_start_bytes=self._rss_start,
            gpu_peak_bytes=gpu_peak,
            energy_joules=energy.joules,
            energy_method=energy.method,
            peak_method=method,
            samples_taken=self._nsamples,
        )

    def record(
        self,
        *,
        bytes_received: int,
        parameters: int,
        macs_per_sample: int,
        samples: int,
        bytes_sent: int = 0,
        bytes_sent_fp32: int = 0,
    ) -> ResourceRecord:
        """The round's :class:`ResourceRecord` (call after the block; settle ``bytes_sent`` with
        :func:`reply_with_record`)."""
        r = self.reading
        if r is None:
            raise RuntimeError("ResourceMeter.record() before the metered block finished")
        return ResourceRecord(
            wall_seconds=r.wall_seconds,
            cpu_seconds=r.cpu_seconds,
            peak_rss_bytes=r.peak_rss_bytes,
            rss_start_bytes=r.rss_start_bytes,
            gpu_peak_bytes=r.gpu_peak_bytes,
            bytes_received=int(bytes_received),
            bytes_sent=int(bytes_sent),
            bytes_sent_fp32=int(bytes_sent_fp32),
            parameters=int(parameters),
            macs_per_sample=int(macs_per_sample),
            samples=int(samples),
            train_flops=float(training_flops(macs_per_sample, samples)),
            energy_joules=r.energy_joules,
            energy_method=r.energy_method,
        )


# ---------------------------------------------------------------------------------
# exact uplink bytes
# ---------------------------------------------------------------------------------
def message_size(message: Message) -> int:
    """Encoded bytes of a Flower Message (``message_to_proto`` size); one definition, in the codecs layer."""
    from fedshrink.compression.flower import message_nbytes

    return message_nbytes(message)


def reply_with_record(reply: Message, record: ResourceRecord, *, metrics_key: str = "metrics") -> ResourceRecord:
    """Put ``record`` into ``reply.content[metrics_key]`` with ``bytes_sent`` = the reply's own size.

    The record's keys are added to the MetricRecord already under
    ``metrics_key`` (created when absent); the reply is changed in place and
    the settled record returned. One serialization: ``bytes_sent`` travels as
    a double (:data:`FIXED_WIDTH_KEYS`), always 8 bytes on the wire, so the
    reply's size does not depend on the number written into it; it is sized
    with 0 there, then the size is written in its place.
    """
    if metrics_key not in reply.content:
        reply.content[metrics_key] = MetricRecord()
    metrics = reply.content[metrics_key]
    if not isinstance(metrics, MetricRecord):
        raise TypeError(f"reply record {metrics_key!r} is a {type(metrics).__name__}, not a MetricRecord")
    metrics.update(record.replace(bytes_sent=0).to_wire())
    settled = record.replace(bytes_sent=message_size(reply))
    metrics.update(settled.to_wire())  # the same size: bytes_sent is a double
    return settled


def fp32_equivalent_nbytes(message: Message, arrays_key: str, state: Mapping[str, torch.Tensor]) -> int:
    """Encoded size of ``message`` if ``content[arrays_key]`` held ``state`` as plain fp32 arrays.

    The counterfactual "uncompressed" uplink: same metadata and other records,
    Flower's own serialization (``message_to_proto`` sizes), floating tensors as
    fp32 ``numpy.ndarray`` Arrays (``ArrayRecord(state)``). Sized by protobuf's
    field arithmetic (:func:`fedshrink.compression.flower.recorddict_nbytes`);
    each distinct (dtype, shape) is serialized once per process.
    """
    from fedshrink.compression.flower import message_nbytes, record_nbytes, recorddict_item_nbytes

    fp32 = _fp32_record_nbytes(tuple((k, torch.float32 if v.is_floating_point() else v.dtype, tuple(v.shape))
                                     for k, v in state.items()))
    size = recorddict_item_nbytes(arrays_key, fp32)
    for key, other in message.content.items():  # the other records as they are (the arrays are not sized)
        if key != arrays_key:
            size += recorddict_item_nbytes(key, record_nbytes(other))
    return message_nbytes(message, content_nbytes=size)


@lru_cache(maxsize=64)
def _fp32_record_nbytes(items: tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]) -> int:
    """Serialized size of the ``ArrayRecord`` of tensors of these (name, dtype, shape), made once."""
    from fedshrink.compression.flower import arrayrecord_nbytes

    return arrayrecord_nbytes(ArrayRecord({k: torch.zeros(shape, dtype=dtype) for k, dtype, shape in items}))


__all__ = [
    "DEFAULT_SAMPLE_INTERVAL",
    "ENERGY_METHODS",
    "METRIC_KEYS",
    "MeterReading",
    "ResourceMeter",
    "ResourceRecord",
    "default_probe",
    "fp32_equivalent_nbytes",
    "message_size",
    "read_hwm_bytes",
    "reply_with_record",
    "reset_hwm",
]
