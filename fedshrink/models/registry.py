"""Model registry and the spec every model is built from.

A :class:`ModelSpec` names a registered architecture and its width multiplier;
``build_model(spec)`` is the only constructor the rest of fedshrink calls.
Widths scale every hidden layer: ``channels(base, width)`` is the one rounding
rule, so a sub-model at width ``r`` has exactly the layer sizes the fragments
layer expects.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fedshrink.errors import ConfigError

NORMS = ("layer", "batch", "none")

ModelFactory = Callable[["ModelSpec"], nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def deco(fn: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = fn
        return fn

    return deco


def channels(base: int, width: float) -> int:
    """Layer size at width multiplier ``width``: ``ceil(base * width)``, at least 1."""
    return max(1, math.ceil(base * width - 1e-9))


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: architecture, data shape, width, norm."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    width: float = 1.0
    norm: str = "layer"

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ConfigError("model", self.name, "one of " + ", ".join(map(repr, sorted(MODELS))))
        if not 0 < self.width <= 4:
            raise ConfigError("model-width", self.width, "a number in (0, 4]")
        if self.norm not in NORMS:
            raise ConfigError("model-norm", self.norm, "one of " + ", ".join(map(repr, NORMS)))
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigError("input-shape", self.input_shape, "(C, H, W) with positive sizes")
        if self.num_classes < 2:
            raise ConfigError("num-classes", self.num_classes, "an integer >= 2")
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))

    def at_width(self, width: float) -> ModelSpec:
        return dataclasses.replace(self, width=width)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        d = json.loads(text)
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a freshly initialised model (seed torch before calling for reproducibility)."""
    model = MODELS[spec.name](spec)
    model.spec = spec  # type: ignore[assignment]
    return model


def norm_layer(kind: str, num_channels: int) -> nn.Module:
    """Normalisation that works at every width.

    * ``layer``: GroupNorm with one group — normalises each sample over all its
      channels; has no running statistics and means the same at any width, so
      slicing channels never invalidates it (the default).
    * ``batch``: static BatchNorm (``track_running_stats=False``, as HeteroFL
      does): batch statistics in training and at evaluation, nothing to average.
    * ``none``: identity.
    """
    if kind == "layer":
        return nn.GroupNorm(1, num_channels)
    if kind == "batch":
        return nn.BatchNorm2d(num_channels, track_running_stats=False)
    assert kind == "none", kind
    return nn.Identity()
