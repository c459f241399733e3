"""Settings of the federation: rounds, sampling, time-outs, the run's seed, and reply checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.settings import Section, at_least, between, greater_than, option


@dataclass(frozen=True)
class FederationSettings(Section):
    title: ClassVar[str] = "federation"

    num_server_rounds: int = option(40, "federated rounds", rule=at_least(1))
    fraction_train: float = option(1.0, "share of connected clients sampled each round",
                                   rule=between(0, 1, lo_open=True))
    min_train_clients: int = option(
        2, "fewest clients sampled, and fewest good replies a round needs (else the round is skipped, not crashed)",
        rule=at_least(1))
    round_timeout: float = option(600.0, "seconds to wait for replies (and for clients to connect)",
                                  rule=greater_than(0))
    seed: int = option(42, "seeds splits, partitions, model init, sampling and local shuffling", rule=at_least(0))
    max_reply_bytes: int = option(
        0, "a reply larger than this (serialized) is dropped before decoding; 0 = only the decoder's caps",
        rule=at_least(0).noting("0 = only the decoder's caps"))
