"""FragmentSpec: which channels of every channel group a client's fragment keeps.

A spec maps each sliceable group of a :class:`~fedshrink.fragments.graph.LayerGraph`
to a sorted array of unique kept indices, remembers the full size of each group
(so it validates without the graph) and the nominal width it was planned at
(``None`` for hand-made specs).

Wire form (it travels in a Flower ``ConfigRecord`` as a ``str``; ``to_bytes`` is
its UTF-8 encoding), indices run-length coded as ``[start, length]`` pairs so a
prefix or a wrapped window costs one or two pairs::

    {"format": "fedshrink.fragment/1", "width": 0.5,
     "groups": {"features.0": {"size": 32, "runs": [[0, 16]]}, ...}}

No pickle. :meth:`FragmentSpec.from_json` rejects anything malformed (bad JSON,
unknown fields, overlapping or unsorted runs, indices out of range, sizes over a
cap) with :class:`~fedshrink.errors.DecodeError`; the constructor validates with
:class:`~fedshrink.errors.ConfigError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedshrink.errors import ConfigError, DecodeError
from fedshrink.fragments.graph import LayerGraph

FORMAT = "fedshrink.fragment/1"
MAX_GROUP_SIZE = 2**24  # channels of one group a decoded spec may claim
MAX_GROUPS = 4096
_WIRE_NAME = "fragment-spec"

Indices = npt.NDArray[np.int64]


def _as_indices(group: str, values: Any, size: int) -> Indices:
    key = f"fragment-spec.{group}"
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError):
        raise ConfigError(key, values, "a 1-D array of integer indices") from None
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(key, _preview(arr), "a 1-D array of integer indices")
    arr = arr.astype(np.int64)
    if arr.size == 0:
        raise ConfigError(key, [], "at least one kept index")
    if arr[0] < 0 or arr[-1] >= size:
        raise ConfigError(key, _preview(arr), f"indices in [0, {size})")
    if arr.size > 1 and not bool(np.all(np.diff(arr) > 0)):
        raise ConfigError(key, _preview(arr), "sorted, unique indices")
    arr = arr.copy()
    arr.setflags(write=False)
    return arr


def _preview(arr: Any) -> Any:
    flat = np.asarray(arr).reshape(-1).tolist()
    return flat if len(flat) <= 8 else [*flat[:8], "..."]


@dataclass(frozen=True, eq=False)
class FragmentSpec:
    """Kept channel indices per group; ``sizes`` are the full group sizes."""

    kept: Mapping[str, Indices]
    sizes: Mapping[str, int]
    width: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kept, Mapping) or not isinstance(self.sizes, Mapping):
            raise ConfigError("fragment-spec", type(self.kept).__name__, "mappings group -> indices / size")
        if set(self.kept) != set(self.sizes):
            raise ConfigError("fragment-spec.groups", sorted(self.kept), f"the groups {sorted(self.sizes)}")
        sizes: dict[str, int] = {}
        for name, size in self.sizes.items():
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
                raise ConfigError(f"fragment-spec.{name}.size", size, "a positive integer")
            sizes[str(name)] = int(size)
        kept = {name: _as_indices(name, self.kept[name], sizes[name]) for name in sizes}
        if self.width is not None and not (isinstance(self.width, int | float) and 0 < self.width <= 1):
            raise ConfigError("fragment-spec.width", self.width, "None or a number in (0, 1]")
        object.__setattr__(self, "kept", kept)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "width", None if self.width is None else float(self.width))

    # ---- views -------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Kept channels per group."""
        return {name: int(idx.size) for name, idx in self.kept.items()}

    def fraction(self) -> dict[str, float]:
        return {name: idx.size / self.sizes[name] for name, idx in self.kept.items()}

    def is_prefix(self) -> bool:
        """Every group keeps ``0..k-1`` (static HeteroFL slicing)."""
        return all(int(idx[-1]) == idx.size - 1 for idx in self.kept.values())

    def check(self, graph: LayerGraph) -> None:
        """Raise :class:`ConfigError` unless the spec's groups and sizes are the graph's."""
        want = graph.group_sizes()
        if dict(self.sizes) != want:
            raise ConfigError("fragment-spec.groups", dict(self.sizes), f"the model's groups {want}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FragmentSpec):
            return NotImplemented
        return (
            self.width == other.width
            and dict(self.sizes) == dict(other.sizes)
            and all(np.array_equal(self.kept[k], other.kept[k]) for k in self.kept)
        )

    def __hash__(self) -> int:
        return hash(self.to_json())

    # ---- wire form ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        groups: dict[str, Any] = {}
        for name, idx in self.kept.items():
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1  # run starts after the first
            starts = np.concatenate([[0], breaks])
            ends = np.concatenate([breaks, [idx.size]])
            runs = [[int(idx[s]), int(e - s)] for s, e in zip(starts, ends, strict=True)]
            groups[name] = {"size": self.sizes[name], "runs": runs}
        return {"format": FORMAT, "width": self.width, "groups": groups}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_bytes(self) -> bytes:
        return self.to_json().encode("utf-8")

    @classmethod
    def from_dict(cls, data: Any) -> FragmentSpec:
        """Parse the wire form; every fault is a :class:`DecodeError`."""

        def fail(fault: str) -> DecodeError:
            return DecodeError(_WIRE_NAME, fault)

        if not isinstance(data, dict) or set(data) != {"format", "width", "groups"}:
            raise fail("expected an object with keys format, width, groups")
        if data["format"] != FORMAT:
            raise fail(f"format {data['format']!r}, expected {FORMAT!r}")
        groups = data["groups"]
        if not isinstance(groups, dict) or len(groups) > MAX_GROUPS:
            raise fail(f"groups must be an object of at most {MAX_GROUPS} entries")
        width = data["width"]
        if width is not None and (isinstance(width, bool) or not isinstance(width, int | float)):
            raise fail(f"width {width!r} is not a number or null")
        kept: dict[str, Indices] = {}
        sizes: dict[str, int] = {}
        for name, entry in groups.items():
            if not isinstance(entry, dict) or set(entry) != {"size", "runs"}:
                raise fail(f"group {name!r}: expected an object with keys size, runs")
            size, runs = entry["size"], entry["runs"]
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_GROUP_SIZE:
                raise fail(f"group {name!r}: size {size!r} not an integer in [1, {MAX_GROUP_SIZE}]")
            if not isinstance(runs, list) or not 1 <= len(runs) <= size:
                raise fail(f"group {name!r}: runs must be a list of 1..{size} [start, length] pairs")
            total, prev_end = 0, -1
            for run in runs:
                ok = (
                    isinstance(run, list)
                    and len(run) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in run)
                )
                if not ok:
                    raise fail(f"group {name!r}: run {run!r} is not [start, length]")
                start, length = run
                if length < 1 or start <= prev_end or start + length > size:
                    raise fail(f"group {name!r}: run {run!r} overlaps, is unsorted or leaves [0, {size})")
                prev_end = start + length - 1
                total += length
            if total > size:  # unreachable after the checks above; keeps allocation bounded
                raise fail(f"group {name!r}: {total} indices for {size} channels")
            idx = np.concatenate([np.arange(s, s + n, dtype=np.int64) for s, n in runs])
            kept[name], sizes[name] = idx, size
        try:
            return cls(kept, sizes, width)
        except ConfigError as exc:
            raise fail(str(exc)) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> FragmentSpec:
        if isinstance(text, bytes | bytearray | memoryview):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError(_WIRE_NAME, "not UTF-8") from None
        if not isinstance(text, str):
            raise DecodeError(_WIRE_NAME, f"expected str or bytes, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise DecodeError(_WIRE_NAME, "not valid JSON") from None
        return cls.from_dict(data)

    from_bytes = from_json


def full_spec(graph: LayerGraph) -> FragmentSpec:
    """The spec that keeps every channel (width 1)."""
    sizes = graph.group_sizes()
    return FragmentSpec({g: np.arange(n) for g, n in sizes.items()}, sizes, 1.0)


def spec_from_counts(graph: LayerGraph, counts: Mapping[str, int], width: float | None = None) -> FragmentSpec:
    """Prefix spec keeping ``counts[g]`` channels of each group."""
    sizes = graph.group_sizes()
    return FragmentSpec({g: np.arange(counts[g]) for g in sizes}, sizes, width)


def kept_fraction(spec: FragmentSpec) -> float:
    """Kept channels over all channels (a cheap size figure for logs)."""
    return sum(spec.counts().values()) / max(1, math.fsum(spec.sizes.values()))
