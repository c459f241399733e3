"""The channel-dependency graph of a model, found generically with ``torch.fx``.

The model is traced with :func:`torch.fx.symbolic_trace` and its shapes are
propagated with one example batch; no model name or parameter-name pattern is
consulted. Every tensor flowing through the graph carries the *channel group*
of its dim 1 (or ``None``: not sliceable):

* the output channels of a ``Conv*d`` / ``Linear`` start a new group whose size
  is ``out_channels`` / ``out_features``;
* consumers follow the producer's group: the next layer's input dim, the
  affine parameters (and running statistics) of ``GroupNorm`` / ``BatchNorm``;
* shape-preserving ops (activations, pooling, spatial means, ``Identity``)
  pass the group through;
* a channel-major flatten of ``(C, H, W)`` into ``C*H*W`` features keeps the
  group with a *block* of ``H*W`` consecutive features per channel (the CNN
  flattens ``(C, 1, 1)``, block 1; the MLP flattens the raw input, ``None``);
* an elementwise op of several tensors (a residual ``add``) merges the groups
  of its operands into one coupled group;
* the model input, whatever reaches the model output (the classifier's
  ``num_classes``), and any group merged with either are *fixed*: never sliced.

Anything the rules do not cover (``cat``, reshapes other than a flatten,
grouped convolutions, unknown modules with parameters, ``Linear`` over more
than 2 dims) raises :class:`~fedshrink.errors.ConfigError` instead of guessing.

The result, :class:`LayerGraph`, lists the sliceable groups (named after their
first producer module in forward order, e.g. ``"features.0"``) and, for every
state-dict key, which dims follow which group (:class:`TensorRule`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fedshrink.errors import ConfigError

# (C_out, C_in, k...) convolutions and (out, in) linears: the layers that start groups.
_PRODUCERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Per-channel normalisations: every parameter / buffer of shape (C,) follows the input group.
_CHANNEL_NORMS: tuple[type[nn.Module], ...] = (
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
# Ops that move dim 1 (or mix channels) and are not a channel-major flatten: refused.
_RESHAPING = {
    "view",
    "reshape",
    "permute",
    "transpose",
    "t",
    "movedim",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "matmul",
    "bmm",
    "mm",
    "cat",
    "stack",
    "chunk",
    "split",
    "einsum",
    "softmax",
    "log_softmax",
}


@dataclass(frozen=True)
class ChannelGroup:
    """A set of coupled channel dims that must be sliced with one index set."""

    name: str  # first producer module in forward order
    size: int  # full number of channels
    producers: tuple[str, ...]  # modules whose output channels form the group


@dataclass(frozen=True)
class DimRule:
    """Dim ``dim`` of a tensor follows ``group``; each channel spans ``block`` consecutive entries."""

    dim: int
    group: str
    block: int = 1


@dataclass(frozen=True)
class TensorRule:
    key: str  # state-dict key
    shape: tuple[int, ...]  # full shape
    dims: tuple[DimRule, ...]  # () = copied whole


@dataclass(frozen=True)
class LayerGraph:
    """Sliceable channel groups and the slicing rule of every state-dict key."""

    groups: Mapping[str, ChannelGroup]  # in forward order
    tensors: Mapping[str, TensorRule]  # in state-dict order
    fixed: tuple[str, ...]  # producers whose output is never sliced (classifier, ...)

    def group_sizes(self) -> dict[str, int]:
        return {name: g.size for name, g in self.groups.items()}

    def full_shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: rule.shape for key, rule in self.tensors.items()}

    def rule_for(self, key: str) -> TensorRule:
        """The rule of ``key``, also for reparametrised keys (see :func:`canonical_key`)."""
        rule = self.tensors.get(key) or self.tensors.get(canonical_key(key))
        if rule is None:
            raise ConfigError("fragments.tensor", key, "a state-dict key of the traced model")
        return rule


def canonical_key(key: str) -> str:
    """Map reparametrised state-dict keys to the plain parameter they stand for.

    ``m.weight_orig`` / ``m.weight_mask`` (``torch.nn.utils.prune``) and
    ``m.parametrizations.weight.original`` (``torch.nn.utils.parametrize``, also
    when wrapping ``weight_orig``) all map to ``m.weight``.
    """
    parts = key.split(".")
    if len(parts) >= 3 and parts[-3] == "parametrizations" and parts[-1] == "original":
        parts = [*parts[:-3], parts[-2]]
    last = parts[-1]
    for suffix in ("_orig", "_mask"):
        if last.endswith(suffix) and len(last) > len(suffix):
            last = last[: -len(suffix)]
            break
    return ".".join([*parts[:-1], last])


class _Groups:
    """Union-find over channel groups with a 'fixed' flag per root."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.producers: list[list[str]] = []

    def new(self, size: int, producer: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.fixed.append(False)
        self.producers.append([producer])
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            raise ConfigError(
                "fragments.graph", where, f"operands with equal channel counts, got {self.size[ra]} and {self.size[rb]}"
            )
        lo, hi = min(ra, rb), max(ra, rb)  # the earlier group names the merged one
        self.parent[hi] = lo
        self.fixed[lo] = self.fixed[lo] or self.fixed[hi]
        self.producers[lo] += self.producers[hi]
        return lo

    def fix(self, g: int) -> None:
        self.fixed[self.find(g)] = True


@dataclass(frozen=True)
class _Chan:
    group: int | None  # None: not sliceable
    block: int = 1


_NONE = _Chan(None)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(d) for d in meta.shape)


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []

    def visit(a: Any) -> None:
        if isinstance(a, fx.Node):
            if _shape(a) is not None:
                out.append(a)
        elif isinstance(a, tuple | list):
            for b in a:
                visit(b)
        elif isinstance(a, dict):
            for b in a.values():
                visit(b)

    visit(node.args)
    visit(node.kwargs)
    return out


def _op_name(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[str(node.target)]).__name__.lower()
    if node.op == "call_method":
        return str(node.target)
    target = node.target
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target))


def _trace(model: nn.Module, example_input: torch.Tensor | None) -> fx.GraphModule:
    """``model`` traced by torch.fx with every node's output shape (``tensor_meta``), on an eval-mode copy."""
    if example_input is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ConfigError("fragments.example_input", None, "a tensor, or a model built by build_model")
        example_input = torch.zeros(2, *spec.input_shape)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises plain exceptions of several kinds
        raise ConfigError("fragments.model", type(model).__name__, f"a torch.fx-traceable model ({exc})") from None
    was_training = gm.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    gm.train(was_training)
    return gm


class _Walker:
    """One pass over a traced graph: which channel group every node's dim 1 follows, and which tensors slice."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.groups = _Groups()
        self.chans: dict[fx.Node, _Chan] = {}
        self.pending: list[tuple[str, int, _Chan]] = []  # (state key, dim, chan), finalised at the end
        self.claimed: set[str] = set()
        self.producer_group: dict[str, int] = {}

    def chan(self, node: fx.Node | None) -> _Chan:
        return self.chans.get(node, _NONE) if node is not None else _NONE

    def claim(self, mod_name: str, module: nn.Module, dims: Mapping[str, list[tuple[int, _Chan]]]) -> None:
        for local, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            key = f"{mod_name}.{local}" if mod_name else local
            if key in self.claimed:
                raise ConfigError("fragments.graph", mod_name, "each module called once in forward")
            self.claimed.add(key)
            for dim, chan in dims.get(local, []):
                self.pending.append((key, dim, chan))

    def visit(self, node: fx.Node) -> None:
        if node.op in ("placeholder", "get_attr"):
            self.chans[node] = _NONE  # inputs; a raw parameter used in forward is copied whole
            return
        if node.op == "output":
            for arg in _tensor_args(node):
                g = self.chan(arg).group
                if g is not None:
                    self.groups.fix(g)
            return
        out_shape = _shape(node)
        if out_shape is None:
            return  # ints, sizes ...: no channels
        args = _tensor_args(node)
        module = self.modules[str(node.target)] if node.op == "call_module" else None
        if isinstance(module, _PRODUCERS):
            self.chans[node] = self.producer(str(node.target), module, args)
        elif isinstance(module, _CHANNEL_NORMS):
            self.chans[node] = self.norm(str(node.target), module, args)
        else:
            if module is not None:
                self.parameter_free(node, module)
            if len(args) <= 1:
                self.chans[node] = self.single(node, args[0] if args else None, out_shape)
            else:
                self.chans[node] = self.elementwise(node, args, out_shape)

    def producer(self, mod_name: str, module: nn.Module, args: list[fx.Node]) -> _Chan:
        """A Conv/Linear starts a channel group: its output channels; its input dim follows its input's group."""
        in_chan = self.chan(args[0] if args else None)
        if isinstance(module, nn.Linear):
            in_shape = _shape(args[0]) if args else None
            if in_shape is None or len(in_shape) != 2:
                raise ConfigError("fragments.layer", mod_name, "a Linear applied to (B, features)")
            size = module.out_features
        else:
            assert isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
            if module.groups != 1:
                raise ConfigError("fragments.layer", mod_name, "convolutions with groups=1")
            size = module.out_channels
        g = self.groups.new(size, mod_name)
        self.producer_group[mod_name] = g
        out_chan = _Chan(g)
        self.claim(mod_name, module, {"weight": [(0, out_chan), (1, in_chan)], "bias": [(0, out_chan)]})
        return out_chan

    def norm(self, mod_name: str, module: nn.Module, args: list[fx.Node]) -> _Chan:
        """A per-channel norm: its 1-D tensors follow its input's group."""
        in_chan = self.chan(args[0] if args else None)
        if in_chan.block != 1:
            raise ConfigError("fragments.layer", mod_name, "a norm over a channel dim, not flattened features")
        per_channel = {
            local: [(0, in_chan)]
            for local, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            if t.dim() == 1
        }
        self.claim(mod_name, module, per_channel)
        return in_chan

    def parameter_free(self, node: fx.Node, module: nn.Module) -> None:
        if any(True for _ in module.parameters(recurse=False)):
            raise ConfigError(
                "fragments.layer",
                f"{node.target} ({type(module).__name__})",
                "Conv/Linear (groups=1), GroupNorm/BatchNorm/InstanceNorm or parameter-free modules",
            )
        self.claim(str(node.target), module, {})

    def single(self, node: fx.Node, src: fx.Node | None, out_shape: tuple[int, ...]) -> _Chan:
        """One tensor operand: channels pass through, or a flatten turns them into blocks of features."""
        chan = self.chan(src)
        in_shape = _shape(src) if src is not None else None
        if chan.group is None or in_shape is None:
            return _NONE
        name = _op_name(node, self.modules)
        flat = len(in_shape) > 2 and len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:])
        if flat and name in ("flatten", "view", "reshape"):
            return _Chan(chan.group, chan.block * math.prod(in_shape[2:]))
        if name not in _RESHAPING and len(out_shape) >= 2 and out_shape[:2] == in_shape[:2]:
            return chan
        raise ConfigError("fragments.graph", f"{node.op} {node.name}", "ops that keep dim 1 as channels, or a flatten")

    def elementwise(self, node: fx.Node, args: list[fx.Node], out_shape: tuple[int, ...]) -> _Chan:
        """Several tensor operands (residual add, gating mul ...): their groups merge."""
        where = f"{node.op} {node.name}"
        if _op_name(node, self.modules) in _RESHAPING or len(out_shape) < 2:
            raise ConfigError("fragments.graph", where, "elementwise ops over tensors with equal channels")
        merged: int | None = None
        block = 1
        touches_fixed = False
        for a in args:
            a_shape = _shape(a)
            assert a_shape is not None
            a_chan = self.chan(a)
            if len(a_shape) < 2 or (a_shape[1] == 1 and out_shape[1] != 1):
                continue  # scalar or broadcast along channels: no coupling
            if a_shape[1] != out_shape[1] or len(a_shape) != len(out_shape):
                raise ConfigError("fragments.graph", where, "elementwise ops over tensors with equal channels")
            if a_chan.group is None:
                touches_fixed = True
                continue
            if merged is not None and a_chan.block != block:
                raise ConfigError("fragments.graph", where, "operands with the same feature layout")
            block = a_chan.block
            merged = a_chan.group if merged is None else self.groups.union(merged, a_chan.group, where)
        if merged is not None and touches_fixed:
            self.groups.fix(merged)
        live = any(self.chan(a).group is not None for a in args)
        return _Chan(merged, block) if live else _NONE

    def finish(self, state: Mapping[str, torch.Tensor]) -> LayerGraph:
        """Roots, names and per-tensor rules, once every union is known."""
        root_name: dict[int, str] = {}
        group_list: dict[str, ChannelGroup] = {}
        fixed_producers: list[str] = []
        for producer, g in self.producer_group.items():
            root = self.groups.find(g)
            if self.groups.fixed[root]:
                fixed_producers.append(producer)
                continue
            if root not in root_name:
                members = tuple(p for p, h in self.producer_group.items() if self.groups.find(h) == root)
                root_name[root] = members[0]
                group_list[members[0]] = ChannelGroup(members[0], self.groups.size[root], members)
        dims_by_key: dict[str, list[DimRule]] = {}
        for key, dim, chan in self.pending:
            if chan.group is None or self.groups.fixed[self.groups.find(chan.group)]:
                continue
            dims_by_key.setdefault(key, []).append(DimRule(dim, root_name[self.groups.find(chan.group)], chan.block))
        tensors: dict[str, TensorRule] = {}
        for key, value in state.items():
            dims = tuple(dims_by_key.get(key, dims_by_key.get(canonical_key(key), [])))
            shape = tuple(int(d) for d in value.shape)
            for rule in dims:
                group = group_list[rule.group]
                if rule.dim >= len(shape) or shape[rule.dim] != group.size * rule.block:
                    raise ConfigError("fragments.tensor", key, f"dim {rule.dim} of size {group.size * rule.block}")
            tensors[key] = TensorRule(key, shape, dims)  # unclaimed keys (unused modules): copied whole
        return LayerGraph(groups=group_list, tensors=tensors, fixed=tuple(fixed_producers))


def build_graph(model: nn.Module, example_input: torch.Tensor | None = None) -> LayerGraph:
    """Trace ``model`` and return its :class:`LayerGraph`.

    ``example_input`` defaults to a batch of 2 zeros of ``model.spec.input_shape``
    (models from :func:`~fedshrink.models.build_model` carry their spec). The
    model is traced on a copy in ``eval`` mode, so it is left untouched.
    """
    walker = _Walker(_trace(model, example_input))
    for node in walker.gm.graph.nodes:
        walker.visit(node)
    return walker.finish(model.state_dict())
