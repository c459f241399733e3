"""What a client process keeps from one ClientApp call to the next: things that do not change between rounds.

A simulation runs thousands of ClientApp calls in one process (in-process,
or each Ray actor); a SuperNode runs one. Each cache here is keyed by the
exact content it stands for, so a hit returns what a fresh computation would:

* :func:`run_config` -- the parsed, validated :class:`~fedshrink.config.RunConfig` of a run-config mapping;
* :func:`whole_model` -- the model object of a :class:`~fedshrink.models.ModelSpec`, built once per
  thread; the caller loads every parameter and buffer into it (``load_state_dict``), so nothing of a
  previous client survives but the object;
* :func:`decoded_downlink` -- the decoded global model of a round: every client of a round receives the
  same bytes, which are decoded (and checked) once per process; a later record is compared byte for
  byte with the one decoded (``bytes ==``: exact, no hash).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord
from torch import nn

from fedshrink.compression import decode_record
from fedshrink.config import RunConfig
from fedshrink.models import ModelSpec, build_model

_local = threading.local()


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def run_config(mapping: Mapping[str, Any]) -> RunConfig:
    """``RunConfig.from_mapping(mapping)``, parsed once per distinct mapping in this process."""
    return _parsed(tuple((k, _frozen(v)) for k, v in mapping.items()))


@lru_cache(maxsize=8)
def _parsed(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return RunConfig.from_mapping({k: list(v) if isinstance(v, tuple) else v for k, v in items})


def whole_model(spec: ModelSpec) -> nn.Module:
    """This thread's model of ``spec`` (built on first use), gradients cleared; load the weights into it."""
    models: dict[ModelSpec, nn.Module] = _local.__dict__.setdefault("models", {})
    model = models.get(spec)
    if model is None:
        model = models[spec] = build_model(spec)
    for p in model.parameters():
        p.grad = None
    return model


Signature = list[tuple[str, str, tuple[int, ...], str, bytes]]


def _signature(record: ArrayRecord) -> Signature:
    return [(k, a.dtype, tuple(a.shape), a.stype, a.data) for k, a in record.items()]


def _same(a: Signature, b: Signature) -> bool:
    return len(a) == len(b) and all(x[:4] == y[:4] and (x[4] is y[4] or x[4] == y[4])
                                    for x, y in zip(a, b, strict=True))


def decoded_downlink(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``decode_record(record)``; the last record decoded in this thread is reused when its bytes are equal.

    The tensors are shared between the calls that hit: callers must not change them in place.
    """
    signature = _signature(record)
    last: tuple[Signature, dict[str, torch.Tensor]] | None = getattr(_local, "downlink", None)
    if last is not None and _same(last[0], signature):
        return dict(last[1])
    decoded = decode_record(record)
    _local.downlink = (signature, decoded)
    return dict(decoded)
