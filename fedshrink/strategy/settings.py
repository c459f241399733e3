"""Settings of the federation: rounds, sampling, time-outs, the run's seed, reply checks, and the server's step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.settings import Section, at_least, between, greater_than, option


@dataclass(frozen=True)
class FederationSettings(Section):
    title: ClassVar[str] = "federation"

    num_server_rounds: int = option(20, "federated rounds", rule=at_least(1))
    fraction_train: float = option(1.0, "share of connected clients sampled each round",
                                   rule=between(0, 1, lo_open=True))
    clients_per_round: int = option(
        0, "clients sampled each round from all connected ones (cross-device); 0 = fraction-train of them",
        rule=at_least(0).noting("0 = fraction-train"))
    min_train_clients: int = option(
        2, "fewest clients sampled, and fewest good replies a round needs (else the round is skipped, not crashed)",
        rule=at_least(1))
    round_timeout: float = option(600.0, "seconds to wait for replies (and for clients to connect)",
                                  rule=greater_than(0))
    seed: int = option(42, "seeds splits, partitions, model init, sampling and local shuffling", rule=at_least(0))
    reply_size_factor: float = option(
        2.0, "a reply may be at most this many times the fp32 size of the fragment it updates, plus 64 kB for "
        "metrics and headers; larger ones are dropped before decoding, and decoding allocates no more",
        rule=greater_than(0))
    max_reply_bytes: int = option(
        0, "an absolute cap on a reply's serialized size, on top of reply-size-factor",
        rule=at_least(0).noting("0 = only reply-size-factor"))
    examples_fence: float = option(
        3.0, "a claimed sample count more than this many times the round's median claim is capped at the largest "
        "claim within it (so no client outweighs the largest plausible one)", rule=at_least(0).noting("0 = off"))
    update_limit: float = option(
        100.0, "drop an update whose L2 norm is more than this many times the norm of the model (or fragment) "
        "it updates", rule=at_least(0).noting("0 = off"))
    server_lr: float = option(
        0.0, "the server's step: the global model moves by this many times the combined update (1 = FedAvg); "
        "0 = auto: 2 when clients train fragments (a profile-mix or budget-mix), 1 when every client trains the "
        "full model", rule=between(0, 10).noting("0 = auto"))
