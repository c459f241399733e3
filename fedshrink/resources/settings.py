"""Settings of how a client process runs and is metered, and where it keeps its state between rounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.settings import Section, at_least, between, one_of, option


@dataclass(frozen=True)
class ResourceSettings(Section):
    title: ClassVar[str] = "resources"

    client_threads: int = option(
        1, "torch threads of a ClientApp (small models train fastest on one; more oversubscribe shared cores)",
        rule=at_least(1))
    watts_per_core: float = option(12.0, "W per busy host core for the host energy estimate where no counter "
                                   "is readable", rule=between(0, 1000, lo_open=True))
    client_state: str = option(
        "disk", "where a client keeps its state between rounds (the error-feedback residual of a lossy uplink): "
        "'disk' = a per-run store on disk, memory bounded by one round's clients; 'memory' = Flower's "
        "context.state, held for every client", rule=one_of(("disk", "memory")))
    client_state_dir: str = option(
        "", "directory of the on-disk client state ('' = the run directory's client-state/); a SuperNode's "
        "node-config client-state-dir wins")
    client_state_compress: str = option(
        "none", "lossless compression of each stored client state ('zstd': about 9 % smaller on a top-k "
        "residual, about 2.6 ms more per client)", rule=one_of(("none", "zstd")))
