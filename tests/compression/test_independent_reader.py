"""The .proto is a complete spec: a reader written from its text alone decodes every chain bit for bit."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import independent_reader as ir
import numpy as np
import pytest
import torch

from fedshrink.compression import Chain, decode_parsed_with_support, encode_state, parse_tensor
from fedshrink.devices.budget import COMPRESSION_LADDER
from fedshrink.devices.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[2]


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_codecs", ROOT / "simulations/benchmarks/bench_codecs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench_chains() -> list[str]:
    return list(_bench_module().CHAINS)


def test_the_codec_benchmark_holds_the_profiles_chains_to_the_speed_target() -> None:
    """The chains codecs.md marks as shipped (and holds to 1 GB/s) are exactly the profiles' non-raw chains."""
    mod = _bench_module()
    mod.check_shipped()
    assert set(mod.SHIPPED) <= set(mod.CHAINS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mod, "SHIPPED", mod.SHIPPED[:-1])
        with pytest.raises(SystemExit, match="is not the profiles' chains"):
            mod.check_shipped()


SHIPPED = ["topk:0.1|q4|zlib", "topk:0.05|int8|zlib", "int8|zlib", "raw"]
PROFILE_CHAINS = {c for p in PROFILES.values() for c in (p.uplink, p.downlink)}
LADDER_CHAINS = {c for lv in COMPRESSION_LADDER for c in (lv.uplink, lv.downlink)}
EXTRA = [
    "topk:0.5|q4",
    "randk:0.3|fp16|zlib",
    "q3:axis=1",
    "int8:axis=-1|zlib:9",
    "topk:0.2|sign",
    "q7",
    "q5",
    "topk:0.1|q4|zstd",
    "topk:0.05|int8|zstd:19",
    "int8|zstd",
    "zstd",
    "q6:axis=0|zstd:3",
    "flat|topk:0.05|int8",  # a flat chain's vector may carry a Rice-coded index section
    "flat|topk:0.004|int8|zstd",
    "flat|topk:0.3|q4",
]
CHAINS = sorted({*_bench_chains(), *SHIPPED, *PROFILE_CHAINS, *LADDER_CHAINS, *EXTRA})
SHAPES = [(), (1,), (7,), (3, 5), (4, 3, 3, 3), (2, 0), (129,), (33, 17)]


def _inputs(shape: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(shape, generator=g) * 0.05
    laplace = torch.distributions.Laplace(0.0, 1e-3).sample(shape)
    spiky = torch.where(torch.rand(shape, generator=g) < 0.3, torch.zeros(shape), torch.randn(shape, generator=g))
    spiky.view(-1)[:1] = -0.0
    return [normal, laplace, spiky, torch.full(shape, 0.25)]  # last: one value, scale 0


def _bits(x: torch.Tensor) -> np.ndarray:
    """The decoded values as the reader holds them (bfloat16 as uint16 bit patterns)."""
    if x.dtype == torch.bfloat16:
        return x.contiguous().view(torch.int16).numpy().view(np.uint16)
    return x.numpy()


def _same(ours: torch.Tensor, support: np.ndarray | None, theirs: ir.Decoded) -> None:
    expect = _bits(ours)
    assert theirs.values.dtype == expect.dtype and theirs.values.shape == expect.shape
    assert np.array_equal(theirs.values, expect)
    if expect.dtype.kind == "f":  # bit for bit, -0.0 included
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[expect.itemsize]
        assert np.array_equal(theirs.values.view(width), expect.view(width))
    if support is None:
        assert theirs.support is None
    else:
        assert theirs.support is not None and np.array_equal(theirs.support, support)


def _check(text: str, name: str, x: torch.Tensor, seed: int) -> None:
    enc = Chain(text).encode(name, x, rng=np.random.default_rng(seed))
    ours, support = decode_parsed_with_support(parse_tensor(enc.data))
    theirs = ir.read_tensor(enc.data)
    assert theirs.name == name and theirs.dtype == enc.dtype and theirs.shape == enc.shape
    _same(ours, support, theirs)


@pytest.mark.parametrize("text", CHAINS)
def test_reader_matches_float32(text: str) -> None:
    for i, shape in enumerate(SHAPES):
        for j, x in enumerate(_inputs(shape, seed=i)):
            _check(text, f"t{i}.{j}", x, seed=i)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("text", ["raw", "topk:0.1|q4|zlib", "topk:0.3", "int8:axis=0|zlib", "fp16", "bf16", "sign"])
def test_reader_matches_other_float_dtypes(text: str, dtype: torch.dtype) -> None:
    for i, shape in enumerate([(), (7,), (4, 3, 3, 3), (33, 17)]):
        for x in _inputs(shape, seed=i):
            _check(text, "w", (x * 300).to(dtype), seed=i)


@pytest.mark.parametrize("text", ["bitmap", "bitmap|zlib", "bitmap|zstd", "int8|zlib", "raw"])
def test_reader_matches_masks(text: str) -> None:
    g = torch.Generator().manual_seed(0)
    channel = (torch.rand(6, 1, 1, 1, generator=g) > 0.5).expand(6, 3, 2, 2).contiguous()
    masks = [
        torch.rand(5, 7, generator=g) > 0.4,  # unstructured
        channel,  # structured: one bit per output channel
        torch.rand(9, generator=g) > 0.5,
        torch.ones(3, 4, dtype=torch.bool),
        torch.tensor(True),
    ]
    for m in masks:
        for x in (m, m.to(torch.float32)):
            _check(text, "mask", x, seed=0)


def test_reader_matches_non_float_tensors() -> None:
    for x in (torch.tensor(7), torch.arange(-5, 6, dtype=torch.int32), torch.arange(9, dtype=torch.uint8)):
        for text in ("topk:0.1|q4|zlib", "raw", "int8", "zstd"):
            _check(text, "n", x, seed=0)


def test_reader_reads_a_record() -> None:
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(8, 4, generator=g), "b": torch.randn(8, generator=g), "n": torch.tensor(3)}
    record, _ = encode_state(state, "topk:0.1|q4|zlib", fragment="f", round=2, rng=np.random.default_rng(0))
    arrays = {k: (a.stype, a.dtype, tuple(a.shape), a.data) for k, a in record.items()}
    got = ir.read_record(arrays)
    assert list(got) == list(state)
    for k, arr in arrays.items():
        if k in got:
            ours, support = decode_parsed_with_support(parse_tensor(arr[3]))
            _same(ours, support, got[k])
