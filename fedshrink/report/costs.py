"""A run's uplink against fp32 references and the server's time, from its round records and summary (pure).

Uplink references (all in bytes, over the whole run):

* **bytes up**: the sum of the rounds' ``bytes-up``: the exact serialized Flower replies the server accepted.
* **uplink against the same fragments in fp32**: the sum of ``bytes-up-uncompressed`` (per reply, clients.csv's
  ``bytes-up-fp32``): each accepted reply re-encoded with the arrays it carried (the client's fragment of the
  model) as plain fp32, message envelope included (:func:`fedshrink.resources.meter.fp32_equivalent_nbytes`).
* **uplink against the full model in fp32**: ``replies x 4 B x P``, where ``replies`` is the number of accepted
  replies (the sum of the rounds' ``clients-good``) and ``P`` the global model's parameter count
  (``summary.json``'s ``model-parameters``): what the same replies would have carried had every client sent the
  full-width model as fp32. Payload only (no envelope, array names or buffers), so it slightly understates a real
  full-model fp32 reply.

Server time: ``aggregation-s`` (checks, decoding, aggregation stages and the weighted mean; refiners such as
fusion excluded), each refiner's ``<name>-seconds`` (e.g. ``fusion-seconds``), the rounds' ``distillation-s``
(periodic distillations, ``distill-every``) and ``summary.json``'s ``distillation-seconds`` (the distillation at
the end of the run, which comes after the last round's record).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

FP32_BYTES = 4
NOT_REFINERS = {"seconds"}


@dataclass(frozen=True)
class UplinkReferences:
    """Bytes up and its two fp32 references (see the module doc); None = not recorded."""

    bytes_up: int | None
    same_fragments_fp32: int | None
    full_model_fp32: int | None
    replies: int | None
    model_parameters: int | None

    def ratio(self, reference: int | None) -> float | None:
        return reference / self.bytes_up if reference is not None and self.bytes_up else None


def _total(rounds: Sequence[Mapping[str, Any]], key: str) -> float | None:
    if not rounds or any(not isinstance(r.get(key), int | float) for r in rounds):
        return None
    return float(sum(float(r[key]) for r in rounds))


def model_parameters(summary: Mapping[str, Any]) -> int | None:
    p = summary.get("model-parameters")
    return int(p) if isinstance(p, int | float) and not isinstance(p, bool) and p > 0 else None


def full_model_fp32_per_round(rounds: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[int] | None:
    """Per round: accepted replies (``clients-good``) x 4 B x the global model's parameters; None if unknown."""
    p = model_parameters(summary)
    if p is None or not rounds or any(not isinstance(r.get("clients-good"), int) for r in rounds):
        return None
    return [int(r["clients-good"]) * FP32_BYTES * p for r in rounds]


def uplink_references(rounds: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> UplinkReferences:
    up, same = _total(rounds, "bytes-up"), _total(rounds, "bytes-up-uncompressed")
    full = full_model_fp32_per_round(rounds, summary)
    replies = _total(rounds, "clients-good")
    return UplinkReferences(
        bytes_up=None if up is None else int(up), same_fragments_fp32=None if same is None else int(same),
        full_model_fp32=None if full is None else sum(full), replies=None if replies is None else int(replies),
        model_parameters=model_parameters(summary))


def cumulative_full_model_fp32(rounds: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[float] | None:
    per_round = full_model_fp32_per_round(rounds, summary)
    return None if per_round is None else [float(v) for v in accumulate(per_round)]


@dataclass(frozen=True)
class ServerTime:
    """The server's seconds over the run, by kind (see the module doc); None = not recorded."""

    aggregation_s: float | None
    refiners_s: dict[str, float] = field(default_factory=dict)  # name -> seconds, e.g. {"fusion": 41.2}
    periodic_distillation_s: float = 0.0
    periodic_distillations: int = 0  # rounds with a distillation
    final_distillation_s: float | None = None

    @property
    def distillation_s(self) -> float:
        return self.periodic_distillation_s + (self.final_distillation_s or 0.0)


def refiner_names(rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names ``x`` of the ``x-seconds`` keys of the round records (the refiners that ran), sorted."""
    names = {k[: -len("-seconds")] for r in rounds for k in r if k.endswith("-seconds") and k not in NOT_REFINERS}
    return sorted(n for n in names if n)


def server_time(rounds: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> ServerTime:
    agg = [float(r["aggregation-s"]) for r in rounds if isinstance(r.get("aggregation-s"), int | float)]
    refiners = {name: sum(float(r.get(f"{name}-seconds", 0.0)) for r in rounds) for name in refiner_names(rounds)}
    periodic = [float(r["distillation-s"]) for r in rounds if isinstance(r.get("distillation-s"), int | float)]
    final = summary.get("distillation-seconds")
    return ServerTime(
        aggregation_s=sum(agg) if agg else None, refiners_s=refiners, periodic_distillation_s=sum(periodic),
        periodic_distillations=sum(1 for s in periodic if s > 0),
        final_distillation_s=float(final) if isinstance(final, int | float) else None)
