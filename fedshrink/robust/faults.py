"""Simulated client faults: dropouts decided deterministically from the run's seed.

A client that drops out in a round does not train and does not touch its
``context.state`` (so its error-feedback residual survives the rounds it
misses). The ClientApp raises :class:`ClientDropout` before doing anything;
the in-process Grid turns it into no reply at all (the server sees a node
that did not answer before the round timeout), Flower's runtimes into an
error reply, which the server drops with its reason.
"""

from __future__ import annotations

import numpy as np

from fedshrink.errors import ConfigError, FedShrinkError


class ClientDropout(FedShrinkError):
    """Raised by a ClientApp that simulates being gone this round."""

    def __init__(self, partition_id: int, server_round: int) -> None:
        self.partition_id = partition_id
        self.server_round = server_round
        super().__init__(f"simulated dropout of partition {partition_id} in round {server_round}")


def drops_out(seed: int, server_round: int, partition_id: int, rate: float) -> bool:
    """Whether a partition is gone in a round (independent draws, probability ``rate``)."""
    if not 0.0 <= rate < 1.0:
        raise ConfigError("dropout-rate", rate, "a number in [0, 1)")
    if rate == 0.0:
        return False
    return bool(np.random.default_rng([seed, server_round, partition_id, 0xD209]).random() < rate)
