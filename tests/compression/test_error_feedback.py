"""Error feedback loses nothing: what was sent plus the residual equals what came in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compression_helpers import as_tensor, float_arrays
from flwr.app import ArrayRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshrink.compression import Chain, ResidualStore
from fedshrink.compression.errorfeedback import RESIDUAL_KEY
from fedshrink.errors import DecodeError

EXACT = ["topk:0.1", "randk:0.3", "topk:0.2|zlib"]  # sparsifiers send exact values
ROUNDED = ["q2", "sign", "topk:0.1|q4|zlib", "int8:axis=0", "fp16", "randk:0.5|bf16"]


@pytest.mark.parametrize("text", EXACT + ROUNDED)
@settings(max_examples=20, deadline=None)
@given(x=float_arrays(max_dims=3), seed=st.integers(0, 2**32 - 1))
def test_sent_plus_residual_is_input(text: str, x: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    chain = Chain.parse(text)
    r0 = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    store = ResidualStore({"w": r0})
    t = as_tensor(x)
    _, sent = store.encode(chain, "w", t, rng=rng)
    came_in = t + r0
    residual = store.get("w")
    assert residual is not None
    if text in EXACT:
        assert torch.equal(sent + residual, came_in)
    else:  # one float32 rounding of the subtraction
        tol = 2 * float(np.finfo(np.float32).eps) * came_in.abs().max().item() + 1e-30
        assert torch.allclose(sent + residual, came_in, rtol=0, atol=tol)


def test_nothing_lost_over_rounds() -> None:
    """Over many rounds, the sum sent + the last residual = the sum of the inputs."""
    rng = np.random.default_rng(0)
    chain = Chain.parse("topk:0.05")
    store = ResidualStore()
    total_in = torch.zeros(400)
    total_sent = torch.zeros(400)
    for _ in range(30):
        x = torch.from_numpy(rng.standard_normal(400).astype(np.float32))
        total_in += x
        total_sent += store.encode(chain, "g", x, rng=rng)[1]
    residual = store.get("g")
    assert residual is not None
    assert torch.allclose(total_sent + residual, total_in, atol=1e-4)


def test_lossless_chains_and_ints_keep_no_residual() -> None:
    store = ResidualStore()
    store.encode(Chain.parse("zlib"), "a", torch.randn(5))
    store.encode(Chain.parse("topk:0.5"), "n", torch.arange(6))
    assert len(store) == 0


def test_stale_shape_is_dropped() -> None:
    store = ResidualStore({"w": torch.ones(3)})
    assert torch.equal(store.compensate("w", torch.zeros(4)), torch.zeros(4))


def test_store_roundtrips_through_context_state() -> None:
    store = ResidualStore({"a": torch.randn(3, 4), "b": torch.randn(0), "c": torch.tensor(2.0)})
    state = RecordDict()
    store.save(state)
    assert isinstance(state[RESIDUAL_KEY], ArrayRecord)
    back = ResidualStore.load(state)
    assert list(back) == ["a", "b", "c"]
    for name in store:
        assert torch.equal(back.get(name), store.get(name))  # type: ignore[arg-type]
    assert len(ResidualStore.load(RecordDict())) == 0


def test_store_rejects_bad_records() -> None:
    rec = ResidualStore({"a": torch.randn(4)}).to_record()
    arr = rec["a"]
    rec["a"] = type(arr)(dtype="float32", shape=(5,), stype=arr.stype, data=arr.data)
    with pytest.raises(DecodeError, match="does not match"):
        ResidualStore.from_record(rec)
    rec["a"] = type(arr)(dtype="float32", shape=(4,), stype="numpy.ndarray", data=arr.data)
    with pytest.raises(DecodeError, match="stype"):
        ResidualStore.from_record(rec)


def test_residuals_survive_flower_context_serde() -> None:
    """A ClientApp-style loop: the residual lives in context.state, which Flower may serialize."""
    from flwr.app import Context
    from flwr.common.serde import context_from_proto, context_to_proto

    from fedshrink.compression import decode_record, encode_state

    rng = np.random.default_rng(3)
    ctx = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    inputs = [{"w": torch.from_numpy(rng.standard_normal(64).astype(np.float32))} for _ in range(4)]
    received = torch.zeros(64)
    for update in inputs:
        store = ResidualStore.load(ctx.state)
        record, _ = encode_state(update, "topk:0.1|zlib", residuals=store, rng=rng)
        store.save(ctx.state)
        ctx = context_from_proto(context_to_proto(ctx))  # state persisted between rounds
        received += decode_record(record)["w"]
    residual = ResidualStore.load(ctx.state).get("w")
    assert residual is not None
    total = torch.stack([u["w"] for u in inputs]).sum(0)
    assert torch.allclose(received + residual, total, atol=1e-5)
