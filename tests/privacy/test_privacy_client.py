"""The client's private step: what is sent stays within the bound for every chain; the residual keeps the rest."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedshrink.compression import Chain, ResidualStore, decode_record, encode_state
from fedshrink.devices.profiles import PROFILES
from fedshrink.errors import ConfigError
from fedshrink.privacy.client import ClientPrivacy, private_uplink
from fedshrink.privacy.clipping import l2_norm

# every codec, the run's default uplink and every shipped profile's uplink
CHAINS = sorted({"raw", "fp16", "bf16", "int8", "q4", "q2", "q1", "int8:axis=0", "quant:4,stochastic=true", "sign",
                 "topk:0.1", "randk:0.2", "zlib", "topk:0.1|fp16|zlib", *(p.uplink for p in PROFILES.values())})


def update_of(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": scale * torch.randn(8, 3, 3, 3, generator=g),
            "conv.bias": scale * torch.randn(8, generator=g),
            "fc.weight": scale * torch.randn(10, 72, generator=g), "steps": torch.tensor(7)}


@pytest.mark.parametrize("text", CHAINS)
def test_what_is_sent_is_within_the_bound_for_every_chain(text: str) -> None:
    chain = Chain.parse(text)
    for seed in range(6):
        store = ResidualStore() if chain.lossy else None
        for rnd in range(3):  # later rounds carry a residual
            rng = np.random.default_rng([seed, rnd])
            out = private_uplink(update_of(seed, scale=0.3 + seed), chain, ClientPrivacy(clip=2.0), masks={},
                                 residuals=store, rng=rng, noise_rng=rng, round=rnd)
            sent = decode_record(out.record)  # as the server decodes it
            assert l2_norm(sent.values()) <= 2.0
            assert out.sent_norm == pytest.approx(l2_norm(sent.values()))
            assert torch.count_nonzero(sent["steps"]) == 0  # integer tensors are not sent
            assert out.tries >= 1


@pytest.mark.parametrize("text", ["int8", "q4", "fp16", "quant:4,stochastic=true"])
def test_rounding_can_enlarge_a_clipped_update_and_the_step_corrects_it(text: str) -> None:
    """Clipped to exactly C, a plain encoding goes over C for some updates; the private step never does."""
    chain, over = Chain.parse(text), 0
    for seed in range(30):
        u = update_of(seed)
        norm = l2_norm(u.values())
        clipped = {k: v * (2.0 / norm) if v.is_floating_point() else torch.zeros_like(v) for k, v in u.items()}
        plain, _ = encode_state(clipped, chain, rng=np.random.default_rng(seed))
        over += l2_norm(decode_record(plain).values()) > 2.0
        rng = np.random.default_rng(seed)
        out = private_uplink(u, chain, ClientPrivacy(2.0), masks={}, residuals=None, rng=rng, noise_rng=rng)
        assert out.sent_norm <= 2.0
    assert over > 0


def test_residual_keeps_what_clipping_and_compression_removed() -> None:
    """r' = (update + r) - sent on held coordinates; 0 on pruned ones, which are sent as (about) 0."""
    chain = Chain.parse("topk:0.2|int8")
    u = update_of(1)
    r0 = {k: 0.1 * torch.ones_like(v) for k, v in u.items() if v.is_floating_point()}
    store = ResidualStore(r0)
    mask = torch.rand(10, 72, generator=torch.Generator().manual_seed(0)) > 0.3
    rng = np.random.default_rng(0)
    out = private_uplink(u, chain, ClientPrivacy(1.0, report_within=True), masks={"fc.weight": mask},
                         residuals=store, rng=rng, noise_rng=rng)
    sent = decode_record(out.record)
    assert out.sent_norm <= 1.0 and out.within == 0.0
    for k, r in r0.items():
        x = u[k] + r
        held = mask if k == "fc.weight" else torch.ones_like(x, dtype=torch.bool)
        expected = torch.where(held, x - sent[k], torch.zeros_like(x))
        residual = store.get(k)
        assert residual is not None
        torch.testing.assert_close(residual, expected, rtol=0, atol=1e-5)
    assert float(sent["fc.weight"][~mask].abs().max()) < 1e-2  # quantized zeros


def test_within_bit_and_an_update_inside_the_bound_is_sent_as_is() -> None:
    u = update_of(2, scale=0.01)
    rng = np.random.default_rng(0)
    out = private_uplink(u, Chain.parse("raw"), ClientPrivacy(100.0, report_within=True), masks={}, residuals=None,
                         rng=rng, noise_rng=rng)
    sent = decode_record(out.record)
    assert out.within == 1.0
    quiet = private_uplink(u, Chain.parse("raw"), ClientPrivacy(100.0), masks={}, residuals=None, rng=rng,
                           noise_rng=rng)
    assert quiet.within is None  # without adaptive clipping the reply says nothing about its norm
    for k in ("conv.weight", "fc.weight"):
        assert torch.equal(sent[k], u[k])


def test_distributed_share_has_the_asked_std_and_is_not_kept_where_sent() -> None:
    u = {"w": torch.full((200, 100), 0.001)}
    store = ResidualStore()
    rng = np.random.default_rng(3)
    out = private_uplink(u, Chain.parse("raw"), ClientPrivacy(1.0, noise_std=0.05, count_noise_std=0.5,
                                                              report_within=True),
                         masks={}, residuals=store, rng=rng, noise_rng=rng)
    sent = decode_record(out.record)["w"]
    assert float((sent - u["w"]).std()) == pytest.approx(0.05, rel=0.03)
    assert out.within != 1.0  # the bit carries its noise share
    residual = store.get("w")
    assert residual is not None and float(residual.abs().max()) < 1e-6  # lossless: the noise cancels


def test_client_privacy_round_trip_and_refusals() -> None:
    p = ClientPrivacy(1.5, 0.2, 0.1, True)
    assert ClientPrivacy.from_values(p.to_values()) == p
    assert ClientPrivacy.from_values({}) is None
    for bad in ({"clip": 0.0}, {"clip": -1.0}, {"clip": math.inf}, {"clip": 1.0, "noise_std": -0.1},
                {"clip": 1.0, "noise_std": math.nan}):
        with pytest.raises(ConfigError, match="train instruction dp-"):
            ClientPrivacy(**bad)  # type: ignore[arg-type]
