"""What a client process keeps from one ClientApp call to the next: things that do not change between rounds.

A simulation runs thousands of ClientApp calls in one process (in-process,
or each Ray actor); a SuperNode runs one. Each cache here is keyed by the
exact content it stands for, so a hit returns what a fresh computation would:

* :func:`run_config` -- the parsed, validated :class:`~fedshrink.config.RunConfig` of a run-config mapping;
* :func:`whole_model` -- the model object of a :class:`~fedshrink.models.ModelSpec`, built once per
  thread, with every parameter and buffer of the state given loaded into it, so nothing of a previous
  client survives but the object; :func:`model_costs` -- its parameter and MAC counts, counted once;
* :func:`decoded_downlink` -- the decoded global model of a round: every client of a round receives the
  same bytes, which are decoded (and checked) once per process; a later record is compared byte for
  byte with the one decoded (``bytes ==``: exact, no hash).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord
from torch import nn

from fedshrink.compression import decode_record
from fedshrink.config import RunConfig
from fedshrink.models import ModelSpec, build_model, count_parameters
from fedshrink.resources import macs_per_sample

_local = threading.local()


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def run_config(mapping: Mapping[str, Any]) -> RunConfig:
    """``RunConfig.from_mapping(mapping)``, parsed once per distinct mapping in this process."""
    return _parsed(tuple((k, _frozen(v)) for k, v in mapping.items()))


@lru_cache(maxsize=8)
def _parsed(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return RunConfig.from_mapping({k: list(v) if isinstance(v, tuple) else v for k, v in items})


@dataclass
class _Whole:
    """A thread's whole model of one spec, the tensors it loads into, and its costs once counted."""

    model: nn.Module
    targets: dict[str, torch.Tensor] | None  # None: loaded by load_state_dict
    costs: tuple[int, int] | None = None  # (parameters, MACs per sample)


def whole_model(spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """This thread's model of ``spec`` (built on first use) with ``state`` loaded, gradients cleared.

    ``state`` must hold every parameter and buffer (as strict ``load_state_dict``). Loading copies into the
    model's tensors, which is what ``load_state_dict`` does for modules without load hooks of their own, less
    its walk over the modules; a model with such hooks (e.g. batch norm), or a ``state`` whose keys or shapes
    differ, is loaded by ``load_state_dict`` itself (which names what differs).
    """
    models: dict[ModelSpec, _Whole] = _local.__dict__.setdefault("models", {})
    if spec not in models:
        model = build_model(spec)
        models[spec] = _Whole(model, _load_targets(model))
    model, targets = models[spec].model, models[spec].targets
    if targets is None or targets.keys() != state.keys() or \
            any(targets[k].shape != v.shape for k, v in state.items()):
        model.load_state_dict(state)
    else:
        with torch.no_grad():
            for key, value in state.items():
                targets[key].copy_(value)
    for p in model.parameters():
        p.grad = None
    return model


def model_costs(model: nn.Module, spec: ModelSpec) -> tuple[int, int]:
    """``(parameters, MACs per sample)`` of ``model`` (``spec``'s input shape); counted once for this thread's
    whole model of ``spec`` (its architecture never changes), every time for any other model."""
    models: dict[ModelSpec, _Whole] = _local.__dict__.get("models", {})
    whole = models.get(spec)
    if whole is not None and whole.model is model:
        if whole.costs is None:
            whole.costs = (count_parameters(model), macs_per_sample(model, spec.input_shape))
        return whole.costs
    return count_parameters(model), macs_per_sample(model, spec.input_shape)


def _load_targets(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The tensors ``load_state_dict`` fills, by key; None when a module loads with hooks or code of its own."""
    for module in model.modules():
        kind = type(module)
        if kind._load_from_state_dict is not nn.Module._load_from_state_dict or \
                kind.get_extra_state is not nn.Module.get_extra_state or \
                module._load_state_dict_pre_hooks or module._load_state_dict_post_hooks:
            return None
    return dict(model.state_dict(keep_vars=True))


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
