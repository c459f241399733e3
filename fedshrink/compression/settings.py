"""Settings of the communication: the codec chains of the downlink and of clients' updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.compression.chain import ChainConfig
from fedshrink.errors import ConfigError
from fedshrink.settings import Section, accepted_by, one_of, option

CHAIN_WORDS = "a codec chain such as 'raw', 'int8', 'q4|zlib' or 'topk:0.05|int8|zlib'"
UPLINK_WORDS = f"{CHAIN_WORDS}, optionally after 'flat|' (one vector for the whole update)"


def optional_chain(text: str) -> ChainConfig | None:
    """'' (off), or a codec chain (``flat|`` allowed)."""
    return ChainConfig.parse(text) if text else None


OPTIONAL_UPLINK = accepted_by(optional_chain, f"'' or {UPLINK_WORDS}")


def downlink_chain(text: str) -> ChainConfig:
    """A downlink chain: any chain but a ``flat`` one (a flat vector is an update's carriage only)."""
    config = ChainConfig.parse(text)
    if config.flat:
        raise ConfigError("chain", text, f"{CHAIN_WORDS} ('flat' is the carriage of updates only)")
    return config


@dataclass(frozen=True)
class ChainSettings(Section):
    title: ClassVar[str] = "communication"

    uplink_chain: str = option(
        "raw", "codec chain of client updates (lossy chains keep an error-feedback residual on the client); "
        "with a profile-mix each profile's own chain is used; a leading 'flat|' sends the update's float tensors "
        "as one vector, one header and one top-k for all (docs/design.md, Flat updates)",
        rule=accepted_by(ChainConfig.parse, UPLINK_WORDS))
    downlink_chain: str = option(
        "raw", "codec chain of the global model sent to clients; with a profile-mix each profile's own chain",
        rule=accepted_by(downlink_chain, CHAIN_WORDS))
    downlink_delta: str = option(
        "", "'' (off), or the codec chain of downlink deltas: each client keeps the model it was sent and is "
        "then sent only what changed, compressed, with error feedback on the server (docs/design.md, Downlink deltas); "
        "downlink-chain, or a profile's downlink chain, then encodes only the first send",
        rule=OPTIONAL_UPLINK)
    downlink_start: str = option(
        "sent", "with downlink-delta, how a client gets the starting model in the run's first round: 'sent' "
        "(through downlink-chain, or its profile's) or 'seed' (it builds the model from the run's seed and checks "
        "a digest; a client whose build differs is sent the whole model next round)", rule=one_of(("sent", "seed")))
