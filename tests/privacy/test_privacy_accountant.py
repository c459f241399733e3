"""The accountant: a published figure, the replace-one convention, calibration, and the ledger."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import rdp

from fedshrink.privacy.accountant import (
    ORDERS,
    Ledger,
    RoundEvent,
    calibrate,
    epsilon_of,
    local_epsilon,
    poisson_epsilon,
)
from fedshrink.privacy.clipping import adaptive_clip, update_noise_multiplier
from fedshrink.privacy.controller import combine


def test_published_figure_abadi_2016() -> None:
    """Abadi et al. (CCS 2016): q = 0.01, sigma = 4, 10,000 steps, delta = 1e-5 gives epsilon 1.26 with the
    moments accountant; Renyi DP is a tighter analysis of the same mechanism, so it may not exceed it."""
    eps = poisson_epsilon(0.01, 4.0, 10_000, 1e-5)
    assert 0.9 < eps <= 1.26


def test_full_sample_is_the_gaussian_mechanism_at_half_the_multiplier() -> None:
    """m = N: no amplification, and replace-one sensitivity 2C makes z C noise a multiplier z / 2."""
    ours = epsilon_of({RoundEvent(50, 50, 3.0): 4}, 1e-5)
    acc = rdp.RdpAccountant(orders=ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.GaussianDpEvent(1.5), 4)
    assert ours == pytest.approx(acc.get_epsilon(1e-5))


def test_epsilon_grows_with_rounds_and_sampling_and_falls_with_noise() -> None:
    base = epsilon_of({RoundEvent(1000, 100, 2.0): 10}, 1e-3)
    assert epsilon_of({RoundEvent(1000, 100, 2.0): 20}, 1e-3) > base
    assert epsilon_of({RoundEvent(1000, 200, 2.0): 10}, 1e-3) > base
    assert epsilon_of({RoundEvent(1000, 100, 4.0): 10}, 1e-3) < base
    assert epsilon_of({RoundEvent(1000, 100, 0.0): 1}, 1e-3) == math.inf
    assert epsilon_of({}, 1e-3) == 0.0


def test_calibration_spends_the_target() -> None:
    z = calibrate(200, 20, 10, 4.0, 1e-3)
    assert epsilon_of({RoundEvent(200, 20, z): 10}, 1e-3) <= 4.0
    assert epsilon_of({RoundEvent(200, 20, z * 0.99): 10}, 1e-3) > 4.0


def test_ledger_composes_and_round_trips() -> None:
    ledger = Ledger()
    a, b = RoundEvent(100, 10, 1.5), RoundEvent(100, 10, 2.5)
    ledger.compose(a)
    ledger.compose(b, 2)
    assert ledger.rounds == 3
    assert ledger.epsilon_after(a, 1e-2) == pytest.approx(epsilon_of({a: 2, b: 2}, 1e-2))
    again = Ledger.from_state(ledger.to_state())
    assert again.counts == ledger.counts and again.epsilon(1e-2) == ledger.epsilon(1e-2)


def test_local_epsilon_of_gaussian_releases() -> None:
    """Two releases of multiplier 2 compose to one of multiplier sqrt(2)."""
    expected = dp_accounting.get_epsilon_gaussian(math.sqrt(2.0), 1e-5)
    assert local_epsilon(2 * 2.0 ** -2, 1e-5) == pytest.approx(expected)
    assert local_epsilon(0.0, 1e-5) == 0.0 and local_epsilon(math.inf, 1e-5) == math.inf


def test_adaptive_clipping_maths() -> None:
    """Andrew et al.: geometric step; the update multiplier that leaves the total at z."""
    assert adaptive_clip(1.0, 0.5, 0.5, 0.2) == 1.0
    assert adaptive_clip(1.0, 0.0, 0.5, 0.2) == pytest.approx(math.exp(0.1))  # nobody within: grow
    z_delta = update_noise_multiplier(1.0, 5.0)
    assert combine(z_delta, 2 * 5.0) == pytest.approx(1.0)
    assert update_noise_multiplier(0.0, 5.0) == 0.0
    with pytest.raises(ValueError, match="count noise"):
        update_noise_multiplier(2.0, 1.0)
