"""Simulated attacks and dropouts: registry, determinism, client-side effects, residuals that survive."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, Message

from fedshrink.client_app import app as client_app
from fedshrink.compression import ResidualStore
from fedshrink.config import RunConfig
from fedshrink.data import LabelledArrays
from fedshrink.errors import ConfigError
from fedshrink.report import RunDirectory
from fedshrink.robust import ATTACKS, attack_from_json, drops_out, malicious_partitions
from fedshrink.robust.attacks import AlieConfig, AttackContext, GaussianConfig, LabelFlipConfig, SignFlipConfig, alie_z
from fedshrink.robust.faults import ClientDropout
from fedshrink.runner import run_inprocess
from fedshrink.runner.state import state_slot


def _ctx(retrain: Any = None) -> AttackContext:
    return AttackContext(torch.Generator().manual_seed(0), 20, 4, retrain)


def test_attack_configs_round_trip_and_refuse_bad_values() -> None:
    for name, cls in ATTACKS.items():
        assert attack_from_json(cls().to_json()) == cls() and cls.name == name
    with pytest.raises(ConfigError, match="attack-scale"):
        SignFlipConfig(scale=0)
    with pytest.raises(ConfigError, match="attack-samples"):
        AlieConfig(samples=1)
    with pytest.raises(ConfigError, match="attack"):
        attack_from_json({"name": "backdoor"})
    cfg = RunConfig.from_mapping({"attack": "gaussian", "attack-noise-std": 0.5})
    assert cfg.robust.attack_config() == GaussianConfig(0.5)
    assert RunConfig().robust.attack_config() is None


def test_update_attacks() -> None:
    u = {"w": torch.tensor([1.0, -2.0]), "n": torch.tensor(3)}
    flipped = SignFlipConfig(4.0).poison_update(u, _ctx())
    assert flipped["w"].tolist() == [-4.0, 8.0] and int(flipped["n"]) == 3
    noise = GaussianConfig(2.0).poison_update({"w": torch.zeros(10_000)}, _ctx())["w"]
    assert 1.9 < float(noise.std()) < 2.1
    again = GaussianConfig(2.0).poison_update({"w": torch.zeros(10_000)}, _ctx())["w"]
    assert torch.equal(noise, again)  # seeded


def test_label_flip_poisons_labels_only() -> None:
    data = LabelledArrays(np.zeros((4, 1, 2, 2), np.float32), np.array([0, 1, 8, 9], np.int64))
    out = LabelFlipConfig().poison_data(data, 10)
    assert out.y.tolist() == [9, 8, 1, 0] and out.x is data.x


def test_alie_is_mean_minus_z_std_of_the_attackers_estimates() -> None:
    extra = [{"w": torch.tensor([2.0, 0.0])}, {"w": torch.tensor([3.0, 0.0])}]
    out = AlieConfig(z=1.0, samples=3).poison_update({"w": torch.tensor([1.0, 0.0])}, _ctx(lambda k: extra[k - 1]))
    assert out["w"].tolist() == pytest.approx([2.0 - 1.0, 0.0])
    assert alie_z(20, 4) == pytest.approx(0.3853, abs=1e-3)  # s = 7, Phi^-1(13/20)
    assert alie_z(50, 24) > alie_z(50, 5)


def test_malicious_partitions_are_deterministic() -> None:
    a = malicious_partitions(20, 0.2, seed=1)
    assert len(a) == 4 and a == malicious_partitions(20, 0.2, seed=1) and a != malicious_partitions(20, 0.2, seed=2)
    assert malicious_partitions(20, 0.0, seed=1) == frozenset()
    with pytest.raises(ConfigError, match="attack-fraction"):
        malicious_partitions(20, 1.5, seed=1)


def test_dropout_draws_are_seeded_and_near_the_rate() -> None:
    draws = [drops_out(7, r, p, 0.3) for r in range(1, 51) for p in range(20)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert draws == [drops_out(7, r, p, 0.3) for r in range(1, 51) for p in range(20)]
    assert not any(drops_out(7, r, 0, 0.0) for r in range(100))
    with pytest.raises(ConfigError, match="dropout-rate"):
        drops_out(1, 1, 1, 1.0)


class RecordingClient:
    """Wraps the ClientApp: the residual each node holds before every delivery, and whether it dropped."""

    def __init__(self, client_state: str) -> None:
        self.client_state = client_state
        self.log: list[tuple[int, int, bool, dict[str, torch.Tensor]]] = []

    def __call__(self, msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])  # type: ignore[call-overload]
        if msg.metadata.message_type != "train":
            return client_app(msg, context)
        rnd = int(msg.content.config_records["config"]["server-round"])
        store = ResidualStore.load(state_slot(self.client_state, "none", context, str(pid)).load(rnd))
        before = {k: store.get(k).clone() for k in store}  # type: ignore[union-attr]
        try:
            reply = client_app(msg, context)
        except ClientDropout:
            self.log.append((rnd, pid, True, before))
            raise
        self.log.append((rnd, pid, False, before))
        return reply


@pytest.mark.slow
@pytest.mark.parametrize("client_state", ["disk", "memory"])
def test_dropouts_are_recorded_and_residuals_survive_missed_rounds(quick: dict[str, Any], client_state: str) -> None:
    rec = RecordingClient(client_state)
    result = run_inprocess({**quick, "num-server-rounds": 4, "dropout-rate": 0.4, "uplink-chain": "topk:0.1|int8",
                            "min-train-clients": 1, "client-state": client_state}, num_clients=5,
                           client_app=rec)  # type: ignore[arg-type]
    rounds = RunDirectory(result.run_dir).read_rounds()
    assert result.grid.dropouts == sum(d for _, _, d, _ in rec.log) > 0
    for r in rounds:  # every dropout is recorded with the client (node 1001 + partition) and the reason
        dropped = {d["node-id"] - 1001 for d in r["dropped"]}
        want = {p for rnd, p, d, _ in rec.log if rnd == r["round"] and d}
        assert dropped == want
        assert all(d["reason"] == "no reply before the round timeout" for d in r["dropped"])
        # the partition id is reported once the server has heard from the node
        assert all(d["partition-id"] in (-1, d["node-id"] - 1001) for d in r["dropped"])
    # a node's residual at its next training round equals the one it had when it dropped out
    checked = 0
    by_pid: dict[int, list[tuple[int, bool, dict[str, torch.Tensor]]]] = {}
    for rnd, pid, dropped_, before in rec.log:
        by_pid.setdefault(pid, []).append((rnd, dropped_, before))
    for events in by_pid.values():
        for (_, d0, b0), (_, _, b1) in itertools.pairwise(events):
            if d0 and b0:
                assert b0.keys() == b1.keys() and all(torch.equal(b0[k], b1[k]) for k in b0)
                checked += 1
    assert checked > 0
    assert Counter(d for _, _, d, _ in rec.log)[False] == sum(r["clients-good"] for r in rounds)


def test_robust_settings_fail_with_one_line(tmp_path: Path) -> None:
    for key, bad in (("defence", "krum"), ("attack", "flip"), ("attack-fraction", 1.0), ("dropout-rate", -0.1),
                     ("norm-guard", -1.0), ("max-reply-bytes", -1), ("trim-fraction", 0.5)):
        with pytest.raises(ConfigError) as info:
            RunConfig.from_mapping({key: bad})
        assert str(info.value).startswith(f"invalid setting {key}=") and "\n" not in str(info.value)
