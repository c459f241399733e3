"""Model registry and the spec every model is built from.

A :class:`ModelSpec` names a registered architecture and its width multiplier;
``build_model(spec)`` is the only constructor the rest of fedshrink calls.
Widths scale every hidden layer: ``channels(base, width)`` is the one rounding
rule, so a sub-model at width ``r`` has exactly the layer sizes the fragments
layer expects.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedshrink.errors import ConfigError
from fedshrink.registry import Registry

NORMS = ("layer", "batch", "none")

ModelFactory = Callable[["ModelSpec"], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model", setting="model")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    return MODELS.register(name)


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
            raise ConfigError("model", self.name, MODELS.allowed())
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
        return self._json

    @functools.cached_property
    def _json(self) -> str:
        """The JSON text, made once per object (a spec goes into every train instruction of a run)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        d = json.loads(text)
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a freshly initialised model (seed torch before calling for reproducibility)."""
    model = MODELS[spec.name](spec)
    model.spec = spec  # type: ignore[assignment]  # nn.Module attributes are typed as tensors or modules
    return model


def norm_layer(kind: str, num_channels: int) -> nn.Module:
    """Normalisation that works at every width.

    * ``batch`` (the run default, ``model-norm``): static BatchNorm (``track_running_stats=False``,
      HeteroFL's sBN): batch statistics in training, nothing to average. Each
      channel is normalised on its own, so a sub-model's channels see exactly
      the statistics they see inside the full model. Evaluation freezes the
      statistics of the server's proxy inputs first (:func:`freeze_batch_stats`).
    * ``layer`` (the spec default): GroupNorm with one group: normalises each sample over all its
      channels; no running statistics, but a sub-model's channels are
      normalised over fewer channels than inside the full model, so slices do
      not compute what they compute in place (measured slower to converge with
      fragments: simulations/results/fragments.md).
    * ``none``: identity.
    """
    if kind == "layer":
        return nn.GroupNorm(1, num_channels)
    if kind == "batch":
        return nn.BatchNorm2d(num_channels, track_running_stats=False)
    assert kind == "none", kind
    return nn.Identity()


def freeze_batch_stats(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in eval mode whose static BatchNorm layers use the statistics of the batch ``x``.

    Static BatchNorm (``track_running_stats=False``) normalises with the
    statistics of whatever batch it is given, so a test batch would be
    normalised with its own statistics and a single sample could not be
    classified at all. The copy's BatchNorm layers get running statistics from
    one pass over ``x`` (``(N, C, H, W)``, e.g. the server's unlabelled proxy
    inputs) and use them from then on. Models without static BatchNorm are
    returned as an eval-mode copy.
    """
    frozen = copy.deepcopy(model)
    static = [m for m in frozen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and not m.track_running_stats]
    if static:
        if len(x) < 2:
            raise ValueError(f"freezing batch statistics needs at least 2 inputs, got {len(x)}")
        for m in static:
            m.track_running_stats = True
            m.momentum = None  # cumulative average: after one pass, exactly the statistics of x
            m.register_buffer("running_mean", torch.zeros(m.num_features))
            m.register_buffer("running_var", torch.ones(m.num_features))
            m.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        counts: dict[int, int] = {}  # values per channel each layer saw

        def count(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            counts[id(module)] = args[0].numel() // args[0].shape[1]

        hooks = [m.register_forward_pre_hook(count) for m in static]
        frozen.train()
        with torch.no_grad():
            frozen(x)
        for h in hooks:
            h.remove()
        for m in static:  # BatchNorm keeps the unbiased variance; normalising used the biased one
            n = counts[id(m)]
            assert m.running_var is not None
            m.running_var.mul_((n - 1) / n)
    return frozen.eval()
