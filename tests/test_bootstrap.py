"""entropy_asr.metrics.bootstrap: paired differences with a two-level bootstrap interval, and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from entropy_asr.metrics.bootstrap import paired_difference, verdict


def test_identical_systems_differ_by_exactly_zero():
    rng = np.random.default_rng(0)
    err = rng.integers(0, 5, (3, 50)).astype(float)
    units = rng.integers(5, 10, (3, 50)).astype(float)
    d = paired_difference(err, units, err, units, reps=500)
    assert d["diff"] == d["low"] == d["high"] == 0.0
    assert verdict(d["low"], d["high"], "lower") == "undecided"


def test_a_constant_rate_shift_gives_a_point_interval_at_the_shift():
    # x makes exactly 0.1 more errors per reference unit on every utterance of every seed
    rng = np.random.default_rng(1)
    units = rng.integers(10, 20, (4, 30)).astype(float)
    err_y = np.floor(units * rng.uniform(0, 0.5, units.shape))
    err_x = err_y + 0.1 * units
    d = paired_difference(err_x, units, err_y, units, reps=500)
    assert d["diff"] == pytest.approx(0.1) and d["low"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.1)
    assert d["per_seed"] == pytest.approx([0.1] * 4)


def test_corpus_level_rates_not_means_of_utterance_rates():
    # seed 0: x 1 error in 1 unit + 0 in 9 units = 10%; y 0 errors: difference 0.1 (a mean of ratios would say 0.5)
    err_x, units = np.array([[1.0, 0.0]]), np.array([[1.0, 9.0]])
    d = paired_difference(err_x, units, np.zeros((1, 2)), units, reps=100)
    assert d["diff"] == pytest.approx(0.1)


def test_two_seeds_one_value_each_has_the_known_bootstrap_distribution():
    # seed differences 0 and 1; resampling 2 of 2 seeds: means 0 (1/4), 0.5 (1/2), 1 (1/4)
    x = np.array([[0.0], [1.0]])
    d = paired_difference(x, np.ones((2, 1)), np.zeros((2, 1)), np.ones((2, 1)), reps=4000, seed=3)
    assert d["diff"] == pytest.approx(0.5)
    assert d["low"] == 0.0 and d["high"] == 1.0  # the 2.5% and 97.5% points of that distribution


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
    # 200 simulated studies (fixed seeds: deterministic): 3 seeds x 100 utterances, true rate difference 0.05,
    # seed effects N(0, 0.02); the two-level interval should cover 0.05 in roughly 95% of them
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(200):
        units = np.full((3, 100), 20.0)
        base = rng.uniform(0.2, 0.4, 100)
        px = np.clip(base[None] + 0.05 + rng.normal(0, 0.02, (3, 1)), 0, 1)
        py = np.clip(base[None] + rng.normal(0, 0.02, (3, 1)), 0, 1)
        d = paired_difference(rng.binomial(20, px), units, rng.binomial(20, py), units, reps=400, seed=trial)
        covered += d["low"] <= 0.05 <= d["high"]
    assert 0.80 <= covered / 200 <= 1.0  # percentile bootstrap with 3 seeds is somewhat narrow; never wildly so


def test_verdicts_read_the_interval_against_the_expected_direction():
    assert verdict(-0.3, -0.1, "lower") == "reproduces"
    assert verdict(0.1, 0.3, "lower") == "does not"
    assert verdict(-0.1, 0.2, "lower") == "undecided"
    assert verdict(0.1, 0.3, "higher") == "reproduces"
    assert verdict(-0.3, -0.1, "higher") == "does not"
    with pytest.raises(ValueError, match="expect"):
        verdict(0, 1, "better")
    with pytest.raises(ValueError, match="empty"):
        verdict(1, 0, "lower")


def test_mismatched_shapes_and_empty_denominators_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        paired_difference(np.zeros((2, 3)), np.ones((2, 3)), np.zeros((2, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="denominator"):
        paired_difference(np.zeros((1, 3)), np.zeros((1, 3)), np.zeros((1, 3)), np.ones((1, 3)))
