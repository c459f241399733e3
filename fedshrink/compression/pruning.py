"""Pruning masks as reversible reparametrisations (``torch.nn.utils.prune``).

Public API::

    PRUNING_METHODS = ("magnitude", "l1_channel")
    prune_module(module, method, amount, *, name="weight") -> None
    prune_model(model, method, amount, *, types=(nn.Linear, nn.Conv2d, nn.Conv1d)) -> list[str]
    apply_masks(model, masks: Mapping[str, Tensor]) -> None          # prune.custom_from_mask
    get_masks(model) -> dict[str, Tensor]                              # "<module>.weight" -> bool mask
    remove_pruning(model) -> None                                      # prune.remove: make it permanent
    mask_to_bitmap(mask) -> bytes ; bitmap_to_mask(data, shape, *, name, limits) -> Tensor (bool)
    encode_masks(masks) -> tuple[ArrayRecord, int] ; decode_masks(record, *, limits) -> dict[str, Tensor]
    mask_digest(masks) -> int                                          # 48-bit digest, exact in a float metric

``magnitude`` is unstructured L1 (:class:`StableL1Unstructured`, a
``prune.BasePruningMethod``): the ``amount`` fraction of weights with the
smallest ``|w|`` is masked, ties broken by flat index, so the mask is a pure
function of the weights and the server can rebuild a client's mask from the
fragment it sent (:func:`mask_digest` checks that both agree). ``l1_channel`` is
structured (``prune.ln_structured(n=1, dim=0)``): whole output channels with the
smallest L1 norm. The module keeps ``weight_orig`` (a Parameter) and
``weight_mask`` (a buffer) and computes ``weight = weight_orig * weight_mask``
before every forward, so masked weights stay zero through optimizer steps and
:func:`remove_pruning` bakes the mask in without changing outputs.

Masks travel through the ``bitmap`` codec: ``ceil(n / 8)`` bytes, or
``ceil(C / 8)`` for a channel mask (constant along all but dim 0).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord
from torch import nn
from torch.nn.utils import prune

from fedshrink.compression import bitops
from fedshrink.compression.chain import Chain
from fedshrink.compression.wire import DEFAULT_LIMITS, DecodeLimits
from fedshrink.errors import ConfigError, DecodeError

PRUNING_METHODS = ("magnitude", "l1_channel")
PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MASK_CHAIN = Chain("bitmap")


def _check_amount(amount: float) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0.0 <= amount <= 1.0:
        raise ConfigError("pruning.amount", amount, "a number in [0, 1]")


class StableL1Unstructured(prune.BasePruningMethod):
    """``prune.L1Unstructured`` with ties in ``|w|`` broken by flat index (a stable sort).

    ``torch.topk`` leaves the order of equal values to the implementation, and
    quantized weights tie often; a stable argsort makes the mask the same on
    every platform for the same weights. Prunes ``round(amount * n)`` entries
    (a float amount, as ``prune.l1_unstructured`` does).
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount: float) -> None:
        _check_amount(amount)
        self.amount = float(amount)

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        mask = default_mask.clone(memory_format=torch.contiguous_format)
        k = round(self.amount * t.nelement())
        if k:
            order = torch.argsort(t.detach().abs().reshape(-1), stable=True)  # smallest |w| first, then index
            mask.view(-1)[order[:k]] = 0
        return mask

    @classmethod
    def apply(cls, module: nn.Module, name: str, amount: float) -> StableL1Unstructured:  # type: ignore[override]  # torch's apply takes **kwargs, untyped
        return super().apply(module, name, amount=amount)  # type: ignore[no-untyped-call, no-any-return]  # torch.nn.utils.prune is unannotated


def prune_module(module: nn.Module, method: str, amount: float, *, name: str = "weight") -> None:
    """Mask ``module.<name>`` in place (re-pruning combines with an existing mask)."""
    _check_amount(amount)
    if method == "magnitude":
        StableL1Unstructured.apply(module, name, amount=float(amount))
    elif method == "l1_channel":
        prune.ln_structured(module, name, amount=float(amount), n=1, dim=0)  # type: ignore[no-untyped-call]  # unannotated
    else:
        raise ConfigError("pruning.method", method, "one of " + ", ".join(repr(m) for m in PRUNING_METHODS))


def prune_model(
    model: nn.Module, method: str, amount: float, *, types: tuple[type[nn.Module], ...] = PRUNABLE
) -> list[str]:
    """Prune the weight of every module of ``types``; return their ``<module>.weight`` keys."""
    done: list[str] = []
    for mod_name, module in model.named_modules():
        if isinstance(module, types):
            prune_module(module, method, amount)
            done.append(f"{mod_name}.weight" if mod_name else "weight")
    return done


def _split(key: str) -> tuple[str, str]:
    mod, _, param = key.rpartition(".")
    return mod, param


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Current masks as bool tensors keyed ``<module>.<param>``."""
    masks: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        for buf_name, buf in module.named_buffers(recurse=False):
            if buf_name.endswith("_mask"):
                param = buf_name[: -len("_mask")]
                masks[f"{mod_name}.{param}" if mod_name else param] = buf.detach().to(torch.bool).clone()
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Install the given masks (e.g. received from the server) as reparametrisations."""
    modules = dict(model.named_modules())
    for key, mask in masks.items():
        mod_name, param = _split(key)
        module = modules.get(mod_name)
        if module is None or not hasattr(module, param):
            raise ConfigError("mask", key, "a '<module>.<parameter>' of the model")
        if prune.is_pruned(module) and hasattr(module, param + "_mask"):
            prune.remove(module, param)  # type: ignore[no-untyped-call]  # torch.nn.utils.prune is unannotated
        target = getattr(module, param)
        if tuple(mask.shape) != tuple(target.shape):
            raise ConfigError("mask", key, f"a mask of shape {tuple(target.shape)}")
        prune.custom_from_mask(  # type: ignore[no-untyped-call]  # torch.nn.utils.prune is unannotated
            module, param, mask=mask.to(dtype=target.dtype, device=target.device))


def remove_pruning(model: nn.Module) -> None:
    """Make every mask permanent (``prune.remove``): plain parameters with zeros."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod) or isinstance(hook, prune.PruningContainer):
                prune.remove(module, hook._tensor_name)  # type: ignore[no-untyped-call]  # unannotated


def mask_to_bitmap(mask: torch.Tensor) -> bytes:
    """A mask (bool or 0/1) as ``ceil(n / 8)`` bytes, MSB first."""
    return bitops.bitmap_encode(mask.detach().cpu().reshape(-1).to(torch.bool).numpy())


def bitmap_to_mask(
    data: bytes, shape: tuple[int, ...], *, name: str = "mask", limits: DecodeLimits = DEFAULT_LIMITS
) -> torch.Tensor:
    """Inverse of :func:`mask_to_bitmap`; checks the cap, the exact length and padding."""
    n = 1
    for d in shape:
        if d < 0:
            raise DecodeError(name, f"negative dim in shape {shape}")
        n *= d
    if n > limits.max_numel:
        raise DecodeError(name, f"{n} elements over the cap of {limits.max_numel}")
    try:
        flags = bitops.bitmap_decode(data, n)
    except ValueError as exc:
        raise DecodeError(name, str(exc)) from None
    return torch.from_numpy(flags.copy()).reshape(shape)


def encode_masks(masks: Mapping[str, torch.Tensor]) -> tuple[ArrayRecord, int]:
    """Masks as bool tensors through the ``bitmap`` chain, in a fedshrink ArrayRecord."""
    from fedshrink.compression.flower import encode_state

    return encode_state({k: m.to(torch.bool) for k, m in masks.items()}, _MASK_CHAIN, direction="downlink")


def mask_digest(masks: Mapping[str, torch.Tensor]) -> int:
    """A 48-bit digest of masks (keys and bitmaps, in key order); exact when carried as a float metric."""
    h = hashlib.sha256()
    for key in sorted(masks):
        mask = masks[key]
        h.update(f"{key}:{tuple(mask.shape)}:".encode())
        h.update(mask_to_bitmap(mask))
    return int.from_bytes(h.digest()[:6], "big")


def decode_masks(record: ArrayRecord, *, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    from fedshrink.compression.flower import decode_record

    out = decode_record(record, limits=limits)
    for key, m in out.items():
        if m.dtype != torch.bool:
            raise DecodeError(key, f"mask has dtype {m.dtype}, expected bool")
    return out
