"""At full width with raw chains, fedshrink's clipping and noise give the aggregate of Flower's DP wrappers.

Same replies, same noise: Flower's noise function is patched to add ``std * G`` for a known standard-normal
``G``, and the controller draws the same ``G``. Weights are equal (Flower's accounted mode requires it too;
fedshrink always weighs holders equally under DP).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)
from flwr.serverapp.strategy import dp_fixed_clipping as flower_dp
from privacy_harness import make_private
from strategy_harness import HelloGrid, first_round, model_state, reply_to

from fedshrink.compression import Chain
from fedshrink.privacy.client import ClientPrivacy, private_uplink
from fedshrink.protocol import TrainReply
from fedshrink.runner.inprocess import server_identity

CLIP, M = 0.8, 4


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity(run_id=31):
        yield


def replies_of(glob: dict[str, np.ndarray], seed: int) -> list[dict[str, np.ndarray]]:
    """Updates of norms around 1-3: most are over the bound."""
    rng = np.random.default_rng(seed)
    return [{k: (rng.normal(0, 0.1 * (i + 1), v.shape)).astype(np.float32) for k, v in glob.items()}
            for i in range(M)]


def flower_reply(msg: Message, glob: dict[str, np.ndarray], update: dict[str, np.ndarray]) -> Message:
    trained = ArrayRecord({k: Array(glob[k] + update[k]) for k in glob})
    return Message(RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)


def known_noise(glob: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch, strategy: object) -> None:
    """Both sides add ``std * G`` for the same ``G``."""
    gs = [np.random.default_rng(i).standard_normal(v.shape) for i, v in enumerate(glob.values())]

    def flower_noise(arrays: list[np.ndarray], std: float) -> None:
        for a, g in zip(arrays, gs, strict=True):
            a += (std * g).astype(a.dtype)

    monkeypatch.setattr(flower_dp, "add_gaussian_noise_inplace", flower_noise)
    monkeypatch.setattr(strategy.privacy, "standard_normal",  # type: ignore[attr-defined]
                        lambda rnd, size: np.concatenate([g.reshape(-1) for g in gs]))


def assert_same(mine: ArrayRecord | None, theirs: ArrayRecord | None, glob: dict[str, np.ndarray]) -> None:
    assert mine is not None and theirs is not None
    for k in glob:
        np.testing.assert_allclose(mine[k].numpy(), theirs[k].numpy(), rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(mine[k].numpy(), glob[k]) for k in glob)


@pytest.mark.parametrize("z", [0.0, 1.3])
def test_server_side_fixed_clipping(z: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unclipped raw replies: fedshrink's server clip + noise = DifferentialPrivacyServerSideFixedClipping."""
    glob = model_state()
    s = make_private(dp_mode="central", dp_clip=CLIP, dp_noise_multiplier=z)
    msgs = first_round(s, HelloGrid(list(range(1, M + 1))), glob)
    updates = replies_of(glob, 0)
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(fraction_evaluate=0.0), z, CLIP, M)
    dp.current_arrays = ArrayRecord({k: Array(v) for k, v in glob.items()})
    known_noise(glob, monkeypatch, s)
    theirs, _ = dp.aggregate_train(1, [flower_reply(m, glob, u) for m, u in zip(msgs, updates, strict=True)])
    mine, _ = s.aggregate_train(1, [reply_to(m, u, pid=i) for i, (m, u) in enumerate(zip(msgs, updates,
                                                                                          strict=True))])
    assert_same(mine, theirs, glob)
    assert s.outcomes[-1].notes["dp-clip"]["reclipped"]  # the server clipped what the clients did not


@pytest.mark.parametrize("z", [0.0, 1.3])
def test_client_side_fixed_clipping(z: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """fedshrink's client step + server noise = fixedclipping_mod + DifferentialPrivacyClientSideFixedClipping."""
    glob = model_state()
    s = make_private(dp_mode="central", dp_clip=CLIP, dp_noise_multiplier=z)
    msgs = first_round(s, HelloGrid(list(range(1, M + 1))), glob)
    updates = replies_of(glob, 1)
    ours, theirs_in = [], []
    for i, (msg, u) in enumerate(zip(msgs, updates, strict=True)):
        rng = np.random.default_rng(i)
        private = private_uplink({k: torch.from_numpy(v) for k, v in u.items()}, Chain.parse("raw"),
                                 ClientPrivacy(CLIP), masks={}, residuals=None, rng=rng, noise_rng=rng, round=1)
        ours.append(TrainReply(i, 10, private.record, 1.0, 1, 0.1, dp_within=private.within).to_message(msg))
        down = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in glob.items()}),
                                   "config": ConfigRecord({"clipping_norm": CLIP})}), dst_node_id=i + 1,
                       message_type="train")
        ctx = Context(run_id=31, node_id=i + 1, node_config={}, state=RecordDict(), run_config={})
        theirs_in.append(fixedclipping_mod(down, ctx, lambda m, c, u=u: flower_reply(m, glob, u)))  # type: ignore[misc]
    known_noise(glob, monkeypatch, s)
    theirs, _ = DifferentialPrivacyClientSideFixedClipping(FedAvg(fraction_evaluate=0.0), z, CLIP,
                                                           M).aggregate_train(1, theirs_in)
    mine, _ = s.aggregate_train(1, ours)
    assert_same(mine, theirs, glob)
    assert s.outcomes[-1].notes["dp-clip"]["reclipped"] == []  # the clients clipped
