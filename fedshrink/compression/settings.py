"""Settings of the communication: the codec chains of the downlink and of clients' updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.compression.chain import ChainConfig
from fedshrink.settings import Section, accepted_by, option

CHAIN_WORDS = "a codec chain such as 'raw', 'int8', 'q4|zlib' or 'topk:0.05|int8|zlib'"


@dataclass(frozen=True)
class ChainSettings(Section):
    title: ClassVar[str] = "communication"

    uplink_chain: str = option(
        "raw", "codec chain of client updates (lossy chains keep an error-feedback residual on the client); "
        "with a profile-mix each profile's own chain is used", rule=accepted_by(ChainConfig.parse, CHAIN_WORDS))
    downlink_chain: str = option(
        "raw", "codec chain of the global model sent to clients; with a profile-mix each profile's own chain",
        rule=accepted_by(ChainConfig.parse, CHAIN_WORDS))
    downlink_delta: str = option(
        "", "'' (off), or the codec chain of downlink deltas: each client keeps the model it was sent and is "
        "then sent only what changed, compressed, with error feedback on the server (docs/design.md, Downlink deltas); "
        "downlink-chain, or a profile's downlink chain, then encodes only the first send",
        rule=accepted_by(lambda text: ChainConfig.parse(text) if text else None, f"'' or {CHAIN_WORDS}"))
