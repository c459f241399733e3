"""Self-distillation across widths inside one client's model (ordered dropout with KD, as in FjORD).

A client that trains a fragment of width ``w`` also trains, on every batch,
the nested prefixes of its own model at the narrower widths other clients use
(``w' < w``), each against the labels and against its own width-``w`` output
softened by a temperature::

    loss = CE(f_w(x), y) + lambda * mean_{w'} [ CE(f_w'(x), y) + T^2 KL(softmax(f_w(x) / T) || softmax(f_w'(x) / T)) ]

``f_w'`` is the prefix of the client's model (the first channels of every
group, as the static fragment policy cuts them), computed with the *same*
parameters (slices taken by index over the layer graph, so gradients reach the
client's weights) through :func:`torch.func.functional_call` on a skeleton
model of width ``w'``. Prune masks and fake-quant apply: the slices are taken
from each layer's effective weight. The teacher's output is detached.

Why: narrow clients train the prefixes on their own; a wide client that trains
only its full width makes the prefix weights good *inside* the wide model and
its updates pull the shared prefix away from what narrow clients need. Training
the prefixes too makes every width's update agree on the shared coordinates
(Horvath et al., FjORD, 2021, ordered dropout; the KD term from the same
paper's self-distillation variant).

Public API::

    NestedConfig(widths, temperature=1.0, weight=1.0)     # widths relative to the global model
    NestedDistiller(model_spec, local_width, config)      # .loss(model, x, y, logits) -> Tensor
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedshrink.errors import ConfigError
from fedshrink.fragments.graph import LayerGraph, build_graph
from fedshrink.fragments.scaler import build_sub_model
from fedshrink.fragments.slicing import extract
from fedshrink.fragments.spec import FragmentSpec, spec_from_counts
from fedshrink.models import ModelSpec, build_model


@dataclass(frozen=True)
class NestedConfig:
    """Which nested widths a client distils into, and how hard."""

    widths: tuple[float, ...]  # absolute widths (fractions of the global model), each in (0, 1)
    temperature: float = 1.0
    weight: float = 1.0  # lambda above

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(sorted({float(w) for w in self.widths})))
        for w in self.widths:
            if not (math.isfinite(w) and 0 < w < 1):
                raise ConfigError("nested-widths", list(self.widths), "numbers in (0, 1)")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError("nested-temperature", self.temperature, "a number > 0")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError("nested-weight", self.weight, "a number >= 0")


def _effective(model: nn.Module, key: str) -> torch.Tensor:
    """The tensor a layer uses in its forward for state key ``key`` (pruned, fake-quantized, or plain)."""
    module_name, _, attr = key.rpartition(".")
    value = getattr(model.get_submodule(module_name) if module_name else model, attr)
    assert isinstance(value, torch.Tensor), key
    return value


@functools.lru_cache(maxsize=32)
def _prefix_plan(model_spec: ModelSpec, local_width: float, widths: tuple[float, ...], scaled: bool
                 ) -> tuple[LayerGraph, tuple[str, ...], tuple[tuple[float, nn.Module, FragmentSpec], ...]]:
    """The local model's layer graph and state keys, and per narrower width its skeleton and prefix spec.

    Cached: tracing the graphs costs about 30 ms, once per client round otherwise. The
    skeletons are only ever called through ``functional_call``, which leaves their own
    parameters untouched, so distillers of the same shapes share them.
    """
    local = build_model(model_spec.at_width(local_width))
    graph = build_graph(local)
    subs = []
    for w in widths:
        if w >= local_width:
            continue
        skeleton = build_sub_model(model_spec, w, scaled=scaled)
        counts = build_graph(build_model(model_spec.at_width(w))).group_sizes()
        subs.append((w, skeleton, spec_from_counts(graph, counts, w)))
    return graph, tuple(local.state_dict().keys()), tuple(subs)


class NestedDistiller:
    """Extra loss of one client's model: its nested prefixes at narrower widths (see the module doc)."""

    def __init__(self, model_spec: ModelSpec, local_width: float, config: NestedConfig, *,
                 scaled: bool = True) -> None:
        self.config = config
        self.graph, self.keys, self.subs = _prefix_plan(model_spec, float(local_width), config.widths, scaled)

    @property
    def widths(self) -> list[float]:
        return [w for w, _, _ in self.subs]

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``lambda * mean`` over nested widths of CE + T^2 KL against ``logits`` (the model's, detached)."""
        if not self.subs or self.config.weight == 0:
            return logits.new_zeros(())
        t = self.config.temperature
        teacher = F.softmax(logits.detach() / t, dim=1)  # (B, K)
        effective = {k: _effective(model, k) for k in self.keys}
        total = logits.new_zeros(())
        for _, skeleton, spec in self.subs:
            params = extract(effective, self.graph, spec)  # index_select: differentiable slices
            out = functional_call(skeleton, params, (x,))  # (B, K)
            kd = F.kl_div(F.log_softmax(out / t, dim=1), teacher, reduction="batchmean") * t * t
            total = total + F.cross_entropy(out, y) + kd
        return self.config.weight * total / len(self.subs)


def nested_widths(widths_in_use: Sequence[float], local_width: float) -> tuple[float, ...]:
    """The widths in use narrower than ``local_width`` (what a client distils into)."""
    return tuple(sorted(w for w in set(widths_in_use) if w < local_width))
