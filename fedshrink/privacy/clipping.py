"""Clipping maths, pure: an update's L2 norm, the clip factor, adaptive clipping and its noise split.

* Flat clipping (McMahan et al., ICLR 2018, "Learning Differentially Private
  Recurrent Language Models"): ``x <- x * min(1, C / ||x||_2)``, the norm
  taken jointly over every tensor of the update.
* Adaptive clipping (Andrew et al., NeurIPS 2021, "Differentially Private
  Learning with Adaptive Clipping"): each client reports ``b_i = 1[||x_i|| <= C]``;
  the server estimates the share within the bound as
  ``b~ = (sum_i b_i + N(0, sigma_b^2)) / m`` and moves the bound geometrically,
  ``C <- C * exp(-eta * (b~ - gamma))``, towards the ``gamma`` quantile of the
  update norms.
* The privacy of one round of both releases together equals that of one
  Gaussian mechanism of noise multiplier ``z`` when the updates get
  ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (Andrew et al., Theorem 1 and
  Section 3.1; requires ``z < 2 sigma_b``); the paper suggests ``sigma_b = m / 20``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import torch


def l2_norm(tensors: Iterable[torch.Tensor | npt.NDArray[np.floating]]) -> float:
    """``sqrt(sum_k ||t_k||^2)`` over the floating-point tensors, accumulated in float64."""
    total = 0.0
    for t in tensors:
        a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        if np.issubdtype(a.dtype, np.floating):
            flat = a.reshape(-1).astype(np.float64)
            total += float(np.einsum("i,i->", flat, flat))  # np.dot goes through BLAS threads: 50x slower here
    return math.sqrt(total)


def clip_factor(norm: float, bound: float) -> float:
    """``min(1, bound / norm)`` (1 for a zero update)."""
    if bound <= 0:
        raise ValueError(f"clip bound must be > 0, got {bound}")
    return 1.0 if norm <= bound else bound / norm


def adaptive_clip(clip: float, within_share: float, quantile: float, lr: float) -> float:
    """The next bound ``C * exp(-lr * (within_share - quantile))`` (geometric update, Andrew et al. eq. 3)."""
    return clip * math.exp(-lr * (within_share - quantile))


def default_count_std(clients_per_round: int) -> float:
    """``sigma_b = m / 20``, the noise on the count of clients within the bound that Andrew et al. suggest."""
    return clients_per_round / 20.0


def update_noise_multiplier(z: float, count_std: float) -> float:
    """``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``: the updates' share of a total multiplier ``z``.

    ``z = 0`` (no noise) gives 0; raises :class:`ValueError` when ``z >= 2 sigma_b``
    (the count's noise alone would need more privacy than the whole round has).
    """
    if z == 0:
        return 0.0
    if count_std <= 0 or z >= 2 * count_std:
        raise ValueError(f"noise multiplier {z:g} needs a count noise above {z / 2:g} (it is {count_std:g})")
    return float((z ** -2 - (2 * count_std) ** -2) ** -0.5)
