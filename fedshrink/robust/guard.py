"""The norm guard: drop a reply whose update is far larger than the round's others.

For each reply, the RMS of its update over the coordinates it held; a reply
whose RMS lies more than ``z`` robust z-scores above the round's median
(:func:`~fedshrink.robust.rules.robust_zscores`: median and MAD) is dropped,
with that reason, before anything is combined. Needs at least 3 replies;
fewer pass unchecked. Update norms only: an attacker whose norm stays in
the honest range passes.
"""

from __future__ import annotations

import numpy as np

from fedshrink.robust.rules import rms, robust_zscores
from fedshrink.strategy.batch import UpdateBatch
from fedshrink.strategy.stages import RoundContext, Screen


class NormGuard(Screen):
    name = "norm-guard"

    def __init__(self, z: float, *, setting: str = "norm-guard") -> None:
        if not z > 0:
            raise ValueError(f"norm guard z must be > 0, got {z}")
        self.z = z
        self.setting = setting  # named in each drop's reason

    def screen(self, batch: UpdateBatch, ctx: RoundContext) -> dict[int, str]:
        if len(batch) < 3:
            return {}
        values = rms(batch)
        z = robust_zscores(values)
        median = float(np.median(values))
        return {
            int(i): (f"update norm {values[i]:.3g} (RMS per held coordinate) is {z[i]:.1f} robust z-scores above "
                     f"the round's median {median:.3g} ({self.setting} {self.z:g})")
            for i in np.flatnonzero(z > self.z)
        }
