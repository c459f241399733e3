"""Per-codec round-trip error bounds, unbiasedness and wire sizes (property tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from compression_helpers import as_tensor, float_arrays
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshrink.compression import Chain, bitops, decode_tensor, parse_tensor
from fedshrink.compression.codecs import topk_count
from fedshrink.v1 import compression_pb2 as pb

EPS32 = float(np.finfo(np.float32).eps)


def _groups(x: np.ndarray, axis: int | None) -> np.ndarray:
    """x as (G, N) with the channel axis first, as the quant codec groups it."""
    if axis is None:
        return x.reshape(1, -1)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


@settings(max_examples=80, deadline=None)
@given(x=float_arrays(), bits=st.integers(1, 8), per_channel=st.booleans())
def test_deterministic_quant_within_half_scale(x: np.ndarray, bits: int, per_channel: bool) -> None:
    axis = 0 if per_channel and x.ndim >= 2 else None  # 1-D tensors are quantized per tensor
    chain = Chain.parse(f"quant:{bits}" + (",axis=0" if per_channel else ""))
    enc = chain.encode("w", as_tensor(x))
    y = decode_tensor(enc.data).numpy()
    assert y.shape == x.shape and y.dtype == np.float32
    stage = parse_tensor(enc.data).proto.stages[0]
    scale = np.asarray(stage.scales, dtype=np.float64)  # (G,)
    assert scale.size == (x.shape[0] if axis == 0 else 1)
    err = np.abs(_groups(x, axis).astype(np.float64) - _groups(y, axis))  # (G, N)
    mag = np.abs(_groups(x, axis)).max(axis=1).astype(np.float64)  # (G,)
    bound = scale / 2 + 4 * EPS32 * mag  # scale/2 plus float32 rounding
    assert np.all(err <= bound[:, None])
    assert enc.nbytes >= math.ceil(x.size * bits / 8)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@settings(max_examples=6, deadline=None)
@given(x=float_arrays(max_dims=1, max_side=24), seed=st.integers(0, 2**32 - 1))
def test_stochastic_quant_unbiased(bits: int, x: np.ndarray, seed: int) -> None:
    """Mean error over D draws: each element within 6 sigma (sigma <= scale / (2 sqrt D)).

    The D draws are D copies of ``x`` in one tensor: the same range, so the same ``lo`` and scale as ``x``
    alone, and rounding noise of its own for every element.
    """
    draws = 400
    chain = Chain.parse(f"quant:{bits},stochastic=true")
    enc = chain.encode("w", as_tensor(np.tile(x, draws)), rng=np.random.default_rng(seed))
    scale = float(parse_tensor(enc.data).proto.stages[0].scales[0])
    y = decode_tensor(enc.data).numpy().astype(np.float64).reshape(draws, *x.shape)  # (D, N)
    assert np.all(np.abs(y - x) <= scale + 4 * EPS32 * np.abs(x).max())  # never a full step off
    mean_err = (y - x).mean(axis=0)
    tol = 6 * scale / (2 * math.sqrt(draws)) + 8 * EPS32 * float(np.abs(x).max())
    assert np.all(np.abs(mean_err) <= tol)


@settings(max_examples=40, deadline=None)
@given(x=float_arrays())
def test_fp16_bf16_relative_error(x: np.ndarray) -> None:
    for codec, rel, tiny in (("fp16", 2.0**-11, 2.0**-24), ("bf16", 2.0**-8, 1e-38)):
        y = decode_tensor(Chain.parse(codec).encode("w", as_tensor(x)).data).numpy()
        assert np.all(np.abs(y - x) <= rel * np.abs(x) + tiny), codec


def test_fp16_saturates() -> None:
    y = decode_tensor(Chain.parse("fp16").encode("w", torch.tensor([1e6, -1e6])).data)
    assert torch.equal(y, torch.tensor([65504.0, -65504.0]))


@settings(max_examples=40, deadline=None)
@given(x=float_arrays())
def test_sign_with_scale(x: np.ndarray) -> None:
    enc = Chain.parse("sign").encode("w", as_tensor(x))
    y = decode_tensor(enc.data).numpy()
    s = np.float32(np.abs(x).mean(dtype=np.float64))
    assert np.allclose(y, np.where(x >= 0, s, -s), rtol=1e-6, atol=0)
    assert enc.nbytes <= math.ceil(x.size / 8) + 64


@pytest.mark.parametrize("sparsifier", ["topk", "randk"])
@settings(max_examples=40, deadline=None)
@given(x=float_arrays(), ratio=st.floats(0.01, 1.0), seed=st.integers(0, 2**32 - 1))
def test_sparsifiers_keep_exact_values(sparsifier: str, x: np.ndarray, ratio: float, seed: int) -> None:
    enc = Chain.parse(f"{sparsifier}:{ratio}").encode("w", as_tensor(x), rng=np.random.default_rng(seed))
    p = parse_tensor(enc.data)
    k = topk_count(x.size, ratio)
    assert p.proto.sparse.count == k
    sp = p.proto.sparse
    section = p.payload[: sp.nbytes]
    if sp.encoding == pb.INDEX_ENCODING_BITMAP:
        idx = bitops.indices_from_bitmap(section, x.size, k)
    elif sp.encoding == pb.INDEX_ENCODING_RICE:
        idx = bitops.rice_decode(section, k, x.size, sp.rice_bits)
    else:
        idx = bitops.varint_decode(section, k, x.size)
    assert sp.nbytes <= min(math.ceil(x.size / 8), bitops.varint_nbytes(idx))  # the shortest index encoding
    y = decode_tensor(enc.data).numpy().reshape(-1)
    flat = x.reshape(-1)
    kept = np.zeros(x.size, dtype=bool)
    kept[idx] = True
    assert np.array_equal(y[kept], flat[kept])  # kept values are exact
    assert np.all(y[~kept] == 0)  # the rest are zero
    if sparsifier == "topk" and k < x.size:  # the k largest magnitudes
        assert np.abs(flat[kept]).min() >= np.abs(flat[~kept]).max()


@settings(max_examples=30, deadline=None)
@given(x=float_arrays(), level=st.integers(0, 9))
def test_zlib_and_raw_lossless(x: np.ndarray, level: int) -> None:
    for text in ("raw", f"zlib:{level}"):
        y = decode_tensor(Chain.parse(text).encode("w", as_tensor(x)).data)
        assert torch.equal(y, as_tensor(x))


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(3, 4, dtype=torch.float64),
        torch.randn(3, 4).to(torch.bfloat16),
        torch.randn(5).to(torch.float16),
        torch.tensor(7, dtype=torch.int64),
        torch.arange(-5, 5, dtype=torch.int32),
        torch.tensor([True, False, True]),
        torch.zeros(0, 3),
        torch.zeros(2, 0, 4),
        torch.tensor(2.5),
    ],
)
@pytest.mark.parametrize(
    "text",
    ["raw", "zlib", "topk:0.5|q4|zlib", "fp16", "bf16|zlib", "sign", "randk:0.3", "q3:axis=-1", "bitmap"],
)
def test_dtypes_and_shapes_survive(tensor: torch.Tensor, text: str) -> None:
    chain = Chain.parse(text)
    if text == "bitmap":  # masks only: 0/1 values
        tensor = tensor != 0 if tensor.dtype == torch.bool else (tensor > 0).to(tensor.dtype)
    enc, y = chain.roundtrip("t", tensor, rng=np.random.default_rng(0))
    assert y.dtype == tensor.dtype and y.shape == tensor.shape
    assert enc.nbytes == len(enc.data)
    if not tensor.is_floating_point() or not chain.lossy:
        assert torch.equal(y, tensor)


@settings(max_examples=30, deadline=None)
@given(
    mask=st.integers(1, 6).flatmap(
        lambda c: st.lists(st.booleans(), min_size=c, max_size=c).map(lambda rows: rows)
    ),
    inner=st.integers(1, 5),
    structured=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_bitmap_masks_lossless(mask: list[bool], inner: int, structured: bool, seed: int) -> None:
    rows = torch.tensor(mask)[:, None, None].expand(len(mask), inner, 3)
    m = rows if structured else torch.from_numpy(np.random.default_rng(seed).random(rows.shape) < 0.5)
    for t in (m.contiguous(), m.float().contiguous()):
        enc, y = Chain.parse("bitmap").roundtrip("m", t)
        assert torch.equal(y, t)
        if structured:
            assert enc.nbytes < 64  # one bit per channel


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_subnormal_range_quantizes_within_half_scale(bits: int) -> None:
    x = np.array([1e-45, 0.0, 3e-45], dtype=np.float32)  # found by hypothesis: the scale underflowed
    enc = Chain.parse(f"quant:{bits}").encode("w", as_tensor(x))
    y = decode_tensor(enc.data).numpy()
    scale = float(parse_tensor(enc.data).proto.stages[0].scales[0])
    assert np.all(np.isfinite(y)) and scale > 0
    assert np.all(np.abs(x.astype(np.float64) - y) <= scale / 2)
