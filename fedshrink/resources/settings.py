"""Settings of how a client process runs and is metered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.settings import Section, at_least, between, option


@dataclass(frozen=True)
class ResourceSettings(Section):
    title: ClassVar[str] = "resources"

    client_threads: int = option(
        1, "torch threads of a ClientApp (small models train fastest on one; more oversubscribe shared cores)",
        rule=at_least(1))
    watts_per_core: float = option(12.0, "W per busy host core for the host energy estimate where no counter "
                                   "is readable", rule=between(0, 1000, lo_open=True))
