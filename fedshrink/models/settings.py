"""Settings of the global model: architecture, width and normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.models.registry import MODELS, NORMS
from fedshrink.settings import Section, between, one_of, option


@dataclass(frozen=True)
class ModelSettings(Section):
    title: ClassVar[str] = "model"

    model: str = option("cnn", "architecture of the global model (see fedshrink.models)",
                        rule=one_of(lambda: MODELS))
    model_width: float = option(1.0, "width multiplier of the global model", rule=between(0, 4, lo_open=True))
    model_norm: str = option(
        "batch", "`batch`: static BatchNorm (evaluation freezes its statistics on the proxy inputs); "
        "`layer`: GroupNorm with one group; `none`", rule=one_of(NORMS))
