"""Top-k selection against a sort-based reference, and the fast paths of the top-k chains.

``topk_indices`` samples a threshold, extracts candidates and partitions bit patterns of
``|x|``; every path (small tensors, sampled candidates, ties at the k-th value) must return
exactly what a stable sort by decreasing magnitude returns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compression_helpers import float_arrays
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshrink.compression import Chain
from fedshrink.compression.codecs import _SAMPLE, quant_params, quantize, topk_indices, topk_select
from fedshrink.errors import EncodeError


def _reference(x: np.ndarray, k: int) -> np.ndarray:
    """The k largest |x|, ties to the lowest positions, sorted: a stable sort by decreasing |x|."""
    order = np.argsort(-np.abs(x.reshape(-1).astype(np.float64)), kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def _check(x: np.ndarray, k: int) -> None:
    idx, values = topk_select(x, k)
    assert idx.dtype == np.int64
    assert np.array_equal(idx, _reference(x, k))
    assert np.array_equal(topk_indices(x, k), idx)
    assert np.array_equal(values, x.reshape(-1)[idx])


@settings(max_examples=80, deadline=None)
@given(x=float_arrays(max_dims=2, max_side=40), frac=st.floats(0.0, 1.0))
def test_small_inputs_match_the_sort(x: np.ndarray, frac: float) -> None:
    _check(x, int(frac * x.size))


# sizes at and above the sampled path (8 * _SAMPLE elements), ratios on both sides of its density switches
LARGE = 8 * _SAMPLE


@pytest.mark.parametrize("n", [LARGE - 1, LARGE, LARGE + 12345, 1_000_003])
@pytest.mark.parametrize("ratio", [1e-5, 0.001, 0.01, 0.029, 0.031, 0.05, 0.1, 0.119, 0.121, 0.5, 0.99])
def test_large_random_inputs_match_the_sort(n: int, ratio: float) -> None:
    rng = np.random.default_rng(n + int(ratio * 1e6))
    x = rng.standard_normal(n, dtype=np.float32) * rng.choice([1e-30, 1.0, 1e30])
    _check(x, max(1, int(ratio * n)))


@pytest.mark.parametrize("ratio", [0.001, 0.05, 0.1, 0.3, 0.7])
@pytest.mark.parametrize("levels", [1, 2, 5, 300])
def test_ties_go_to_the_lowest_positions(ratio: float, levels: int) -> None:
    rng = np.random.default_rng(levels)
    n = LARGE + 777
    x = rng.integers(-levels, levels + 1, n).astype(np.float32)  # many ties at the k-th magnitude
    x[rng.integers(0, n, 50)] = -0.0  # -0.0 and 0.0 tie
    _check(x, int(ratio * n))


def test_constant_zero_and_one_element_inputs() -> None:
    for x in (np.zeros(LARGE + 3, np.float32), np.full(LARGE, -2.5, np.float32), np.array([7.0], np.float32)):
        for k in (0, 1, x.size // 3, x.size - 1, x.size, x.size + 5):
            _check(x, min(k, x.size) if k > x.size else k)


def test_float64_and_strided_inputs() -> None:
    rng = np.random.default_rng(1)
    x64 = rng.standard_normal(LARGE + 9)
    _check(x64, 5000)
    x2d = rng.standard_normal((600, 500), dtype=np.float32)
    _check(x2d, 30_000)


@pytest.mark.parametrize("where", [0, 123_456, 299_999])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), "negative nan"])
@pytest.mark.parametrize("text", ["topk:0.1|q4|zstd", "topk:0.00001", "topk:1.0|int8"])
def test_topk_chains_refuse_non_finite_large_tensors(text: str, bad: float | str, where: int) -> None:
    x = torch.randn(300_000) * 1e-3  # the bad value is far from the sampled threshold's neighbours
    if bad == "negative nan":
        x.numpy().view(np.int32)[where] = -1  # 0xffffffff: a NaN with the sign bit set
    else:
        x[where] = float(bad)
    with pytest.raises(EncodeError, match="non-finite"):
        Chain(text).encode("w", x)


@settings(max_examples=100, deadline=None)
@given(
    x=float_arrays(max_dims=2, max_side=30),
    bits=st.integers(1, 8),
    scale=st.sampled_from([1e-42, 1e-30, 1.0, 1e30]),
)
def test_quantize_with_own_params_needs_no_clip(x: np.ndarray, bits: int, scale: float) -> None:
    g = (x.astype(np.float64) * scale).astype(np.float32).reshape(x.shape[0], -1)
    lo, sc = quant_params(g, bits)
    clipped = quantize(g, lo, sc, bits, None)
    assert np.array_equal(quantize(g, lo, sc, bits, None, own_params=True), clipped)


def test_quantize_with_own_params_on_extreme_ranges() -> None:
    f32 = np.finfo(np.float32)
    rows = [
        [0.0, float(f32.max)],
        [-float(f32.max) / 8, float(f32.max) / 2],
        [float(f32.tiny), 2 * float(f32.tiny)],
        [float(f32.smallest_subnormal), 3 * float(f32.smallest_subnormal)],
        [1.0, 1.0 + float(f32.eps)],
        [-1.0, np.nextafter(np.float32(-1.0), np.float32(0))],
        [5.0, 5.0],
    ]
    rng = np.random.default_rng(0)
    for lo_hi in rows:
        a, b = np.float32(lo_hi[0]), np.float32(lo_hi[1])
        mid = rng.uniform(0, 1, 997).astype(np.float32)
        g = np.concatenate([[a, b], (a + (b.astype(np.float64) - a) * mid).astype(np.float32)]).reshape(1, -1)
        for bits in range(1, 9):
            lo, sc = quant_params(g, bits)
            assert np.array_equal(quantize(g, lo, sc, bits, None, own_params=True), quantize(g, lo, sc, bits, None))
