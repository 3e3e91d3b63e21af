"""The out-of-distribution threshold keeps its promise on images the profile never saw,
over many seeds and held-out sizes: the share of new in-distribution images warned
about stays within the bound the profile records (the conformal rule), where the
plain 99th percentile of a small held-out split warned on several times its 1 %."""

from __future__ import annotations

import numpy as np
import pytest

from training.profile import conformal_threshold, fit_profile

SEEDS = range(40)


def draws(seed: int, held_out: int, dims: int = 16):
    """Fit, held-out and new images' features, all from one distribution."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dims, dims)) / np.sqrt(dims)
    sample = lambda n: rng.standard_normal((n, dims)) @ mixing + 2.0  # noqa: E731
    return sample(300), sample(held_out), sample(3000)


@pytest.mark.parametrize("held_out", [20, 50, 200])
def test_false_warnings_stay_within_the_recorded_bound(held_out):
    rates, bounds = [], []
    for seed in SEEDS:
        fit, held, new = draws(seed, held_out)
        profile = fit_profile(fit, held, "0" * 64)
        rates.append(float(np.mean(profile.distances(new) > profile.threshold)))
        bounds.append(1 - profile.percentile / 100)
    assert len(set(bounds)) == 1  # the bound depends on the held-out count alone
    assert np.mean(rates) <= bounds[0] + 0.006, (np.mean(rates), bounds[0])
    assert bounds[0] <= max(0.02, 1 / (held_out + 1)) + 1e-4


def test_the_old_percentile_rule_broke_its_promise_on_small_splits():
    """Why the rule changed: the 99th percentile of 20 distances, 1 % promised."""
    rates = []
    for seed in SEEDS:
        fit, held, new = draws(seed, 20)
        profile = fit_profile(fit, held, "0" * 64)
        old = np.percentile(profile.distances(held), 99)
        rates.append(float(np.mean(profile.distances(new) > old)))
    assert np.mean(rates) > 0.03  # several times the 1 % it promised


@pytest.mark.parametrize("n, rate, rank", [(20, 0.02, 20), (49, 0.02, 49), (99, 0.02, 98),
                                           (199, 0.05, 190), (1, 0.02, 1)])
def test_the_conformal_rank(n, rate, rank):
    distances = np.arange(1, n + 1, dtype=float)[::-1]
    threshold, coverage = conformal_threshold(distances, rate)
    assert threshold == rank and coverage == pytest.approx(rank / (n + 1))
