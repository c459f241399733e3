"""Device profiles: what a client of a kind trains and sends, and what it costs.

Public API::

    DeviceProfile(name, width, sparsity, prune, weight_bits, uplink, downlink, local_epochs, batch_size, device)
    PROFILES: dict[str, DeviceProfile]; register_profile(p); get_profile(name)
    DEFAULT_MIX = "phone:0.4,laptop:0.6"
    parse_mix(text) -> dict[str, float]                  # validated fractions
    assign_profiles(mix, num_clients, seed) -> list[str] # largest remainder, then seeded shuffle
    estimate(model_spec, profile) -> Estimate            # memory, bytes and MACs per client-round
    chain_bytes(chain, shapes) -> int

Budgets and the planner that turns one into a profile are in
:mod:`fedshrink.devices.budget`; the device model a profile names
(``device``) in :mod:`fedshrink.devices.model`.

Shipped profiles (widths are the fragment width of the width-1 global model):

========  =====  ========  ============  ====  =====================  ==========  ======  =====  ======
name      width  sparsity  prune         bits  uplink                 downlink    epochs  batch  device
========  =====  ========  ============  ====  =====================  ==========  ======  =====  ======
iot       0.25   0.5       unstructured  4     topk:0.1|q4|zstd       int8|zstd   2       16     iot
phone     0.5    0.3       unstructured  8     topk:0.1|q4|zstd       int8|zstd   2       16     phone
edge      0.75   0.25      structured    8     topk:0.05|int8|zstd    int8|zstd   2       16     edge
laptop    1.0    0.0       none          32    topk:0.05|int8|zstd    raw         2       16     laptop
========  =====  ========  ============  ====  =====================  ==========  ======  =====  ======

Rationale: a microcontroller-class ``iot`` device has about a megabyte of
SRAM, so it trains a quarter-width fragment, half of it pruned, with 4-bit
weights, and sends 10 % of its update at 4 bits; a ``phone`` trains half width
and sends 10 % of its update at 4 bits; ``edge`` boxes (NPUs) prefer dense
kernels, so they prune whole channels; a ``laptop`` trains the full fp32
model. Every uplink is sparsified with error feedback (the residual stays on
the device): even a laptop's link is the scarce resource when there are many
of them. Epochs and batch size equal the run's defaults, so a mixed run and
a full-width FedAvg run do the same local training (the fragments benchmark
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

from fedshrink.compression.chain import Chain, ChainConfig
from fedshrink.compression.codecs import REGISTRY, QuantConfig, TopKConfig
from fedshrink.compression.codecs import Kind as CodecKind
from fedshrink.devices.cost import RoundCost, round_cost
from fedshrink.devices.memory import TrainingMemory, step_memory, training_memory
from fedshrink.devices.model import DEVICE_MODELS, DeviceModel
from fedshrink.errors import ConfigError
from fedshrink.fakequant import OFF, check_bits
from fedshrink.models.registry import ModelSpec, build_model
from fedshrink.registry import Registry
from fedshrink.resources.flops import macs_per_sample, training_flops

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
    device: str = "laptop"  # the device model whose medians this profile's clients draw around

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
        if self.device not in DEVICE_MODELS:
            raise ConfigError(f"profile.{self.name}.device", self.device,
                              DEVICE_MODELS.allowed())
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


PROFILES: Registry[DeviceProfile] = Registry("profile", setting="profile")


def register_profile(profile: DeviceProfile) -> DeviceProfile:
    return PROFILES.add(profile.name, profile)


def get_profile(name: str) -> DeviceProfile:
    return PROFILES.lookup(name)


register_profile(DeviceProfile("iot", 0.25, 0.5, "unstructured", 4, "topk:0.1|q4|zstd", "int8|zstd", 2, 16, "iot"))
register_profile(DeviceProfile("phone", 0.5, 0.3, "unstructured", 8, "topk:0.1|q4|zstd", "int8|zstd", 2, 16,
                               "phone"))
register_profile(DeviceProfile("edge", 0.75, 0.25, "structured", 8, "topk:0.05|int8|zstd", "int8|zstd", 2, 16,
                               "edge"))
register_profile(DeviceProfile("laptop", 1.0, 0.0, "none", OFF, "topk:0.05|int8|zstd", "raw", 2, 16, "laptop"))


# ---- profile mixes -----------------------------------------------------------------------------


def parse_shares(text: str, known: Mapping[str, object], *, key: str, what: str) -> dict[str, float]:
    """``"a:0.4,b:0.6"`` -> ``{"a": 0.4, "b": 0.6}`` over the names in ``known``.

    Each name once; shares > 0 summing to 1 within 1e-6. Each fault is a
    one-line :class:`ConfigError` under ``key`` saying which (``what`` names the kind: "profiles").
    """
    names = ", ".join(sorted(known))
    form = f"name:share pairs joined by ',' such as 'phone:0.4,laptop:0.6' (known {what}: {names})"
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(key, text, form)
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, frac = part.partition(":")
        name = name.strip()
        if not sep:
            raise ConfigError(key, text, f"{form}; {part.strip()!r} has no ':share'")
        if name not in known:
            raise ConfigError(key, text, f"known {what} only ({names}); {name!r} is not one")
        if name in mix:
            raise ConfigError(key, text, f"each of the {what} once; {name!r} appears twice")
        try:
            value = float(frac)
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(key, text, f"shares that are numbers > 0; {name!r} has {frac.strip()!r}")
        mix[name] = value
    total = math.fsum(mix.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(key, text, f"shares summing to 1 (they sum to {total:g})")
    return mix


def parse_mix(text: str) -> dict[str, float]:
    """``"iot:0.4,phone:0.4,laptop:0.2"`` -> ``{"iot": 0.4, ...}`` over the registered profiles."""
    return parse_shares(text, PROFILES, key="profile-mix", what="profiles")


def assign_profiles(mix: str | Mapping[str, float], num_clients: int, seed: int) -> list[str]:
    """Profile name of each client ``0..num_clients-1``: deterministic for ``seed``.

    Counts follow the fractions by the largest-remainder method (floors first,
    then one more to the largest remainders, ties in mix order), then the list
    is shuffled with ``numpy.random.default_rng(seed)``.
    """
    fractions = parse_mix(mix) if isinstance(mix, str) else parse_mix(",".join(f"{k}:{v!r}" for k, v in mix.items()))
    names = list(fractions)
    return [names[i] for i in seeded_shares([fractions[n] for n in names], num_clients, seed)]


def seeded_shares(shares: Sequence[float], num_clients: int, seed: int) -> list[int]:
    """Index of the share each client ``0..num_clients-1`` gets: largest remainder, then a seeded shuffle.

    Counts follow ``shares`` (summing to 1) by the largest-remainder method
    (floors first, then one more to the largest remainders, ties in order);
    the list is then shuffled with ``numpy.random.default_rng(seed)``.
    """
    if not _is_int(num_clients) or num_clients < 0:
        raise ConfigError("num-clients", num_clients, "an integer >= 0")
    quotas = np.asarray([s * num_clients for s in shares], dtype=np.float64)
    counts = np.floor(quotas).astype(np.int64)
    short = num_clients - int(counts.sum())
    order = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:short]:
        counts[i] += 1
    plan = [i for i, c in enumerate(counts) for _ in range(int(c))]
    perm = np.random.default_rng(seed).permutation(len(plan))
    return [plan[i] for i in perm]


# ---- estimates ----------------------------------------------------------------------------------


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
    if cfg.flat:  # one vector (this estimate takes every tensor as floating-point)
        shapes = [(sum(math.prod(shape) for shape in shapes),)]
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



@functools.lru_cache(maxsize=128)
def state_shapes(model_spec: ModelSpec) -> tuple[tuple[int, ...], ...]:
    """Shapes of the floating-point tensors of ``build_model(model_spec)``'s state (what the chains carry)."""
    model = build_model(model_spec)
    return tuple(tuple(t.shape) for t in model.state_dict().values() if t.is_floating_point())


@functools.lru_cache(maxsize=128)
def _macs(model_spec: ModelSpec) -> int:
    return macs_per_sample(build_model(model_spec), model_spec.input_shape)


@dataclass(frozen=True)
class Estimate:
    """Modelled figures of one profile on one model, for one client-round (sizes in bytes).

    ``memory`` is :class:`~fedshrink.devices.memory.TrainingMemory` (its
    formulas there). Bytes per round (uplink / downlink, per chain, summed
    over the float tensors of ``n`` entries)::

        k      = ceil(ratio * n) with a top-k / rand-k stage, else n
        values = ceil(k * bits / 8)         bits: quant bits, 16 for fp16/bf16, 1 for sign, 32 raw
                 + 8 per quant scale group  (+4 for sign's scale)
        index  = min(ceil(n / 8), k * ceil(log2(n / k + 1) / 7))  with a sparsifier, else 0
                                            (bitmap or delta-varint, whichever is smaller)
        total  = values + index + 32        (32: per-tensor header, name and shape)

    An entropy stage (zstd, zlib) is not credited, so byte figures are upper-ish
    bounds. ``macs_per_sample`` is the forward pass of the sub-model
    (:func:`fedshrink.resources.flops.macs_per_sample`): dense, so pruned
    weights cost as much as kept ones. Training FLOPs of ``s`` samples are
    ``3 x 2 x macs_per_sample x s`` (:func:`train_flops`).
    """

    profile: str
    width: float
    params: int
    prunable: int
    batch_size: int
    macs_per_sample: int
    memory: TrainingMemory
    upload_bytes: int
    download_bytes: int

    @property
    def train_memory_bytes(self) -> int:
        """The round's modelled peak (training step, reference copy, residual, codec buffers)."""
        return self.memory.round_peak

    def train_flops(self, samples: int) -> int:
        """FLOPs of training on ``samples`` examples (examples x epochs)."""
        return training_flops(self.macs_per_sample, samples)

    def cost(self, device: DeviceModel, samples: int) -> RoundCost:
        """This round's modelled time, energy and memory on ``device`` (:mod:`fedshrink.devices.cost`)."""
        return round_cost(device, train_flops=self.train_flops(samples), download_bytes=self.download_bytes,
                          upload_bytes=self.upload_bytes, memory_bytes=self.train_memory_bytes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["memory"] = self.memory.to_dict()
        return out

    def summary(self) -> str:
        return (f"{self.profile} (width {self.width:g}): {self.params} params, "
                f"memory {self.train_memory_bytes / 1e6:.3f} MB, upload {self.upload_bytes / 1e3:.2f} kB, "
                f"download {self.download_bytes / 1e3:.2f} kB, {self.macs_per_sample} MACs/sample")


def estimate(model_spec: ModelSpec, profile: DeviceProfile, *, momentum: bool = True) -> Estimate:
    """Memory, bytes and MACs of ``profile`` on ``model_spec`` (formulas in :class:`Estimate`).

    The client trains ``model_spec`` at ``profile.width x model_spec.width``;
    ``momentum``: whether SGD keeps a momentum buffer (the run's ``momentum`` > 0).
    """
    sub_spec = model_spec.at_width(profile.width * model_spec.width)
    shapes = state_shapes(sub_spec)
    step = step_memory(sub_spec, profile.batch_size)
    up, down = chain_bytes(profile.uplink, shapes), chain_bytes(profile.downlink, shapes)
    memory = training_memory(step, weight_bits=profile.weight_bits, pruned=profile.prune != "none",
                             momentum=momentum, lossy_uplink=Chain.parse(profile.uplink).lossy,
                             download_bytes=down, upload_bytes=up)
    return Estimate(profile=profile.name, width=profile.width, params=step.params, prunable=step.prunable,
                    batch_size=profile.batch_size, macs_per_sample=_macs(sub_spec), memory=memory,
                    upload_bytes=up, download_bytes=down)
