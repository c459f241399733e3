"""Keeping the global model right under attack, dropouts and crashes.

* :mod:`.rules` -- robust aggregation maths, per coordinate over the clients that held it (pure);
* :mod:`.defences` -- median, trimmed mean, Bulyan, clipping, Multi-Krum, FLTrust: configs in a registry,
  each building one aggregation stage (:mod:`fedshrink.strategy.stages`);
* :mod:`.guard` -- the norm guard, a stage that drops replies with a reason;
* :mod:`.attacks` -- simulated malicious clients (sign flip, Gaussian, label flip, ALIE);
* :mod:`.faults` -- simulated dropouts;
* :mod:`.checkpoint` -- atomic server checkpoints and resume.
"""

from fedshrink.robust.attacks import ATTACK_NAMES, ATTACKS, AttackConfig, attack_from_json, malicious_partitions
from fedshrink.robust.defences import DEFENCES, DefenceConfig, DefenceEnv, defence_from_json, parse_defence
from fedshrink.robust.faults import ClientDropout, drops_out
from fedshrink.robust.guard import NormGuard

__all__ = [
    "ATTACKS",
    "ATTACK_NAMES",
    "DEFENCES",
    "AttackConfig",
    "ClientDropout",
    "DefenceConfig",
    "DefenceEnv",
    "NormGuard",
    "attack_from_json",
    "defence_from_json",
    "drops_out",
    "malicious_partitions",
    "parse_defence",
]
