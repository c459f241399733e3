"""Device profiles: what a client of a kind trains and sends, and how to pick one for a budget.

Public API::

    DeviceProfile(name, width, sparsity, prune, weight_bits, uplink, downlink, local_epochs, batch_size)
    PROFILES: dict[str, DeviceProfile]; register_profile(p); get_profile(name)
    DEFAULT_MIX = "phone:0.4,laptop:0.6"
    parse_mix(text) -> dict[str, float]                  # validated fractions
    assign_profiles(mix, num_clients, seed) -> list[str] # largest remainder, then seeded shuffle
    ProfileBudget(memory_mb, upload_kb)
    estimate(model_spec, profile) -> Estimate            # training memory and bytes per round
    pick_profile(budget, model_spec) -> (DeviceProfile, Estimate)

Shipped profiles (widths are the fragment width of the width-1 global model):

========  =====  ========  ============  ====  =====================  ==========  ======  =====
name      width  sparsity  prune         bits  uplink                 downlink    epochs  batch
========  =====  ========  ============  ====  =====================  ==========  ======  =====
iot       0.25   0.5       unstructured  4     topk:0.1|q4|zlib       int8|zlib   2       16
phone     0.5    0.3       unstructured  8     topk:0.1|q4|zlib       int8|zlib   2       16
edge      0.75   0.25      structured    8     topk:0.05|int8|zlib    int8|zlib   2       16
laptop    1.0    0.0       none          32    topk:0.05|int8|zlib    raw         2       16
========  =====  ========  ============  ====  =====================  ==========  ======  =====

Rationale: a microcontroller-class ``iot`` device has tens of kB of SRAM, so it
trains a quarter-width fragment, half of it pruned, with 4-bit weights, and
sends 10 % of its update at 4 bits; a ``phone`` trains half width and sends
10 % of its update at 4 bits; ``edge`` boxes (NPUs) prefer dense kernels, so
they prune whole channels; a ``laptop`` trains the full fp32 model. Every
uplink is sparsified with error feedback (the residual stays on the device):
even a laptop's link is the scarce resource when there are many of them.
Epochs and batch size equal the run's defaults, so a mixed run and a
full-width FedAvg run do the same local training (the fragments benchmark
compares them). The default mix (``DEFAULT_MIX``, the one the fragments
benchmark measures) puts 40 % of clients at width 0.5 and 60 % at full
width: the global model's outer channels are trained only by full-width
clients, and with 80 % of clients narrow it stayed 4-6 points below
full-width FedAvg (simulations/results/fragments.md).

Units: memory in bytes, budgets in SI units (1 MB = 10**6 bytes, 1 kB = 10**3 bytes).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fedshrink.compression.chain import ChainConfig
from fedshrink.compression.codecs import REGISTRY, QuantConfig, TopKConfig
from fedshrink.compression.codecs import Kind as CodecKind
from fedshrink.errors import ConfigError
from fedshrink.fakequant import OFF, check_bits
from fedshrink.models.registry import ModelSpec, build_model

PRUNE_KINDS = ("unstructured", "structured", "none")
# fedshrink.compression.pruning method for each kind of pruning.
PRUNING_METHOD = {"unstructured": "magnitude", "structured": "l1_channel"}
DEFAULT_MIX = "phone:0.4,laptop:0.6"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class DeviceProfile:
    """A named set of per-client settings (validated; chains stored in canonical form)."""

    name: str
    width: float = 1.0  # fragment width in (0, 1]
    sparsity: float = 0.0  # pruned fraction of Conv/Linear weights in [0, 1)
    prune: str = "none"  # "unstructured" | "structured" | "none"
    weight_bits: int = OFF  # fake-quant bits during local training: 2..8, or 32 (off)
    uplink: str = "raw"  # codec chain of the client's update
    downlink: str = "raw"  # codec chain of the server's fragment
    local_epochs: int = 2
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError("profile.name", self.name, "1-64 characters of letters, digits, '_', '-', '.'")
        if not _is_num(self.width) or not 0 < self.width <= 1:
            raise ConfigError(f"profile.{self.name}.width", self.width, "a number in (0, 1]")
        if not _is_num(self.sparsity) or not 0 <= self.sparsity < 1:
            raise ConfigError(f"profile.{self.name}.sparsity", self.sparsity, "a number in [0, 1)")
        if self.prune not in PRUNE_KINDS:
            raise ConfigError(f"profile.{self.name}.prune", self.prune, "one of " + ", ".join(map(repr, PRUNE_KINDS)))
        if (self.prune == "none") != (self.sparsity == 0):
            raise ConfigError(
                f"profile.{self.name}.sparsity",
                self.sparsity,
                "0 exactly when prune='none' (and > 0 with 'unstructured' or 'structured')",
            )
        try:
            check_bits(self.weight_bits)
        except ConfigError:
            raise ConfigError(
                f"profile.{self.name}.weight_bits", self.weight_bits, f"an integer in 2..8, or {OFF} (off)"
            ) from None
        for key in ("uplink", "downlink"):
            text = getattr(self, key)
            try:
                canon = ChainConfig.parse(text).to_string()
            except ConfigError as exc:
                raise ConfigError(f"profile.{self.name}.{key}", text, f"a valid codec chain ({exc})") from None
            object.__setattr__(self, key, canon)
        if not _is_int(self.local_epochs) or self.local_epochs < 1:
            raise ConfigError(f"profile.{self.name}.local_epochs", self.local_epochs, "an integer >= 1")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"profile.{self.name}.batch_size", self.batch_size, "an integer >= 1")
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "sparsity", float(self.sparsity))

    @property
    def pruning_method(self) -> str | None:
        """The :mod:`fedshrink.compression.pruning` method, or None when not pruning."""
        return PRUNING_METHOD.get(self.prune)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceProfile:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, Mapping) or "name" not in data or set(data) - names:
            extra = sorted(set(data) - names) if isinstance(data, Mapping) else data
            raise ConfigError("profile", extra or data, "an object with 'name' and fields " + ", ".join(sorted(names)))
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> DeviceProfile:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            raise ConfigError("profile", str(text)[:80], "a JSON object") from None
        return cls.from_dict(data)


PROFILES: dict[str, DeviceProfile] = {}


def register_profile(profile: DeviceProfile) -> DeviceProfile:
    if profile.name in PROFILES:
        raise ValueError(f"profile {profile.name!r} registered twice")
    PROFILES[profile.name] = profile
    return profile


def get_profile(name: str) -> DeviceProfile:
    if name not in PROFILES:
        raise ConfigError("profile", name, "one of " + ", ".join(map(repr, sorted(PROFILES))))
    return PROFILES[name]


register_profile(DeviceProfile("iot", 0.25, 0.5, "unstructured", 4, "topk:0.1|q4|zlib", "int8|zlib", 2, 16))
register_profile(DeviceProfile("phone", 0.5, 0.3, "unstructured", 8, "topk:0.1|q4|zlib", "int8|zlib", 2, 16))
register_profile(DeviceProfile("edge", 0.75, 0.25, "structured", 8, "topk:0.05|int8|zlib", "int8|zlib", 2, 16))
register_profile(DeviceProfile("laptop", 1.0, 0.0, "none", OFF, "topk:0.05|int8|zlib", "raw", 2, 16))


# ---- profile mixes -----------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    """``"iot:0.4,phone:0.4,laptop:0.2"`` -> ``{"iot": 0.4, ...}``.

    Names must be registered profiles, each once; fractions > 0 summing to 1
    within 1e-6. Each fault is a one-line :class:`ConfigError` saying which.
    """
    known = ", ".join(sorted(PROFILES))
    form = f"name:share pairs joined by ',' such as 'phone:0.4,laptop:0.6' (known profiles: {known})"
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("profile-mix", text, form)
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, frac = part.partition(":")
        name = name.strip()
        if not sep:
            raise ConfigError("profile-mix", text, f"{form}; {part.strip()!r} has no ':share'")
        if name not in PROFILES:
            raise ConfigError("profile-mix", text, f"known profiles only ({known}); {name!r} is not one")
        if name in mix:
            raise ConfigError("profile-mix", text, f"each profile once; {name!r} appears twice")
        try:
            value = float(frac)
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise ConfigError("profile-mix", text, f"shares that are numbers > 0; {name!r} has {frac.strip()!r}")
        mix[name] = value
    total = math.fsum(mix.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError("profile-mix", text, f"shares summing to 1 (they sum to {total:g})")
    return mix


def assign_profiles(mix: str | Mapping[str, float], num_clients: int, seed: int) -> list[str]:
    """Profile name of each client ``0..num_clients-1``: deterministic for ``seed``.

    Counts follow the fractions by the largest-remainder method (floors first,
    then one more to the largest remainders, ties in mix order), then the list
    is shuffled with ``numpy.random.default_rng(seed)``.
    """
    fractions = parse_mix(mix) if isinstance(mix, str) else parse_mix(",".join(f"{k}:{v!r}" for k, v in mix.items()))
    if not _is_int(num_clients) or num_clients < 0:
        raise ConfigError("num-clients", num_clients, "an integer >= 0")
    names = list(fractions)
    quotas = np.asarray([fractions[n] * num_clients for n in names], dtype=np.float64)
    counts = np.floor(quotas).astype(np.int64)
    short = num_clients - int(counts.sum())
    order = sorted(range(len(names)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:short]:
        counts[i] += 1
    plan = [n for n, c in zip(names, counts, strict=True) for _ in range(int(c))]
    perm = np.random.default_rng(seed).permutation(len(plan))
    return [plan[i] for i in perm]


# ---- estimates and budgets ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileBudget:
    """What a device can afford per round: training memory (MB) and upload (kB), SI units."""

    memory_mb: float
    upload_kb: float

    def __post_init__(self) -> None:
        for key in ("memory_mb", "upload_kb"):
            v = getattr(self, key)
            if not _is_num(v) or v <= 0:
                raise ConfigError(f"budget.{key}", v, "a positive number")

    @property
    def memory_bytes(self) -> float:
        return self.memory_mb * 1e6

    @property
    def upload_bytes(self) -> float:
        return self.upload_kb * 1e3


@dataclass(frozen=True)
class Estimate:
    """Resource figures of one profile on one model (all sizes in bytes).

    Training memory, fp32 SGD with momentum, batch ``B``::

        weights     = 4 * P                 P = parameters of the width-w sub-model
        grads       = 4 * P
        momentum    = 4 * P                 (SGD momentum buffer)
        activations = 4 * A * B             A = elements output by every traced op, one sample
        reparam     = (4 + 1) * Pw if pruned (computed weight + bool mask)
                    + 4 * Pw if fake-quant   (quantized copy)    Pw = Conv/Linear weights
        train_memory = sum of the above

    Bytes per round (uplink / downlink, per chain, summed over tensors of ``n`` entries)::

        k      = ceil(ratio * n) with a top-k / rand-k stage, else n
        values = ceil(k * bits / 8)         bits: quant bits, 16 for fp16/bf16, 1 for sign, 32 raw
                 + 8 per quant scale group  (+4 for sign's scale)
        index  = min(ceil(n / 8), k * ceil(log2(n / k + 1) / 7))  with a sparsifier, else 0
                                            (bitmap or delta-varint, whichever is smaller)
        total  = values + index + 32        (32: per-tensor header, name and shape)

    An entropy stage (zlib) is not credited, so byte figures are upper-ish
    bounds; they are estimates for planning, not wire truth.
    """

    width: float
    params: int
    prunable: int
    activations_per_sample: int
    batch_size: int
    weights_bytes: int
    grads_bytes: int
    momentum_bytes: int
    activation_bytes: int
    reparam_bytes: int
    upload_bytes: int
    download_bytes: int

    @property
    def train_memory_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.momentum_bytes + self.activation_bytes + self.reparam_bytes

    def fits(self, budget: ProfileBudget) -> bool:
        return self.train_memory_bytes <= budget.memory_bytes and self.upload_bytes <= budget.upload_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "train_memory_bytes": self.train_memory_bytes}

    def summary(self) -> str:
        return (
            f"width {self.width:g}: {self.params} params, train memory {self.train_memory_bytes / 1e6:.3f} MB, "
            f"upload {self.upload_bytes / 1e3:.2f} kB"
        )


@functools.lru_cache(maxsize=64)
def _model_facts(model_spec: ModelSpec) -> tuple[tuple[tuple[int, ...], ...], int, int]:
    """(shapes of float tensors of the state, Conv/Linear weight count, activation elements per sample)."""
    model = build_model(model_spec)
    shapes = tuple(tuple(t.shape) for t in model.state_dict().values() if t.is_floating_point())
    prunable = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
    )
    gm = fx.symbolic_trace(model)
    gm.eval()
    batch = 2  # batch statistics need more than one value per channel
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(batch, *model_spec.input_shape))
    elements = 0
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if node.op.startswith("call_") and meta is not None and hasattr(meta, "shape"):
            elements += math.prod(meta.shape)
    return shapes, prunable, elements // batch


def chain_bytes(chain: str | ChainConfig, shapes: Sequence[tuple[int, ...]]) -> int:
    """Estimated bytes of float tensors of ``shapes`` through ``chain`` (formula in :class:`Estimate`)."""
    cfg = ChainConfig.parse(chain) if isinstance(chain, str) else chain
    ratio: float | None = None
    bits, overhead_per_group, quant_axis = 32, 0, None
    for stage in cfg.stages:
        kind = REGISTRY[stage.codec_id].kind
        if kind == CodecKind.SPARSIFY:
            assert isinstance(stage, TopKConfig)
            ratio = stage.ratio
        elif kind == CodecKind.VALUE:
            if isinstance(stage, QuantConfig):
                bits, overhead_per_group, quant_axis = stage.bits, 8, stage.axis
            elif stage.codec_id in ("fp16", "bf16"):
                bits = 16
            elif stage.codec_id == "sign":
                bits, overhead_per_group = 1, 4
    total = 0
    for shape in shapes:
        n = math.prod(shape)
        k = min(n, max(1, math.ceil(ratio * n))) if ratio is not None and n else n
        groups = 1
        if quant_axis is not None and ratio is None and len(shape) > 0:
            groups = shape[quant_axis % len(shape)]
        index = 0
        if ratio is not None and k:
            index = min(math.ceil(n / 8), k * max(1, math.ceil(math.log2(n / k + 1) / 7)))
        total += math.ceil(k * bits / 8) + overhead_per_group * groups + index + 32
    return total


def estimate(model_spec: ModelSpec, profile: DeviceProfile) -> Estimate:
    """Training memory and bytes per round of ``profile`` on ``model_spec`` (formulas in :class:`Estimate`)."""
    sub_spec = model_spec.at_width(profile.width * model_spec.width)
    shapes, prunable, per_sample = _model_facts(sub_spec)
    params = sum(math.prod(s) for s in shapes)
    reparam = 0
    if profile.prune != "none":
        reparam += 5 * prunable
    if profile.weight_bits != OFF:
        reparam += 4 * prunable
    return Estimate(
        width=profile.width,
        params=params,
        prunable=prunable,
        activations_per_sample=per_sample,
        batch_size=profile.batch_size,
        weights_bytes=4 * params,
        grads_bytes=4 * params,
        momentum_bytes=4 * params,
        activation_bytes=4 * per_sample * profile.batch_size,
        reparam_bytes=reparam,
        upload_bytes=chain_bytes(profile.uplink, shapes),
        download_bytes=chain_bytes(profile.downlink, shapes),
    )


WIDTH_LADDER: tuple[float, ...] = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125)


@dataclass(frozen=True)
class CompressionLevel:
    """One rung of the compression ladder :func:`pick_profile` climbs (lightest first)."""

    name: str
    sparsity: float
    prune: str
    weight_bits: int
    uplink: str
    downlink: str


COMPRESSION_LADDER: tuple[CompressionLevel, ...] = (
    CompressionLevel("fp32", 0.0, "none", OFF, "raw", "raw"),
    CompressionLevel("fp16", 0.0, "none", OFF, "fp16|zlib", "fp16|zlib"),
    CompressionLevel("int8", 0.0, "none", 8, "int8|zlib", "int8|zlib"),
    CompressionLevel("top25-int8", 0.25, "unstructured", 8, "topk:0.25|int8|zlib", "int8|zlib"),
    CompressionLevel("top10-q4", 0.5, "unstructured", 4, "topk:0.1|q4|zlib", "int8|zlib"),
    CompressionLevel("top5-q2", 0.5, "unstructured", 4, "topk:0.05|q2|zlib", "int8|zlib"),
)


def pick_profile(
    budget: ProfileBudget,
    model_spec: ModelSpec,
    *,
    widths: Sequence[float] = WIDTH_LADDER,
    levels: Sequence[CompressionLevel] = COMPRESSION_LADDER,
    local_epochs: int = 2,
    batch_size: int = 32,
) -> tuple[DeviceProfile, Estimate]:
    """The largest width, then the lightest compression, whose estimate fits ``budget``.

    Returns the profile (named ``budget-w<width>-<level>``) and its estimate for
    logging. Raises :class:`ConfigError` naming the budget and the figures of
    the smallest candidate (smallest width, heaviest compression) when nothing fits.
    """
    if not widths or not levels:
        raise ConfigError("budget.candidates", (tuple(widths), len(levels)), "at least one width and one level")
    for width in sorted(widths, reverse=True):
        for level in levels:
            profile = DeviceProfile(
                f"budget-w{width:g}-{level.name}",
                width,
                level.sparsity,
                level.prune,
                level.weight_bits,
                level.uplink,
                level.downlink,
                local_epochs,
                batch_size,
            )
            est = estimate(model_spec, profile)
            if est.fits(budget):
                return profile, est
    smallest = DeviceProfile(
        "smallest",
        min(widths),
        levels[-1].sparsity,
        levels[-1].prune,
        levels[-1].weight_bits,
        levels[-1].uplink,
        levels[-1].downlink,
        local_epochs,
        batch_size,
    )
    est = estimate(model_spec, smallest)
    raise ConfigError(
        "budget",
        f"memory_mb={budget.memory_mb:g}, upload_kb={budget.upload_kb:g}",
        f"a budget the smallest candidate fits (width {smallest.width:g}, uplink {smallest.uplink!r}, "
        f"model {model_spec.name}: memory {est.train_memory_bytes / 1e6:.3f} MB, "
        f"upload {est.upload_bytes / 1e3:.2f} kB)",
    )
