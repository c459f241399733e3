"""Settings of robustness: defences, simulated attacks and faults, the norm guard, checkpoints and resume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.robust.attacks import ATTACK_NAMES, ATTACKS, AttackConfig
from fedshrink.robust.defences import DEFENCES, DefenceConfig, parse_defence
from fedshrink.settings import (
    Section,
    Setting,
    accepted_by,
    at_least,
    between,
    merge_settings,
    one_of,
    option,
    options_from,
    settings_of,
)


def _defence_words() -> str:
    combiners = [n for n, cls in DEFENCES.items() if cls.combines]
    return ("'none' or defences joined by '+' (applied left to right) from " + ", ".join(map(repr, DEFENCES))
            + "; at most one of " + ", ".join(map(repr, combiners)))


@dataclass(frozen=True)
class RobustSettings(Section):
    title: ClassVar[str] = "robustness"

    defence: str = option("none", "robust aggregation stages, e.g. `clip+median`",
                          rule=accepted_by(parse_defence, _defence_words))
    norm_guard: float = option(0.0, "drop a reply whose update RMS is more than this many robust z-scores "
                               "(median/MAD) above the round's", rule=at_least(0).noting("0 = off"))
    attack: str = option("none", "simulated malicious clients (research)", rule=one_of(lambda: ATTACK_NAMES))
    attack_fraction: float = option(0.0, "share of the partitions that attack (chosen from seed)",
                                    rule=between(0, 1, hi_open=True))
    dropout_rate: float = option(0.0, "simulated: each client misses a round with this probability (seeded)",
                                 rule=between(0, 1, hi_open=True))
    checkpoint: bool = option(True, "write the server's state atomically after every round (checkpoint.pt)")
    resume: str = option("", "a run directory: continue that run from its last checkpoint (with its settings)")

    @classmethod
    def extra_settings(cls) -> tuple[Setting, ...]:
        classes = [*DEFENCES.values(), *ATTACKS.values()]
        return merge_settings((settings_of(c) for c in classes), "defences and attacks")

    def defences(self) -> list[DefenceConfig]:
        """The configured defences, in the order they apply."""
        return [options_from(DEFENCES[n], self.extras) for n in parse_defence(self.defence)]

    def attack_config(self) -> AttackConfig | None:
        """The simulated attack (None for ``attack = "none"``)."""
        if self.attack == "none":
            return None
        return options_from(ATTACKS[self.attack], self.extras)
