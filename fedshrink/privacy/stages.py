"""DP-FedAvg's aggregation stages: uniform weights and clipping, then Gaussian noise calibrated per coordinate.

Both read the round's bound and noise multiplier from the
:class:`~fedshrink.privacy.server.PrivacyController` (the adaptive bound
changes between rounds).

* :class:`UniformClip` (a Transform): every holder weighs 1 -- a claimed
  sample count is the client's private, unbounded input, and a weight it
  chose would scale its influence past ``C``. In central mode it also clips
  each decoded update to ``C`` over the coordinates it held (a no-op for
  clients that clipped as asked, the guarantee for those that did not).
* The combiner stays :class:`~fedshrink.strategy.stages.HolderMean`: with
  weights 1 it is ``mean_j = S_j / n_j``, ``S_j = sum_i h_ij v_ij`` over the
  ``n_j`` clients that held coordinate ``j`` (fragments and prune masks are
  fixed by the server and the devices, never by the data, so ``n_j`` is public).
* :class:`HolderNoise` (a Perturb), central mode: ``N(0, (z_delta C / n_j)^2)``
  on each coordinate anyone held, i.e. ``N(0, (z_delta C)^2)`` on the sum
  ``S``, whose L2 sensitivity to one client is ``C`` (``2C`` replacing one);
  at full width ``n_j = m`` and this is Flower's ``sigma C / m``. In
  distributed mode the noise came with the replies; the stage records the
  fewest holders of a coordinate, which sets the noise the sum actually got.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedshrink.strategy.batch import BoolArray, FloatArray, UpdateBatch
from fedshrink.strategy.stages import Perturb, RoundContext, Transform

if TYPE_CHECKING:
    from fedshrink.privacy.controller import PrivacyController


def clip_rows(values: npt.NDArray[np.floating], bound: float) -> tuple[FloatArray, FloatArray]:
    """Every row ``(n, D)`` scaled by ``min(1, bound / ||row||)`` (float64), and the rows' norms before."""
    v = np.asarray(values, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", v, v))
    scale = np.divide(bound, norms, out=np.ones_like(norms), where=norms > bound)
    return v * scale[:, None], norms


def holder_noise_std(holders: npt.NDArray[np.integer], multiplier: float, clip: float) -> FloatArray:
    """Per coordinate ``multiplier * clip / n_j`` (0 where nobody held it)."""
    n = np.asarray(holders, dtype=np.float64)
    return np.divide(multiplier * clip, n, out=np.zeros_like(n), where=n > 0)


class UniformClip(Transform):
    name = "dp-clip"

    def __init__(self, controller: PrivacyController) -> None:
        self.controller = controller

    def apply(self, batch: UpdateBatch, ctx: RoundContext) -> tuple[UpdateBatch, dict[str, Any]]:
        clip = self.controller.clip
        note: dict[str, Any] = {"clip": clip, "weights": "uniform"}
        if self.controller.central:
            values, norms = clip_rows(batch.values, clip)
            batch = batch.with_values(values)  # over by more than float rounding: a client that did not clip
            note["reclipped"] = [batch.clients[int(i)] for i in np.flatnonzero(norms > clip * (1 + 1e-6))]
        return batch.with_weights(np.ones(len(batch))), note


class HolderNoise(Perturb):
    name = "dp-noise"

    def __init__(self, controller: PrivacyController) -> None:
        self.controller = controller

    def perturb(self, delta: FloatArray, voted: BoolArray, batch: UpdateBatch, ctx: RoundContext
                ) -> tuple[FloatArray, dict[str, Any]]:
        ctl = self.controller
        holders = batch.held.sum(axis=0)
        fewest = int(holders[voted].min()) if voted.any() else 0
        ctl.record_release(fewest_holders=fewest, replies=len(batch))
        note: dict[str, Any] = {"holders-min": fewest, "holders-max": int(holders.max()) if holders.size else 0}
        if not ctl.central:
            return delta, {**note, "noise": "added by the clients (distributed mode)",
                           "client-noise-std": ctl.client_privacy().noise_std}
        std = holder_noise_std(np.where(voted, holders, 0), ctl.update_multiplier, ctl.clip)
        if ctl.update_multiplier > 0:
            delta = delta + ctl.standard_normal(ctx.server_round, delta.shape[0]) * std
        return delta, {**note, "noise": "std_j = z_delta * C / n_j, n_j = clients that held coordinate j",
                       "z-delta": ctl.update_multiplier, "clip": ctl.clip,
                       "std-min": float(std[voted].min()) if voted.any() else 0.0,
                       "std-max": float(std[voted].max()) if voted.any() else 0.0}
