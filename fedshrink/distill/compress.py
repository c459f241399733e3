"""Final compression of the student: magnitude pruning, then int8 post-training quantization.

Quantization scheme (PTQ, no retraining), per Conv2d / Linear layer:

* weights: symmetric int8 **per output channel**: ``scale_c = max|W_c| / 127``,
  ``q = round(W / scale_c)`` in [-127, 127] (Jacob et al. 2018, "Quantization and
  Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  with the per-channel weight scales of Krishnamoorthi 2018, Sec. 2.2);
* the layer's input activation: asymmetric uint8 per tensor, ``scale = (hi - lo) / 255``,
  ``zero_point = round(-lo / scale)``, with ``[lo, hi]`` the min/max seen on the
  proxy images (calibration; ``lo <= 0 <= hi`` so that 0 is exact);
* bias, normalisation, activations and pooling stay fp32.

:class:`QuantConv2d` / :class:`QuantLinear` compute with the dequantized values
(``(q_x - zp) * s_x`` and ``q_w * s_w``), which equals an int32-accumulating
integer kernel followed by one rescale, up to fp32 rounding: accuracy figures of
the int8 model are those of integer inference; its CPU latency is *not* (this is a
simulation, so latency is reported for the fp32 student only).

Packed file (``.fsq``, what "bytes on disk" of the int8 student means)::

    b"FSQ1" | uint32 LE header length | header: ModelSpec JSON (utf-8)
    per quantized layer, in module order:
        float32 act scale | uint8 act zero point | nonzero bitmap, ceil(n / 8) bytes (MSB first)
        | int8 nonzero weights (nnz bytes) | float32 scales (C_out) | float32 bias (C_out, if any)
    then every other parameter (norm weights / biases), in ``state_dict`` order, float32

So ``bytes = 8 + len(header) + sum(5 + ceil(n/8) + nnz + 4 C_out [+ 4 C_out]) + 4 * other``;
:func:`packed_nbytes_bound` evaluates it before training (an upper bound: values that
round to 0 in int8 are dropped from the nonzeros too). All multi-byte fields are
little-endian.
"""

from __future__ import annotations

import copy
import math
import struct
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedshrink.compression.pruning import prune_model, remove_pruning
from fedshrink.errors import DistillError
from fedshrink.models import ModelSpec, build_model

MAGIC = b"FSQ1"
QMAX = 127  # symmetric int8 weights use [-127, 127]


# -- pure maths -------------------------------------------------------------------------------
def quantize_weight_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (dim 0): ``(q int8 same shape, scales float32 (C_out,))``.

    An all-zero channel gets scale 1 (its values are all 0 either way).
    """
    flat = w.detach().reshape(w.shape[0], -1)  # (C_out, fan_in)
    amax = flat.abs().amax(dim=1)  # (C_out,)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax)).to(torch.float32)
    q = torch.clamp(torch.round(flat / scale[:, None]), -QMAX, QMAX).to(torch.int8)
    return q.reshape(w.shape), scale


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric uint8 ``(scale, zero_point)`` covering ``[min(lo, 0), max(hi, 0)]``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zp = int(min(255, max(0, round(-lo / scale))))
    return scale, zp


def fake_quant_activation(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``(clamp(round(x / s) + zp, 0, 255) - zp) * s``: x as the uint8 kernel sees it."""
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
    return (q - zero_point) * scale


# -- quantized layers -------------------------------------------------------------------------
class _QuantBase(nn.Module):
    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def _init_q(self, weight: torch.Tensor, bias: torch.Tensor | None, act: tuple[float, int]) -> None:
        q, s = quantize_weight_per_channel(weight)
        self.register_buffer("weight_q", q)
        self.register_buffer("weight_scale", s)
        self.register_buffer("bias", None if bias is None else bias.detach().clone().float())
        self.act_scale, self.act_zero_point = float(act[0]), int(act[1])

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_q.dim() - 1)
        return self.weight_q.float() * self.weight_scale.view(shape)


class QuantLinear(_QuantBase):
    def __init__(self, layer: nn.Linear, act: tuple[float, int]) -> None:
        super().__init__()
        self._init_q(layer.weight, layer.bias, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ..., in) -> (B, ..., out)
        x = fake_quant_activation(x, self.act_scale, self.act_zero_point)
        return F.linear(x, self.dequantized_weight(), self.bias)


class QuantConv2d(_QuantBase):
    def __init__(self, layer: nn.Conv2d, act: tuple[float, int]) -> None:
        super().__init__()
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise DistillError(f"int8 conversion supports numeric zero padding only, not {layer.padding!r}")
        self._init_q(layer.weight, layer.bias, act)
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C', H', W')
        x = fake_quant_activation(x, self.act_scale, self.act_zero_point)
        return F.conv2d(x, self.dequantized_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


QUANTIZABLE = (nn.Conv2d, nn.Linear)


def _layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, mod in model.named_modules():
        if isinstance(mod, (*QUANTIZABLE, _QuantBase)):
            yield name, mod


def _float_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _quant_layers(model: nn.Module) -> list[tuple[str, _QuantBase]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _QuantBase)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def calibrate(model: nn.Module, calib_x: torch.Tensor, batch_size: int = 256) -> dict[str, tuple[float, float]]:
    """Min and max of the input of every Conv2d / Linear over images ``(N, C, H, W)``."""
    if len(calib_x) == 0:
        raise DistillError("the calibration (proxy) set is empty")
    ranges: dict[str, tuple[float, float]] = {}
    handles = []
    for name, mod in _layers(model):

        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _o: torch.Tensor, name: str = name) -> None:
            lo, hi = float(inputs[0].min()), float(inputs[0].max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))

        handles.append(mod.register_forward_hook(hook))
    model.eval()
    try:
        for start in range(0, len(calib_x), batch_size):
            model(calib_x[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
    return ranges


@torch.no_grad()
def quantize_int8(model: nn.Module, calib_x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` (pruning already baked in) with every Conv2d / Linear in int8, calibrated."""
    ranges = calibrate(model, calib_x)
    qmodel = copy.deepcopy(model).eval()
    for name, mod in _float_layers(qmodel):
        act = activation_qparams(*ranges[name])
        new = QuantConv2d(mod, act) if isinstance(mod, nn.Conv2d) else QuantLinear(mod, act)
        _replace(qmodel, name, new)
    if hasattr(model, "spec"):
        qmodel.spec = model.spec
    return qmodel


# -- pruning ----------------------------------------------------------------------------------
def prune_student(model: nn.Module, amount: float) -> list[str]:
    """Unstructured magnitude pruning of every Conv2d / Linear weight (masks stay installed).

    Fine-tune afterwards (masks keep pruned weights at zero), then :func:`finalize_pruning`.
    """
    if amount == 0:
        return []
    return prune_model(model, "magnitude", amount, types=QUANTIZABLE)


def finalize_pruning(model: nn.Module) -> None:
    remove_pruning(model)


def sparsity(model: nn.Module) -> float:
    """Share of zeros among Conv2d / Linear weights (float or int8 layers)."""
    zeros = total = 0
    weights = [m.weight_q for _, m in _quant_layers(model)] + [m.weight for _, m in _float_layers(model)]
    for w in weights:
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


# -- packed file ------------------------------------------------------------------------------
def _bitmap(mask: np.ndarray) -> bytes:
    return np.packbits(mask.reshape(-1).astype(np.uint8)).tobytes()  # MSB first, ceil(n / 8) bytes


def _other_params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    skip = {name for name, _ in _layers(model)}
    out = []
    for key, tensor in model.state_dict().items():
        mod = key.rpartition(".")[0]
        if mod in skip:
            continue
        out.append((key, tensor))
    return out


def pack_int8(qmodel: nn.Module) -> bytes:
    """Serialise an int8 student from :func:`quantize_int8` (needs ``qmodel.spec``) to the ``.fsq`` format."""
    spec: ModelSpec = qmodel.spec  # type: ignore[assignment]  # set by build_model, typed as a tensor or module
    header = spec.to_json().encode()
    parts = [MAGIC, struct.pack("<I", len(header)), header]
    if _float_layers(qmodel):
        raise DistillError("pack_int8 needs a model converted by quantize_int8 (float layers remain)")
    for _, mod in _quant_layers(qmodel):
        q = mod.weight_q.numpy()
        parts += [struct.pack("<fB", mod.act_scale, mod.act_zero_point), _bitmap(q != 0), q[q != 0].tobytes(),
                  mod.weight_scale.numpy().astype("<f4").tobytes()]
        if mod.bias is not None:
            parts.append(mod.bias.numpy().astype("<f4").tobytes())
    for _, tensor in _other_params(qmodel):
        parts.append(tensor.detach().numpy().astype("<f4").tobytes())
    return b"".join(parts)


def unpack_int8(data: bytes) -> nn.Module:
    """Rebuild the int8 student from ``.fsq`` bytes; raises :class:`DistillError` on malformed input."""
    if data[:4] != MAGIC or len(data) < 8:
        raise DistillError("not an fsq file (bad magic)")
    (hlen,) = struct.unpack_from("<I", data, 4)
    try:
        spec = ModelSpec.from_json(data[8 : 8 + hlen].decode())
    except (ValueError, TypeError, KeyError) as exc:
        raise DistillError(f"fsq header unreadable: {exc}") from exc
    pos = 8 + hlen
    model = build_model(spec).eval()

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise DistillError(f"fsq file truncated at byte {pos} (needs {n} more)")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    for name, mod in _float_layers(model):
        act_scale, act_zp = struct.unpack("<fB", take(5))
        n, c_out = mod.weight.numel(), int(mod.weight.shape[0])
        mask = np.unpackbits(np.frombuffer(take(math.ceil(n / 8)), np.uint8))[:n].astype(bool)
        q = np.zeros(n, np.int8)
        q[mask] = np.frombuffer(take(int(mask.sum())), np.int8)
        scale = np.frombuffer(take(4 * c_out), "<f4")
        new: _QuantBase = QuantConv2d(mod, (1.0, 0)) if isinstance(mod, nn.Conv2d) else QuantLinear(mod, (1.0, 0))
        new.weight_q = torch.from_numpy(q.reshape(tuple(mod.weight.shape)).copy())
        new.weight_scale = torch.from_numpy(scale.astype(np.float32).copy())
        if mod.bias is not None:
            new.bias = torch.from_numpy(np.frombuffer(take(4 * c_out), "<f4").astype(np.float32).copy())
        new.act_scale, new.act_zero_point = float(act_scale), int(act_zp)
        _replace(model, name, new)
    state = model.state_dict()
    for key, tensor in _other_params(model):
        raw = np.frombuffer(take(4 * tensor.numel()), "<f4").astype(np.float32)
        state[key] = torch.from_numpy(raw.reshape(tensor.shape).copy())
    if pos != len(data):
        raise DistillError(f"fsq file has {len(data) - pos} trailing bytes")
    model.load_state_dict(state)
    model.spec = spec  # type: ignore[assignment]  # nn.Module attributes are typed as tensors or modules
    return model


def packed_nbytes_bound(spec: ModelSpec, prune_amount: float) -> int:
    """Upper bound on ``len(pack_int8(...))`` for ``spec`` pruned by ``prune_amount`` (see module doc)."""
    model = build_model(spec)
    total = 8 + len(spec.to_json().encode())
    for _, mod in _float_layers(model):
        n, c_out = mod.weight.numel(), int(mod.weight.shape[0])
        nnz = n - round(prune_amount * n)  # torch.nn.utils.prune keeps n - round(amount * n)
        total += 5 + math.ceil(n / 8) + nnz + 4 * c_out + (4 * c_out if mod.bias is not None else 0)
    total += sum(4 * t.numel() for _, t in _other_params(model))
    return total
