"""Width-parameterised model family and its registry."""

from fedshrink.models import nets as _nets  # noqa: F401  (registers the models)
from fedshrink.models.registry import (
    MODELS,
    NORMS,
    ModelSpec,
    build_model,
    channels,
    freeze_batch_stats,
    register_model,
)
from fedshrink.models.stats import count_parameters, layer_widths

__all__ = [
    "MODELS",
    "NORMS",
    "ModelSpec",
    "build_model",
    "channels",
    "count_parameters",
    "freeze_batch_stats",
    "layer_widths",
    "register_model",
]
