"""Paired comparisons of two systems over seeds and test utterances: a two-level bootstrap interval.

A study trains each recipe once per seed and decodes the same test utterances with every model.
The difference of a corpus-level rate (errors / reference units) between recipes x and y then
varies for two reasons: the seed (training noise) and the finite test set. `paired_difference`
resamples both, keeping the pairing: each replicate draws seeds with replacement (the same seeds
for x and y) and utterances with replacement (the same utterances for x and y and for every
seed), and takes the mean over the drawn seeds of rate_x - rate_y. Its percentile interval is
the 95% interval reported. A figure measured once per model (CKA, NSE, PAI) is the case of a
single "utterance" with one unit: then only the seeds are resampled, and with n seeds the
interval cannot be narrower than the spread of the n paired differences allows.

`verdict` reads an interval against a claim's expected direction: "reproduces" when the whole
interval lies on the claimed side of 0, "does not" when it lies on the other side, "undecided"
when it spans 0.
"""

from __future__ import annotations

import numpy as np


def paired_difference(err_x, units_x, err_y, units_y, *, reps: int = 4000, level: float = 0.95,
                      seed: int = 0) -> dict:
    """Mean over seeds of rate_x - rate_y, with its two-level paired bootstrap interval.

    err_*, units_*: (S, U) arrays, seed s and utterance u: error count and reference units (for a
    rate per clip, such as non-speech emission, units are 1). S seeds and U utterances must be
    the same for x and y, in the same order. Returns {"diff", "low", "high", "per_seed", "seeds",
    "utterances", "reps", "level"}.
    """
    ex, ux, ey, uy = (np.asarray(a, np.float64) for a in (err_x, units_x, err_y, units_y))
    if ex.ndim != 2 or not (ex.shape == ux.shape == ey.shape == uy.shape):
        raise ValueError(f"paired_difference: err/units of x and y must all be (seeds, utterances) of one shape, got "
                         f"{[a.shape for a in (ex, ux, ey, uy)]}")
    n_seeds, n_utts = ex.shape
    if n_seeds == 0 or n_utts == 0:
        raise ValueError("paired_difference: no seeds or no utterances to compare")
    if (ux.sum(1) <= 0).any() or (uy.sum(1) <= 0).any():
        raise ValueError("paired_difference: a seed has no reference units (every rate needs a denominator)")
    per_seed = ex.sum(1) / ux.sum(1) - ey.sum(1) / uy.sum(1)
    rng = np.random.default_rng(seed)
    diffs = np.empty(reps)
    for r in range(reps):
        w = np.bincount(rng.integers(0, n_utts, n_utts), minlength=n_utts).astype(np.float64)  # utterance weights
        s = rng.integers(0, n_seeds, n_seeds)
        # rates of the drawn utterances, for every seed; a draw with no units (all-empty refs) counts as rate 0
        rx = (ex @ w) / np.maximum(ux @ w, 1e-12)
        ry = (ey @ w) / np.maximum(uy @ w, 1e-12)
        diffs[r] = float(np.mean((rx - ry)[s]))
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return {"diff": float(per_seed.mean()), "low": float(low), "high": float(high),
            "per_seed": [float(d) for d in per_seed], "seeds": n_seeds, "utterances": n_utts, "reps": reps,
            "level": level}


def verdict(low: float, high: float, expect: str) -> str:
    """'reproduces' / 'does not' / 'undecided' for a claim that x - y is `expect` ('lower' or 'higher') than 0."""
    if expect not in ("lower", "higher"):
        raise ValueError(f"verdict: expect must be 'lower' or 'higher', got {expect!r}")
    if low > high:
        raise ValueError(f"verdict: interval [{low}, {high}] is empty")
    below, above = high < 0, low > 0
    if not (below or above):
        return "undecided"
    return "reproduces" if below == (expect == "lower") else "does not"
