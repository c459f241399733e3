"""The name of a run in a sweep: a hash of everything that can change its results.

``settings_hash`` = the first 16 hex digits of SHA-256 over the canonical
JSON (sorted keys, no spaces) of ``{"settings": S, "num-clients": N}``, where
``S`` is the resolved :class:`~fedshrink.config.RunConfig` mapping (every
setting, defaults included) less :data:`NON_RESULT_KEYS`, and ``N`` the number
of simulated clients, which is not a run setting but changes the results.

The engine is left out: the in-process and Ray engines give the same
records apart from host-measured fields and message envelopes
(:mod:`fedshrink.report.determinism`; sampled rounds too, since clients are
drawn by partition id); a sweep names its engine once for all its runs.
fedshrink's own code is left out too: after a change that moves results,
sweep into a new directory.
A new setting, or a changed default, changes every hash (its value is part
of ``S``), so runs made before it are not taken for runs made after.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedshrink.config import RunConfig

# settings that change where a run is written or what it shows, not what it computes
NON_RESULT_KEYS: tuple[str, ...] = (
    "output-dir", "run-name", "quiet", "report", "checkpoint", "resume", "tracking", "mlflow-uri",
    "mlflow-experiment",
)
HASH_DIGITS = 16


def result_settings(cfg: RunConfig) -> dict[str, object]:
    """The resolved settings that can change a run's results."""
    return {k: v for k, v in cfg.to_mapping().items() if k not in NON_RESULT_KEYS}


def settings_hash(cfg: RunConfig, num_clients: int) -> str:
    """The run's hash (see the module doc)."""
    text = json.dumps({"settings": result_settings(cfg), "num-clients": num_clients}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_DIGITS]
