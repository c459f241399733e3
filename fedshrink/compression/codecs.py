"""The codecs: small classes with a frozen config dataclass, registered by id.

Three kinds of codec make up a chain (see :mod:`fedshrink.compression.chain`):

* **sparsifiers** (``topk``, ``randk``) pick which elements are sent; they must
  come first. Their positions travel as delta-varint or bitmap, whichever is
  smaller (see :mod:`fedshrink.compression.bitops`).
* **value codecs** (``fp16``, ``bf16``, ``quant``, ``sign``, ``bitmap``) turn the
  (kept) float values into payload bytes; at most one per chain.
* **entropy stages** (``zlib``, ``zstd``) compress the final payload; they must come last.

Every codec documents its error bound and its wire size (payload bytes, with
``n`` the number of values it encodes, ``G`` the number of channels). The maths
lives in the pure functions at the top of this module; the classes only move
parameters between configs, numpy and :class:`~fedshrink.v1.compression_pb2.CodecStage`.

Decoders never trust the header: :meth:`ValueCodec.check_stage` validates every
parameter (bits, scale count, finiteness, stray fields) before anything is
allocated, and raises :class:`ValueError` with the fault, which the wire layer
turns into :class:`~fedshrink.errors.DecodeError` naming the tensor.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

try:  # the zstd entropy stage needs it; every other codec works without
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None  # type: ignore[assignment]  # the zstd codec refuses to run without the package

from fedshrink.compression import bitops
from fedshrink.errors import ConfigError
from fedshrink.registry import Registry
from fedshrink.v1 import compression_pb2 as pb

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
BF16_MAX = float(torch.finfo(torch.bfloat16).max)
F32_MAX = float(np.finfo(np.float32).max)


class Kind(enum.Enum):
    SPARSIFY = "sparsify"
    VALUE = "value"
    ENTROPY = "entropy"


# --------------------------------------------------------------------------- maths


def quant_params(x: F32, bits: int) -> tuple[F32, F32]:
    """Per-row ``(lo, scale)`` of asymmetric min/max quantization of ``x`` (G, N).

    ``scale = (max - min) / (2**bits - 1)``, at least the smallest normal float32
    when ``max > min``; rows of one value get scale 0.
    Raises :class:`ValueError` when the range does not fit float32.
    """
    levels = (1 << bits) - 1
    if x.shape[1] == 0:
        zeros = np.zeros(x.shape[0], dtype=np.float32)
        return zeros, zeros.copy()
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    scale64 = (hi.astype(np.float64) - lo.astype(np.float64)) / levels
    if not np.all(np.abs(lo.astype(np.float64)) + scale64 * levels <= F32_MAX):
        raise ValueError("value range exceeds float32")
    # a range of subnormals would give a scale that is 0 or whose inverse overflows in float32:
    # use the smallest normal float32 instead (codes still fit, the error stays below scale / 2)
    tiny = float(np.finfo(np.float32).tiny)
    scale64 = np.where(scale64 > 0, np.maximum(scale64, tiny), 0.0)
    return lo.astype(np.float32), scale64.astype(np.float32)


def quantize(
    x: F32, lo: F32, scale: F32, bits: int, noise: F32 | None, *, own_params: bool = False
) -> npt.NDArray[np.uint8]:
    """Codes ``q = round((x - lo) / scale)`` in ``0..2**bits-1`` for ``x`` (G, N).

    With ``noise`` (uniform in [0, 1), same shape as ``x``) the rounding is
    stochastic, ``q = floor(t + u)``, so that ``E[q] = t``: unbiased (QSGD-style).

    ``own_params``: ``(lo, scale)`` are :func:`quant_params` of this very ``x``, so
    deterministic rounding needs no clip (the same codes, one pass fewer): ``x >= lo``
    makes ``t = (x - lo) * (1 / scale) >= 0``, and ``t`` exceeds ``2**bits - 1`` by a
    few float32 roundings of relative size ``2**-24`` at most, far below the 0.5 that
    ``rint`` would need to go past it (a scale raised to the smallest normal only
    lowers ``t``; a zero scale gives ``t = 0``).
    """
    levels = (1 << bits) - 1
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)  # (G,)
    t = np.subtract(x, lo[:, None], dtype=np.float32)
    t *= inv[:, None]
    if noise is None:
        np.rint(t, out=t)
        if own_params:
            return t.astype(np.uint8)
    else:
        t += noise
        np.floor(t, out=t)
    np.clip(t, 0, levels, out=t)
    return t.astype(np.uint8)


def dequantize(q: npt.NDArray[np.uint8], lo: F32, scale: F32) -> F32:
    """``x' = lo + q * scale`` for codes ``q`` (G, N)."""
    out = q.astype(np.float32)
    out *= scale[:, None]
    out += lo[:, None]
    return out


def sign_scale(x: F32) -> float:
    """The scale ``s = mean(|x|)`` of a sign quantizer (L2-optimal for fixed signs)."""
    return float(np.abs(x).mean(dtype=np.float64)) if x.size else 0.0


def topk_count(n: int, ratio: float) -> int:
    """Elements kept by a sparsifier: ``min(n, max(1, ceil(ratio * n)))`` (0 if n == 0)."""
    if n == 0:
        return 0
    return min(n, max(1, math.ceil(ratio * n)))


def topk_indices(x: F32, k: int) -> I64:
    """Sorted positions of the ``k`` largest ``|x|`` (ties go to the lowest positions).

    Exact selection in O(n): a strided sample of ``|x|`` gives a threshold a little
    below the k-th largest magnitude; the elements above it (``>= k`` of them, else
    every element is a candidate) are partitioned to find the exact k-th largest
    value ``v``; the result is every candidate ``> v`` plus the first ones ``== v``.
    Candidates come from ``flatnonzero``, so the positions are sorted without a sort.
    """
    return topk_select(x, k)[0]


def topk_select(x: F32, k: int) -> tuple[I64, np.ndarray]:
    """:func:`topk_indices` and the values there, ``(idx, x.reshape(-1)[idx])``.

    Magnitudes of floats are compared as the bit patterns of ``|x|`` read as integers of
    the same width: non-negative, so they order like the floats (numpy partitions
    integers about twice as fast). The values come from the candidates' values
    (gathered once, a small array) rather than from ``x`` again.
    """
    flat = x.reshape(-1)
    n = flat.size
    if k >= n:
        return np.arange(n, dtype=np.int64), flat.copy()
    if k <= 0:
        return np.zeros(0, dtype=np.int64), flat[:0].copy()
    cand = _topk_candidates(flat, k)
    cvals = flat if cand is None else np.take(flat, cand)  # (c,); take: faster than flat[cand]
    cmag = _magnitude_keys(cvals)
    kth = np.partition(cmag, cmag.size - k)[cmag.size - k]
    keep = cmag > kth
    missing = k - int(np.count_nonzero(keep))
    if missing:  # ties at the k-th value: the lowest positions
        ties = np.flatnonzero(cmag == kth)[:missing]
        keep[ties] = True
    pos = np.flatnonzero(keep)
    values = np.take(cvals, pos)
    return (pos if cand is None else np.take(cand, pos)), values


def _magnitude_keys(x: np.ndarray) -> np.ndarray:
    """``|x|`` as keys that order like the magnitudes: for floats, the bit patterns of ``|x|`` as
    signed integers of the same width (non-negative, so in the float order, NaN above infinity)."""
    mag: np.ndarray = np.abs(x)
    if mag.dtype.kind == "f":
        return mag.view(f"i{mag.dtype.itemsize}")
    return mag


_SAMPLE = 1 << 14
#: numpy's nonzero on bools scans with memchr up to 10 % density (its cost grows with the density,
#: ~3x the branchless loop's at 6-10 %) and runs a branchless loop above: candidate sets denser
#: than 3 % are widened to 12 %, where extracting them is cheapest
_MEMCHR_DENSITY, _BRANCHLESS_DENSITY = 0.03, 0.12


def _topk_candidates(x: np.ndarray, k: int) -> I64 | None:
    """Sorted positions whose magnitude is at least a sampled threshold (>= k of them), or None for all."""
    n = x.size
    if n < 8 * _SAMPLE:
        return None
    sample = _magnitude_keys(x[:: n // _SAMPLE])  # (m,)
    m = sample.size
    # expected k/n * m sample hits; aim above it by 3 standard deviations plus 1 % of m
    want = k / n * m
    above = min(m, math.ceil(want + 3.0 * math.sqrt(want + 1.0) + 0.01 * m))
    if above > _MEMCHR_DENSITY * m:
        above = max(above, math.ceil(_BRANCHLESS_DENSITY * m))
    if above >= m:
        return None
    threshold = np.partition(sample, m - above)[m - above]
    cand = np.flatnonzero(_magnitude_keys(x) >= threshold)
    return cand if cand.size >= k else None


def wire_ratio(ratio: float) -> float:
    """A keep fraction as the wire's float32 field carries it, in its shortest decimal form."""
    return float(str(np.float32(ratio)))


def randk_indices(n: int, k: int, rng: np.random.Generator) -> I64:
    """``k`` sorted positions drawn uniformly without replacement."""
    idx = rng.choice(n, size=k, replace=False).astype(np.int64)
    idx.sort()
    return idx


# --------------------------------------------------------------------------- configs


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _parse_opt_int(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "") else int(text)


_DESCRIBE: dict[Callable[[str], Any], str] = {
    int: "an integer",
    float: "a number",
    _parse_bool: "true or false",
    _parse_opt_int: "none or an integer",
}


@dataclass(frozen=True)
class CodecConfig:
    """Base of every codec config: a frozen dataclass with a string and JSON form.

    String form: ``id`` or ``id:pos,key=value,...`` (``pos`` is the value of the
    config's positional field, if it has one); defaults are omitted.
    """

    codec_id: ClassVar[str] = ""
    positional: ClassVar[str | None] = None
    parsers: ClassVar[Mapping[str, Callable[[str], Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {"codec": self.codec_id, **dataclasses.asdict(self)}

    def to_string(self) -> str:
        args: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == self.positional:
                args.insert(0, _fmt(value))
            elif value != f.default:
                args.append(f"{f.name}={_fmt(value)}")
        return self.codec_id + (":" + ",".join(args) if args else "")

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> CodecConfig:
        """Build from string arguments (``key -> text``), validating names and values."""
        kwargs: dict[str, Any] = {}
        for key, text in args.items():
            parse = cls.parsers.get(key)
            if parse is None:
                allowed = ", ".join(cls.parsers) or "no arguments"
                raise ConfigError(f"{cls.codec_id}.{key}", text, allowed)
            try:
                kwargs[key] = parse(text)
            except ValueError:
                raise ConfigError(
                    f"{cls.codec_id}.{key}", text, _DESCRIBE.get(parse, "a valid value")
                ) from None
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodecConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - names - {"codec"}
        if extra:
            key = sorted(extra)[0]
            raise ConfigError(
                f"{cls.codec_id}.{key}", data[key], "one of " + (", ".join(sorted(names)) or "no keys")
            )
        return cls(**{k: v for k, v in data.items() if k != "codec"})


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class Float16Config(CodecConfig):
    codec_id: ClassVar[str] = "fp16"


@dataclass(frozen=True)
class BFloat16Config(CodecConfig):
    codec_id: ClassVar[str] = "bf16"


@dataclass(frozen=True)
class QuantConfig(CodecConfig):
    """Uniform ``bits``-bit quantization, per tensor (``axis=None``) or per channel."""

    codec_id: ClassVar[str] = "quant"
    positional: ClassVar[str | None] = "bits"
    parsers: ClassVar[Mapping[str, Callable[[str], Any]]] = {
        "bits": int,
        "axis": _parse_opt_int,
        "stochastic": _parse_bool,
    }
    bits: int = 8
    axis: int | None = None
    stochastic: bool = False

    def __post_init__(self) -> None:
        _check(_is_int(self.bits) and 1 <= self.bits <= 8, "quant.bits", self.bits, "an integer in 1..8")
        _check(
            self.axis is None or (_is_int(self.axis) and -8 <= self.axis < 8),
            "quant.axis",
            self.axis,
            "none or an integer in -8..7",
        )
        _check(isinstance(self.stochastic, bool), "quant.stochastic", self.stochastic, "true or false")


@dataclass(frozen=True)
class SignConfig(CodecConfig):
    codec_id: ClassVar[str] = "sign"


@dataclass(frozen=True)
class BitmapConfig(CodecConfig):
    codec_id: ClassVar[str] = "bitmap"


@dataclass(frozen=True)
class TopKConfig(CodecConfig):
    """Keep the ``ratio`` fraction of elements with the largest magnitude."""

    codec_id: ClassVar[str] = "topk"
    positional: ClassVar[str | None] = "ratio"
    parsers: ClassVar[Mapping[str, Callable[[str], Any]]] = {"ratio": float}
    ratio: float = 0.01

    def __post_init__(self) -> None:
        _check(
            _is_num(self.ratio) and 0.0 < self.ratio <= 1.0,
            f"{self.codec_id}.ratio",
            self.ratio,
            "a number in (0, 1]",
        )
        object.__setattr__(self, "ratio", float(self.ratio))


@dataclass(frozen=True)
class RandKConfig(TopKConfig):
    """Keep a uniformly random ``ratio`` fraction of elements (unscaled)."""

    codec_id: ClassVar[str] = "randk"


@dataclass(frozen=True)
class ZstdConfig(CodecConfig):
    """Zstandard at ``level`` 1..22 (higher: slower to encode; decode speed barely changes).

    The default, 1, is zstd's fastest standard level; on quantized updates higher
    levels up to 9 compressed no better (simulations/results/codecs.md).
    """

    codec_id: ClassVar[str] = "zstd"
    positional: ClassVar[str | None] = "level"
    parsers: ClassVar[Mapping[str, Callable[[str], Any]]] = {"level": int}
    level: int = 1

    def __post_init__(self) -> None:
        _check(_is_int(self.level) and 1 <= self.level <= 22, "zstd.level", self.level, "an integer in 1..22")
        _check(zstandard is not None, "zstd", self.level, "only with the zstandard package installed")


@dataclass(frozen=True)
class ZlibConfig(CodecConfig):
    codec_id: ClassVar[str] = "zlib"
    positional: ClassVar[str | None] = "level"
    parsers: ClassVar[Mapping[str, Callable[[str], Any]]] = {"level": int}
    level: int = 6

    def __post_init__(self) -> None:
        _check(_is_int(self.level) and 0 <= self.level <= 9, "zlib.level", self.level, "an integer in 0..9")


# --------------------------------------------------------------------------- codecs


class Codec(ABC):
    """A codec instance wraps its validated config."""

    codec_id: ClassVar[str]
    version: ClassVar[int] = 1
    kind: ClassVar[Kind]
    config_cls: ClassVar[type[CodecConfig]]
    #: proto fields a stage of this codec may set (besides codec and version)
    stage_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: CodecConfig | None = None) -> None:
        config = self.config_cls() if config is None else config
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"{self.codec_id}.config", type(config).__name__, self.config_cls.__name__)
        self.config = config

    def new_stage(self) -> pb.CodecStage:
        return pb.CodecStage(codec=self.codec_id, version=self.version)

    @classmethod
    def config_from_stage(cls, stage: pb.CodecStage) -> CodecConfig:
        """The config a wire stage was encoded with (ConfigError if its parameters are invalid)."""
        return cls.config_cls()

    @classmethod
    def check_fields(cls, stage: pb.CodecStage) -> None:
        for field, _ in stage.ListFields():
            if field.name not in cls.stage_fields and field.name not in ("codec", "version"):
                raise ValueError(f"{cls.codec_id} stage sets unexpected field {field.name!r}")


class Sparsifier(Codec):
    kind = Kind.SPARSIFY
    stage_fields = frozenset({"ratio"})
    #: its selection of a non-empty float32 tensor always holds the element of largest magnitude,
    #: NaN counted above infinity: the chain then checks finiteness on the kept values alone
    keeps_largest: ClassVar[bool] = False

    @abstractmethod
    def select(self, x: F32, rng: np.random.Generator) -> I64:
        """Sorted unique positions of the elements of ``x`` (flat) to send."""

    def select_values(self, x: F32, rng: np.random.Generator) -> tuple[I64, F32]:
        """:meth:`select` and the values there, ``(idx, x[idx])`` (a sparsifier may find them faster)."""
        idx = self.select(x, rng)
        return idx, np.take(x, idx)

    def stage(self) -> pb.CodecStage:
        st = self.new_stage()
        st.ratio = self.config.ratio  # type: ignore[attr-defined]  # every sparsifier config has a ratio
        return st

    @classmethod
    def config_from_stage(cls, stage: pb.CodecStage) -> CodecConfig:
        return cls.config_cls(ratio=wire_ratio(stage.ratio))  # type: ignore[call-arg]  # sparsifier configs take it


class ValueCodec(Codec):
    """Encodes float values grouped as (G, N): G channels (G = 1 per tensor)."""

    kind = Kind.VALUE
    #: may be applied to bool tensors (masks)
    accepts_bool: ClassVar[bool] = False

    def group_axis(self, ndim: int) -> int | None:
        """The tensor axis to group by for a dense tensor of ``ndim`` dims, or None."""
        return None

    @abstractmethod
    def encode(
        self, x: F32, rng: np.random.Generator, axis: int | None = None
    ) -> tuple[bytes, pb.CodecStage]:
        """Payload bytes and stage parameters for ``x`` (G, N), grouped along tensor ``axis``
        (``None``: one group)."""

    @abstractmethod
    def check_stage(self, stage: pb.CodecStage, groups: int, per_group: int) -> int:
        """Validate ``stage`` for G x N values; return the exact payload length."""

    @abstractmethod
    def decode(self, data: memoryview, stage: pb.CodecStage, groups: int, per_group: int) -> F32:
        """Values (G, N) from a payload already checked by :meth:`check_stage`."""


class EntropyCodec(Codec):
    kind = Kind.ENTROPY

    @abstractmethod
    def compress(self, parts: Sequence[bytes | memoryview]) -> tuple[bytes, pb.CodecStage]:
        """The payload ``b"".join(parts)`` compressed (parts: the index and value sections)."""

    @abstractmethod
    def decompress(self, data: bytes | memoryview, stage: pb.CodecStage, expected: int) -> bytes:
        """Exactly ``expected`` bytes, never more in memory; ValueError otherwise."""


REGISTRY: Registry[type[Codec]] = Registry("codec id", setting="codec")
#: config string aliases: name -> (codec id, preset arguments)
ALIASES: dict[str, tuple[str, dict[str, str]]] = {
    "int8": ("quant", {"bits": "8"}),
    "int4": ("quant", {"bits": "4"}),
    **{f"q{k}": ("quant", {"bits": str(k)}) for k in range(1, 9)},
    "float16": ("fp16", {}),
    "half": ("fp16", {}),
    "bfloat16": ("bf16", {}),
}


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: add a codec to :data:`REGISTRY` under its id."""
    assert cls.config_cls.codec_id == cls.codec_id
    return REGISTRY.add(cls.codec_id, cls)


def lookup(codec_id: str, version: int) -> type[Codec]:
    """The codec class for a wire id and version; ValueError if unknown."""
    cls = REGISTRY.get(codec_id)
    if cls is None:
        raise ValueError(f"unknown codec {codec_id[:40]!r}")
    if version != cls.version:
        raise ValueError(f"unsupported {codec_id} version {version} (known: {cls.version})")
    return cls


def _check_finite_scales(values: Any, what: str) -> F32:
    arr = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"non-finite {what}")
    return arr


@register
class TopK(Sparsifier):
    """Top-k by magnitude. Error: the dropped elements (use error feedback).

    Wire: index section ``min(varint bytes, ceil(n/8))`` + the value codec's bytes for k values.
    """

    codec_id = "topk"
    config_cls = TopKConfig
    keeps_largest = True  # magnitudes compare as bit patterns: NaN above infinity above the rest

    def select(self, x: F32, rng: np.random.Generator) -> I64:
        assert isinstance(self.config, TopKConfig)
        return topk_indices(x, topk_count(x.size, self.config.ratio))

    def select_values(self, x: F32, rng: np.random.Generator) -> tuple[I64, F32]:
        assert isinstance(self.config, TopKConfig)
        return topk_select(x, topk_count(x.size, self.config.ratio))


@register
class RandK(Sparsifier):
    """Random-k (uniform, without replacement, unscaled). Same wire size as top-k."""

    codec_id = "randk"
    config_cls = RandKConfig

    def select(self, x: F32, rng: np.random.Generator) -> I64:
        assert isinstance(self.config, RandKConfig)
        return randk_indices(x.size, topk_count(x.size, self.config.ratio), rng)


@register
class Float16(ValueCodec):
    """IEEE half. Error: relative <= 2**-11 for |x| in [6.1e-5, 65504]; absolute <= 2**-25
    below; values beyond +-65504 saturate. Wire: 2 n bytes."""

    codec_id = "fp16"
    config_cls = Float16Config

    def encode(
        self, x: F32, rng: np.random.Generator, axis: int | None = None
    ) -> tuple[bytes, pb.CodecStage]:
        return np.clip(x, -FP16_MAX, FP16_MAX).astype("<f2").tobytes(), self.new_stage()

    def check_stage(self, stage: pb.CodecStage, groups: int, per_group: int) -> int:
        self.check_fields(stage)
        return 2 * groups * per_group

    def decode(self, data: memoryview, stage: pb.CodecStage, groups: int, per_group: int) -> F32:
        return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(groups, per_group)


@register
class BFloat16(ValueCodec):
    """bfloat16 (round to nearest even). Error: relative <= 2**-8 (normal range);
    saturates at +-3.39e38. Wire: 2 n bytes."""

    codec_id = "bf16"
    config_cls = BFloat16Config

    def encode(
        self, x: F32, rng: np.random.Generator, axis: int | None = None
    ) -> tuple[bytes, pb.CodecStage]:
        t = torch.from_numpy(np.ascontiguousarray(x)).clamp(-BF16_MAX, BF16_MAX).to(torch.bfloat16)
        return t.view(torch.int16).numpy().astype("<i2", copy=False).tobytes(), self.new_stage()

    def check_stage(self, stage: pb.CodecStage, groups: int, per_group: int) -> int:
        self.check_fields(stage)
        return 2 * groups * per_group

    def decode(self, data: memoryview, stage: pb.CodecStage, groups: int, per_group: int) -> F32:
        raw = np.frombuffer(data, dtype="<i2").astype(np.int16)
        out = torch.from_numpy(raw).view(torch.bfloat16).to(torch.float32).numpy()
        return out.reshape(groups, per_group)


@register
class Quant(ValueCodec):
    """Uniform asymmetric k-bit quantization (k in 1..8), per tensor or per channel.

    Per channel (``axis`` set) applies to tensors of 2+ dims whose ``axis`` exists;
    1-D tensors (biases) and scalars are quantized per tensor.

    ``scale = (max - min) / (2**k - 1)`` per group, ``x' = min + q * scale``.
    Error: deterministic rounding ``|x - x'| <= scale / 2`` (plus float32 rounding,
    a few ulp of ``max |x|``); stochastic rounding ``|x - x'| < scale`` with
    ``E[x'] = x`` (unbiased). Wire: ``ceil(n k / 8)`` payload bytes + 8 bytes of
    scale and zero point per group in the header.
    """

    codec_id = "quant"
    config_cls = QuantConfig
    stage_fields = frozenset({"bits", "axis", "scales", "zero_points", "stochastic"})

    @property
    def cfg(self) -> QuantConfig:
        assert isinstance(self.config, QuantConfig)
        return self.config

    @classmethod
    def config_from_stage(cls, stage: pb.CodecStage) -> CodecConfig:
        axis = stage.axis if stage.HasField("axis") else None
        return QuantConfig(bits=stage.bits, axis=axis, stochastic=stage.stochastic)

    def group_axis(self, ndim: int) -> int | None:
        axis = self.cfg.axis
        if axis is None or ndim < 2 or not -ndim <= axis < ndim:  # biases and scalars: per tensor
            return None
        return axis % ndim

    def encode(
        self, x: F32, rng: np.random.Generator, axis: int | None = None
    ) -> tuple[bytes, pb.CodecStage]:
        bits = self.cfg.bits
        lo, scale = quant_params(x, bits)
        noise = rng.random(x.shape, dtype=np.float32) if self.cfg.stochastic else None
        q = quantize(x, lo, scale, bits, noise, own_params=True)
        st = self.new_stage()
        st.bits = bits
        if axis is not None:
            st.axis = axis
        st.stochastic = self.cfg.stochastic
        st.scales.extend(scale.tolist())
        st.zero_points.extend(lo.tolist())
        return bitops.pack_bits(q.reshape(-1), bits), st

    def check_stage(self, stage: pb.CodecStage, groups: int, per_group: int) -> int:
        self.check_fields(stage)
        if not 1 <= stage.bits <= 8:
            raise ValueError(f"bits {stage.bits} out of range 1..8")
        if len(stage.scales) != groups or len(stage.zero_points) != groups:
            raise ValueError(
                f"{len(stage.scales)} scales / {len(stage.zero_points)} zero points for {groups} groups"
            )
        scale = _check_finite_scales(stage.scales, "scale")
        lo = _check_finite_scales(stage.zero_points, "zero point")
        levels = (1 << stage.bits) - 1
        if np.any(scale < 0):
            raise ValueError("negative scale")
        if np.any(np.abs(lo.astype(np.float64)) + scale.astype(np.float64) * levels > F32_MAX):
            raise ValueError("scale overflows float32")
        return bitops.packed_nbytes(groups * per_group, stage.bits)

    def decode(self, data: memoryview, stage: pb.CodecStage, groups: int, per_group: int) -> F32:
        q = bitops.unpack_bits(data, groups * per_group, stage.bits).reshape(groups, per_group)
        scale = np.asarray(stage.scales, dtype=np.float32)
        lo = np.asarray(stage.zero_points, dtype=np.float32)
        return dequantize(q, lo, scale)


@register
class Sign(ValueCodec):
    """1-bit sign with one scale: ``x' = s * sign(x)``, ``s = mean |x|`` (0 maps to +s).

    Error: ``|x - x'| = ||x| - s|`` per element (biased; meant for error feedback).
    Wire: ``ceil(n / 8)`` bytes + 4 bytes of scale.
    """

    codec_id = "sign"
    config_cls = SignConfig
    stage_fields = frozenset({"scales"})

    def encode(
        self, x: F32, rng: np.random.Generator, axis: int | None = None
    ) -> tuple[bytes, pb.CodecStage]:
        st = self.new_stage()
        st.scales.append(sign_scale(x))
        return bitops.bitmap_encode(x.reshape(-1) >= 0), st

    def check_stage(self, stage: pb.CodecStage, groups: int, per_group: int) -> int:
        self.check_fields(stage)
        if len(stage.scales) != 1:
            raise ValueError(f"{len(stage.scales)} scales, expected 1")
        scale = _check_finite_scales(stage.scales, "scale")
        if scale[0] < 0:
            raise ValueError("negative scale")
        return bitops.packed_nbytes(groups * per_group, 1)

    def decode(self, data: memoryview, stage: pb.CodecStage, groups: int, per_group: int) -> F32:
        bits = bitops.unpack_bits(data, groups * per_group, 1)
        out = bits.astype(np.float32)
        out *= 2.0
        out -= 1.0
        out *= np.float32(stage.scales[0])
        return out.reshape(groups, per_group)


@register
class Bitmap(ValueCodec):
    """Lossless 0/1 tensors (pruning masks), float or bool.

    When every slice along axis 0 is constant (a structured, channel mask) only
    one bit per channel is sent (``axis = 0``). Wire: ``ceil(C / 8)`` bytes for a
    channel mask, else ``ceil(n / 8)``. Error: none; non-0/1 input is refused.
    """

    codec_id = "bitmap"
    config_cls = BitmapConfig
    stage_fields = frozenset({"axis"})
    accepts_bool = True

    def group_axis(self, ndim: int) -> int | None:
        return 0 if ndim >= 2 else None

    def encode(
        self, x: F32, rng: np.random.Generator, axis: int | None = None
    ) -> tuple[bytes, pb.CodecStage]:
        ones = x == 1.0
        if not np.all(ones | (x == 0.0)):
            raise ValueError("bitmap codec needs a tensor of 0s and 1s")
        st = self.new_stage()
        if axis is not None and x.shape[0] > 1 and x.shape[1] > 0 and np.all(ones == ones[:, :1]):
            st.axis = axis
            return bitops.bitmap_encode(ones[:, 0]), st
        return bitops.bitmap_encode(ones), st

    def check_stage(self, stage: pb.CodecStage, groups: int, per_group: int) -> int:
        self.check_fields(stage)
        if stage.HasField("axis"):
            return bitops.packed_nbytes(groups, 1)
        return bitops.packed_nbytes(groups * per_group, 1)

    def decode(self, data: memoryview, stage: pb.CodecStage, groups: int, per_group: int) -> F32:
        if stage.HasField("axis"):
            rows = bitops.bitmap_decode(data, groups).astype(np.float32)
            return np.repeat(rows[:, None], per_group, axis=1)
        return bitops.bitmap_decode(data, groups * per_group).astype(np.float32).reshape(groups, per_group)


@register
class Zlib(EntropyCodec):
    """DEFLATE (stdlib zlib) over the whole payload. Lossless.

    Wire: at most ``raw + 5 * ceil(raw / 16383) + 11`` bytes. Decompression is
    bounded: at most ``expected + 1`` bytes are ever produced.
    """

    codec_id = "zlib"
    config_cls = ZlibConfig
    stage_fields = frozenset({"level"})

    @classmethod
    def config_from_stage(cls, stage: pb.CodecStage) -> CodecConfig:
        return ZlibConfig(level=stage.level)

    def compress(self, parts: Sequence[bytes | memoryview]) -> tuple[bytes, pb.CodecStage]:
        assert isinstance(self.config, ZlibConfig)
        st = self.new_stage()
        st.level = self.config.level
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return zlib.compress(data, self.config.level), st

    def decompress(self, data: bytes | memoryview, stage: pb.CodecStage, expected: int) -> bytes:
        self.check_fields(stage)
        d = zlib.decompressobj()
        try:
            out = d.decompress(data, expected + 1)
        except zlib.error as exc:
            raise ValueError(f"corrupt zlib stream ({exc})") from None
        if len(out) > expected:
            raise ValueError(f"zlib stream inflates beyond the {expected} bytes the header implies")
        if len(out) < expected or not d.eof:
            raise ValueError(f"zlib stream truncated ({len(out)} of {expected} bytes)")
        if d.unused_data:
            raise ValueError("trailing bytes after the zlib stream")
        return out


_ZSTD = threading.local()  # per-thread (de)compression contexts: zstandard's are not thread-safe


def _zstd_compressor(level: int) -> Any:
    cache: dict[int, Any] = _ZSTD.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return cache[level]


def _zstd_decompressor() -> Any:
    if not hasattr(_ZSTD, "decompressor"):
        _ZSTD.decompressor = zstandard.ZstdDecompressor()
    return _ZSTD.decompressor


@register
class Zstd(EntropyCodec):
    """Zstandard (RFC 8878) over the whole payload, one frame that declares its content size. Lossless.

    An empty payload is sent empty (no frame). Decompression is bounded: the
    frame must declare exactly ``expected`` bytes before anything is
    decompressed, and the output buffer is exactly that large.
    """

    codec_id = "zstd"
    config_cls = ZstdConfig
    stage_fields = frozenset({"level"})

    @classmethod
    def config_from_stage(cls, stage: pb.CodecStage) -> CodecConfig:
        return ZstdConfig(level=stage.level)

    def compress(self, parts: Sequence[bytes | memoryview]) -> tuple[bytes, pb.CodecStage]:
        """One frame; each part starts a new block, so the index and value sections get their own
        entropy tables (on top-k payloads 4-14 % smaller than one block, at the same speed)."""
        assert isinstance(self.config, ZstdConfig)
        st = self.new_stage()
        st.level = self.config.level
        size = sum(len(part) for part in parts)
        if size == 0:
            return b"", st
        if len(parts) == 1:
            return _zstd_compressor(self.config.level).compress(parts[0]), st
        stream = _zstd_compressor(self.config.level).compressobj(size=size)
        out = []
        for i, part in enumerate(parts):
            out.append(stream.compress(part))
            if i + 1 < len(parts):
                out.append(stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        out.append(stream.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
        return b"".join(out), st

    def decompress(self, data: bytes | memoryview, stage: pb.CodecStage, expected: int) -> bytes:
        self.check_fields(stage)
        if zstandard is None:
            raise ValueError("zstd payload but the zstandard package is not installed")
        if expected == 0:
            if len(data):
                raise ValueError("zstd frame for an empty payload (an empty payload is sent empty)")
            return b""
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise ValueError(f"corrupt zstd frame header ({exc})") from None
        if declared != expected:
            what = "no content size" if declared < 0 else f"{declared} bytes"
            raise ValueError(f"zstd frame declares {what}, the header implies {expected}")
        try:
            out = _zstd_decompressor().decompress(data, max_output_size=expected, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise ValueError(f"corrupt zstd stream ({str(exc)[:80]})") from None
        if len(out) != expected:
            raise ValueError(f"zstd stream truncated ({len(out)} of {expected} bytes)")
        return out  # type: ignore[no-any-return]  # zstandard ships no type information
