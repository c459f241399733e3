"""Keeping the global model right under attack, dropouts and crashes (issue 8).

* :mod:`.rules` -- robust aggregation maths, per coordinate over the clients that held it (pure);
* :mod:`.fold` -- client contributions in global coordinates, folded through stages (pure);
* :mod:`.defences` -- median, trimmed mean, Bulyan, clipping, Multi-Krum, FLTrust: configs in a registry;
* :mod:`.wrappers` -- the defences as Strategy wrappers (``RobustAggregation(strategy, rule)``);
* :mod:`.attacks` -- simulated malicious clients (sign flip, Gaussian, label flip, ALIE);
* :mod:`.faults` -- simulated dropouts;
* :mod:`.checkpoint` -- atomic server checkpoints and resume.

``fedshrink.robust.wrappers`` imports the Strategy; import it by its module path.
"""

from fedshrink.robust.attacks import ATTACK_NAMES, ATTACKS, AttackConfig, attack_from_json, malicious_partitions
from fedshrink.robust.defences import DEFENCES, DefenceConfig, DefenceEnv, defence_from_json, parse_defence
from fedshrink.robust.faults import ClientDropout, drops_out
from fedshrink.robust.fold import ClientContribution, robust_fold
from fedshrink.robust.rules import UpdateBatch

__all__ = [
    "ATTACKS",
    "ATTACK_NAMES",
    "DEFENCES",
    "AttackConfig",
    "ClientContribution",
    "ClientDropout",
    "DefenceConfig",
    "DefenceEnv",
    "UpdateBatch",
    "attack_from_json",
    "defence_from_json",
    "drops_out",
    "malicious_partitions",
    "parse_defence",
    "robust_fold",
]
