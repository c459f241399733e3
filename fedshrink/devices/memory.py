"""Training memory of one client, modelled from the model's traced layer graph.

:func:`step_memory` walks the ``torch.fx`` graph of the sub-model a client
trains (shapes from ``ShapeProp`` at the batch size) and replays one SGD step
the way reverse-mode autograd runs it, counting tensor bytes:

* **forward**: each op allocates its output (a view such as ``Flatten`` or
  ``Identity`` allocates nothing) and keeps what its backward needs:

  ========================  ==================================================
  op                        kept for backward
  ========================  ==================================================
  Conv / Linear             its input
  BatchNorm / GroupNorm     its input + mean and 1/std (2 C or 2 B G floats)
  ReLU                      its output
  MaxPool                   its input + argmax indices (int64, output-sized)
  mean / avg pool / add     nothing (shapes only)
  ========================  ==================================================

  an output nobody keeps is freed once its last consumer has run; the
  logits are kept by the caller, and the loss keeps its log-probabilities.
* **backward**, ops in reverse order: each op allocates a gradient for each
  input that needs one (``add`` passes its gradient through without a copy;
  a second gradient reaching the same tensor is summed into a new buffer),
  and its parameters' gradients (4 B each, kept to the optimizer step); then
  it frees what it kept and its output's gradient. A convolution's weight
  gradient needs its input unfolded (im2col), one sample at a time:
  ``4 x C_in/groups x k_h x k_w x H_out x W_out`` bytes while it runs (none
  for a 1x1, stride-1, unpadded convolution).

The step's working set is the larger of the two passes' peaks. This is the
memory of an im2col/GEMM engine that unfolds one sample at a time (PyTorch's
native CPU convolution, and the scheme microcontroller and mobile runtimes
use); libraries with blocked layouts (oneDNN) add their own workspaces,
which are not modelled (simulations/results/devices.md measures both).

Not modelled: the client's data set, Python and framework objects, kernel
code and caches, allocator slack, input scaling hooks (``fragment-scaling``)
and nested self-distillation's extra forward passes.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fedshrink.errors import ConfigError
from fedshrink.models.registry import ModelSpec, build_model

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)
_ALIAS_MODULES = (nn.Flatten, nn.Identity)
_ALIAS_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
_FREE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d)
_RELU = {torch.relu, nn.functional.relu}
_ADD = {operator.add, torch.add}
_MEAN = {torch.mean}


@dataclass
class _Op:
    """One traced op, as the walk sees it."""

    node: fx.Node
    inputs: list[fx.Node]  # storage roots of its tensor inputs, each once
    out: fx.Node  # storage root of its output (the node itself unless a view)
    out_bytes: int  # bytes it allocates for its output (0 for a view)
    kept: list[tuple[object, int]] = field(default_factory=list)  # (tensor key, bytes) kept for backward
    param_bytes: int = 0
    columns: int = 0  # im2col bytes of one sample while its backward (and forward) runs
    passes_grad: bool = False  # add: gradient flows to the inputs without a copy


def _nbytes(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise ConfigError("memory-model", node.format_node(), "ops whose output is one tensor")
    return int(math.prod(meta.shape)) * torch.empty((), dtype=meta.dtype).element_size()


def _conv_columns(mod: nn.Module, node: fx.Node) -> int:
    if not isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return 0
    k = int(math.prod(mod.kernel_size))
    padded = mod.padding != "valid" if isinstance(mod.padding, str) else any(int(p) for p in mod.padding)
    if k == 1 and all(s == 1 for s in mod.stride) and not padded:
        return 0  # the input already is the column matrix
    spatial = int(math.prod(node.meta["tensor_meta"].shape[2:]))  # H_out x W_out
    return 4 * (mod.in_channels // mod.groups) * k * spatial


def _norm_stats(mod: nn.Module, node: fx.Node) -> int:
    shape = node.meta["tensor_meta"].shape
    if isinstance(mod, nn.GroupNorm):
        return 2 * 4 * int(shape[0]) * mod.num_groups
    if isinstance(mod, nn.LayerNorm):
        return 2 * 4 * int(math.prod(shape)) // int(math.prod(mod.normalized_shape))
    return 2 * 4 * int(mod.num_features)  # type: ignore[arg-type]  # an int on every BatchNorm


def _module_op(op: _Op, mod: nn.Module) -> None:
    node, src = op.node, op.inputs[0]
    op.param_bytes = sum(p.numel() * p.element_size() for p in mod.parameters(recurse=False) if p.requires_grad)
    if isinstance(mod, _ALIAS_MODULES):
        op.out, op.out_bytes = src, 0
    elif isinstance(mod, _LAYERS):
        op.kept.append((src, -1))
        op.columns = _conv_columns(mod, node)
    elif isinstance(mod, _NORMS):
        op.kept += [(src, -1), (("stats", node), _norm_stats(mod, node))]
    elif isinstance(mod, nn.ReLU):
        op.kept.append((node, op.out_bytes))
    elif isinstance(mod, nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d):
        op.kept += [(src, -1), (("indices", node), 2 * op.out_bytes)]  # int64 beside a float32 output
    elif not isinstance(mod, _FREE_MODULES):
        raise ConfigError("memory-model", f"{node.target} ({type(mod).__name__})", _COVERED)


def _function_op(op: _Op, gm: fx.GraphModule) -> None:
    node = op.node
    if node.op == "call_function" and node.target in _RELU:
        op.kept.append((node, op.out_bytes))
    elif node.op == "call_function" and node.target in _ADD:
        op.passes_grad = True
    elif node.op == "call_function" and node.target is operator.mul and len(op.inputs) == 1:
        pass  # scaling by a constant keeps nothing
    elif (node.op == "call_method" and node.target == "mean") or (node.op == "call_function" and node.target in _MEAN):
        pass
    elif node.op == "call_method" and node.target in _ALIAS_METHODS:
        op.out, op.out_bytes = op.inputs[0], 0
    else:
        raise ConfigError("memory-model", node.format_node(), _COVERED)


_COVERED = ("ops the memory model covers: Conv, Linear, BatchNorm, GroupNorm, LayerNorm, ReLU, MaxPool, "
            "average pools, mean, add, views, scaling by a constant")


def _ops(gm: fx.GraphModule) -> tuple[list[_Op], fx.Node]:
    """The ops of ``gm`` in forward order and the storage root of its output."""
    root: dict[fx.Node, fx.Node] = {}
    ops: list[_Op] = []
    output: fx.Node | None = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            root[node] = node
            continue
        if node.op == "output":
            output = root[node.args[0]]
            continue
        inputs = list(dict.fromkeys(root[a] for a in node.all_input_nodes))
        op = _Op(node, inputs, node, _nbytes(node))
        if node.op == "call_module":
            _module_op(op, gm.get_submodule(str(node.target)))
        else:
            _function_op(op, gm)
        op.kept = [(k, _nbytes(k) if b < 0 and isinstance(k, fx.Node) else b) for k, b in op.kept]
        root[node] = op.out
        ops.append(op)
    assert output is not None
    return ops, output


class _Ledger:
    """Live bytes: kept tensors and transient outputs, gradient buffers (ref-counted), parameter gradients."""

    def __init__(self) -> None:
        self.tensors: dict[object, int] = {}
        self.grads: dict[int, list[int]] = {}  # buffer id -> [bytes, references]
        self.grad_of: dict[fx.Node, int] = {}
        self.param_grads = 0
        self.peak = 0
        self._next = 0

    def total(self) -> int:
        return sum(self.tensors.values()) + sum(b for b, _ in self.grads.values()) + self.param_grads

    def note(self, extra: int = 0) -> None:
        self.peak = max(self.peak, self.total() + extra)

    def new_grad(self, nbytes: int) -> int:
        self._next += 1
        self.grads[self._next] = [nbytes, 1]
        return self._next

    def release(self, gid: int) -> None:
        self.grads[gid][1] -= 1
        if self.grads[gid][1] == 0:
            del self.grads[gid]

    def give_grad(self, node: fx.Node, gid: int, nbytes: int) -> None:
        """``node`` receives gradient buffer ``gid``: the first is kept, a second is summed into a new buffer."""
        old = self.grad_of.get(node)
        if old is None:
            self.grad_of[node] = gid
            return
        total = self.new_grad(nbytes)
        self.note()
        self.release(old)
        self.release(gid)
        self.grad_of[node] = total


@dataclass(frozen=True)
class StepMemory:
    """Modelled bytes of one SGD step of a model at one batch size (walk in the module doc)."""

    params: int  # parameter count
    param_bytes: int  # bytes of the parameters (4 per fp32 parameter)
    prunable: int  # Conv / Linear weights (what pruning and fake-quant touch)
    weight_channels: int  # output channels of those layers (one quant scale each)
    batch_bytes: int  # one batch of inputs and int64 labels
    saved_bytes: int  # kept for backward at the end of the forward pass (logits and log-probs included)
    forward_peak: int  # peak of the forward pass's live tensors
    backward_peak: int  # peak of the backward pass: kept tensors left, gradient buffers, parameter gradients

    @property
    def working_bytes(self) -> int:
        """Activations and gradients at the step's peak (the larger pass); weights and optimizer excluded."""
        return max(self.forward_peak, self.backward_peak)


def _forward(ops: list[_Op], logits: fx.Node, ledger: _Ledger) -> dict[object, set[fx.Node]]:
    keepers: dict[object, set[fx.Node]] = {}
    for op in ops:
        for key, _ in op.kept:
            keepers.setdefault(key, set()).add(op.node)
    uses: dict[fx.Node, int] = {}
    for op in ops:
        for a in op.inputs:
            uses[a] = uses.get(a, 0) + 1
    for op in ops:
        if op.out_bytes:
            ledger.tensors[op.out] = op.out_bytes
        for key, nbytes in op.kept:
            if not isinstance(key, fx.Node):
                ledger.tensors[key] = nbytes
        ledger.note(op.columns)
        for a in op.inputs:
            uses[a] -= 1
            if uses[a] == 0 and a not in keepers and a is not logits:
                ledger.tensors.pop(a, None)
    return keepers


def _backward(ops: list[_Op], logits: fx.Node, ledger: _Ledger, keepers: dict[object, set[fx.Node]],
              requires_grad: Callable[[fx.Node], bool]) -> None:
    size = {op.out: op.out_bytes for op in ops if op.out_bytes}
    logits_bytes = ledger.tensors[logits]
    ledger.grad_of[logits] = ledger.new_grad(logits_bytes)  # d loss / d logits, via the loss's own buffers
    ledger.note(logits_bytes)
    ledger.tensors.pop(("log-probs",), None)
    for op in reversed(ops):
        if op.out_bytes == 0:
            continue  # a view: its input's gradient is a view of its output's
        gid = ledger.grad_of.pop(op.out, None)
        if gid is None:
            continue  # nothing downstream needs it
        for a in (a for a in op.inputs if requires_grad(a)):
            if op.passes_grad:
                ledger.grads[gid][1] += 1
                ledger.give_grad(a, gid, size[a])
            else:
                ledger.give_grad(a, ledger.new_grad(size[a]), size[a])
        ledger.param_grads += op.param_bytes
        ledger.note(op.columns)
        ledger.release(gid)
        for key, _ in op.kept:
            keepers[key].discard(op.node)
            if not keepers[key]:
                ledger.tensors.pop(key, None)


@functools.lru_cache(maxsize=128)
def step_memory(model_spec: ModelSpec, batch_size: int) -> StepMemory:
    """Bytes of one SGD step of ``build_model(model_spec)`` on batches of ``batch_size`` (cached)."""
    return module_step_memory(build_model(model_spec), model_spec.input_shape, batch_size)


def module_step_memory(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> StepMemory:
    """Bytes of one SGD step of ``model`` on batches of ``batch_size`` inputs of ``input_shape`` (module doc)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch-size", batch_size, "an integer >= 1")
    was_training = model.training
    gm = fx.symbolic_trace(model)
    gm.train()
    x = torch.zeros(batch_size, *input_shape)  # (B, C, H, W)
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    model.train(was_training)
    ops, logits = _ops(gm)
    ledger = _Ledger()
    keepers = _forward(ops, logits, ledger)
    ledger.tensors[("log-probs",)] = ledger.tensors[logits]  # log_softmax keeps its output
    saved = ledger.total()
    forward_peak = ledger.peak
    ledger.peak = 0
    placeholders = {n for n in gm.graph.nodes if n.op == "placeholder"}
    _backward(ops, logits, ledger, keepers, lambda n: n not in placeholders)
    layers = [m for m in model.modules() if isinstance(m, _LAYERS)]
    return StepMemory(
        params=sum(p.numel() for p in model.parameters()),
        param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        prunable=sum(m.weight.numel() for m in layers),
        weight_channels=sum(m.weight.shape[0] for m in layers),
        batch_bytes=x.numel() * x.element_size() + 8 * batch_size,
        saved_bytes=saved,
        forward_peak=max(forward_peak, saved),
        backward_peak=ledger.peak,
    )


@dataclass(frozen=True)
class TrainingMemory:
    """Modelled bytes a device holds in one client-round, by component.

    What the *device* would hold (the simulation's own PyTorch objects can differ, noted per line)::

        weights      = 4 P                      fp32 weights; with fake-quant these are the full-precision
                                                shadows the optimizer updates
        forward_copy = ceil(k Pw / 8) + 4 Cw    the k-bit weights the forward pass reads, one fp32 scale per
                                                output channel (k < 32 only; PyTorch holds this copy in fp32)
        masks        = ceil(Pw / 8)             prune masks, 1 bit per prunable weight (PyTorch: a float mask
                                                and a masked copy of each weight)
        momentum     = 4 P                      SGD momentum buffer (0 without momentum)
        batch        = 4 B C H W + 8 B          one batch of inputs and int64 labels
        working      = StepMemory.working_bytes activations kept for backward, gradient buffers and the
                                                parameters' gradients at the step's peak
        reference    = 4 P                      the received weights, kept to form the update
        residual     = 4 P                      error-feedback residual of a lossy uplink (else 0)
        download     = downlink payload bytes   while it is decoded
        codec        = 4 P (x2 if lossy) + U    the update (and update + residual) and the U encoded bytes

    Phases and the round's peak::

        step   = weights + forward_copy + masks + momentum + batch + working
        train  = step + reference + residual
        decode = download + reference + weights + residual
        encode = weights + masks + reference + residual + codec
        round  = max(train, decode, encode)

    P: parameters, Pw: Conv/Linear weights, Cw: their output channels, B: batch size.
    """

    weights: int
    forward_copy: int
    masks: int
    momentum: int
    batch: int
    working: int
    activations: int  # the part of ``working`` kept for backward at the end of the forward pass (reported)
    reference: int
    residual: int
    download: int
    codec: int

    @property
    def step_peak(self) -> int:
        return self.weights + self.forward_copy + self.masks + self.momentum + self.batch + self.working

    @property
    def train_peak(self) -> int:
        return self.step_peak + self.reference + self.residual

    @property
    def decode_peak(self) -> int:
        return self.download + self.reference + self.weights + self.residual

    @property
    def encode_peak(self) -> int:
        return self.weights + self.masks + self.reference + self.residual + self.codec

    @property
    def round_peak(self) -> int:
        return max(self.train_peak, self.decode_peak, self.encode_peak)

    def to_dict(self) -> dict[str, int]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        out.update(step_peak=self.step_peak, train_peak=self.train_peak, decode_peak=self.decode_peak,
                   encode_peak=self.encode_peak, round_peak=self.round_peak)
        return out


def training_memory(step: StepMemory, *, weight_bits: int, pruned: bool, momentum: bool, lossy_uplink: bool,
                    download_bytes: int, upload_bytes: int) -> TrainingMemory:
    """The device's bytes for one client-round (formulas in :class:`TrainingMemory`)."""
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) or not (2 <= weight_bits <= 32):
        raise ConfigError("weight-bits", weight_bits, "an integer in 2..32")
    if min(download_bytes, upload_bytes) < 0:
        raise ConfigError("payload-bytes", (download_bytes, upload_bytes), "non-negative byte counts")
    p = step.param_bytes
    quantized = weight_bits < 32
    return TrainingMemory(
        weights=p,
        forward_copy=math.ceil(weight_bits * step.prunable / 8) + 4 * step.weight_channels if quantized else 0,
        masks=math.ceil(step.prunable / 8) if pruned else 0,
        momentum=p if momentum else 0,
        batch=step.batch_bytes,
        working=step.working_bytes,
        activations=step.saved_bytes,
        reference=p,
        residual=p if lossy_uplink else 0,
        download=download_bytes,
        codec=p * (2 if lossy_uplink else 1) + upload_bytes,
    )
