"""What a run's records may differ in when it is repeated, and why a run may not repeat exactly.

The same settings and seed give the same ``metrics.jsonl``, line for line,
on the in-process engine and on Flower's simulation engine, apart from the
fields that measure the host: wall and CPU time, the energy estimated from
them, and memory. Those fields are named here, in one place
(:data:`TIME_KEYS`, :data:`HOST_KEYS`, :func:`measured_on_host`), and
:func:`reproducible_view` drops them from a record so two runs can be compared
with ``==``. Modelled device figures (``device-time-s``, ``device-energy-j``
...) are pure functions of the settings and seed and are kept.

Exact repetition needs one torch thread per client: with ``client-threads``
or ``distill-threads`` above 1, CPU kernels may split sums differently from
one call to the next and the last bits of a loss can change.
:func:`determinism_note` words what a run's settings leave open, and the
recorder writes it into ``summary.json`` under ``determinism``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedshrink.config import RunConfig

# Fields of a round record that measure time on the host (or are computed from it).
TIME_KEYS: tuple[str, ...] = (
    "seconds",  # the round's wall time on the server
    "aggregation-s",  # server time spent aggregating
    "distillation-s",  # server time spent distilling a student
    "client-wall-s-max",  # the slowest client's measured wall time
    "energy-j",  # host energy: a RAPL/NVML counter, or CPU time x W per core
)
TIME_SUFFIXES: tuple[str, ...] = ("-seconds",)  # a refinement stage's host time: fusion-seconds, ...
TIME_PREFIXES: tuple[str, ...] = ("host-",)  # host-wall-s, host-cpu-s, host-energy-j, ...
# Measured host memory: the allocator's high-water mark is not a function of the settings either.
HOST_KEYS: tuple[str, ...] = (*TIME_KEYS, "client-peak-rss-bytes-max")


def measured_on_host(key: str) -> bool:
    """Whether a record field measures the host (time, energy from time, memory) and may change between repeats."""
    return key in HOST_KEYS or key.endswith(TIME_SUFFIXES) or key.startswith(TIME_PREFIXES)


def reproducible_view(record: Any) -> Any:
    """``record`` without its host-measured fields, at any depth (dicts inside dicts and lists)."""
    if isinstance(record, Mapping):
        return {k: reproducible_view(v) for k, v in record.items() if not measured_on_host(str(k))}
    if isinstance(record, list | tuple):
        return [reproducible_view(v) for v in record]
    return record


def determinism_note(cfg: RunConfig) -> dict[str, str]:
    """``{"determinism": reason}`` when the settings rule out exact repetition, else ``{}``.

    fedshrink trains, aggregates and distils on the CPU; several torch threads
    are what can make the same settings and seed give different last bits.
    """
    reasons = []
    if cfg.resources.client_threads > 1:
        reasons.append(f"client-threads = {cfg.resources.client_threads}")
    if cfg.distill.distill and cfg.distill.distill_threads > 1:
        reasons.append(f"distill-threads = {cfg.distill.distill_threads}")
    if not reasons:
        return {}
    return {"determinism": "not exactly repeatable: " + ", ".join(reasons)
            + " (several torch threads may sum in a different order from run to run; set them to 1 to repeat "
              "metrics.jsonl exactly apart from its host-measured fields)"}
