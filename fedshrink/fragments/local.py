"""The sub-model a client trains, as both sides build it.

The client trains it; the server builds the same model from the fragment it
sent (decoded exactly as the client decodes it) to derive the client's prune
masks instead of receiving them (``derive-masks``): unstructured magnitude
pruning is a pure function of the weights (ties broken by index, see
:class:`fedshrink.compression.pruning.StableL1Unstructured`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedshrink.compression.pruning import get_masks, prune_model
from fedshrink.devices.profiles import DeviceProfile
from fedshrink.fragments.scaler import build_sub_model
from fedshrink.models.registry import ModelSpec


def pruned_sub_model(model_spec: ModelSpec, width: float, received: Mapping[str, torch.Tensor],
                     profile: DeviceProfile, *, scaled: bool) -> nn.Module:
    """``model_spec``'s sub-model at ``width`` holding ``received``, pruned as ``profile`` says (not fake-quantized)."""
    model = build_sub_model(model_spec, width, scaled=scaled)
    model.load_state_dict(received)
    if profile.pruning_method is not None and profile.sparsity > 0:
        prune_model(model, profile.pruning_method, profile.sparsity)
    return model


def derivable(profile: DeviceProfile) -> bool:
    """Whether the server can rebuild this profile's masks: unstructured magnitude pruning only.

    Channel masks (structured pruning) cost ``ceil(C / 8)`` bytes and rest on a
    float sum of ``|w|`` per channel, so the client keeps sending them.
    """
    return profile.prune == "unstructured" and profile.sparsity > 0


def derive_masks(model_spec: ModelSpec, width: float, received: Mapping[str, torch.Tensor],
                 profile: DeviceProfile, *, scaled: bool) -> dict[str, torch.Tensor]:
    """The prune masks a client of ``profile`` computes from ``received`` (``<module>.weight`` -> bool)."""
    return get_masks(pruned_sub_model(model_spec, width, received, profile, scaled=scaled))
