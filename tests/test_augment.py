"""Augmentations: speed perturbation, silence padding, noise at a target SNR, SpecAugment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entropy_asr.data.augment import (AugmentConfig, add_noise, augment_waveform, colored_noise, pad_silence,
                                      spec_augment, speed_perturb)
from tests.conftest import tone


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_changes_length_by_factor(factor):
    x = tone(2.0)
    assert len(speed_perturb(x, factor)) == pytest.approx(len(x) / factor, abs=2)
    assert speed_perturb(x, 1.0) is x


def test_noise_hits_the_target_snr():
    x = tone(3.0)
    rng = np.random.default_rng(0)
    for snr in (0.0, 10.0, 20.0):
        y = add_noise(x, rng, snr)
        n = y - x
        measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(n.astype(np.float64) ** 2))
        assert measured == pytest.approx(snr, abs=0.05)
    assert np.array_equal(add_noise(np.zeros(100, np.float32), rng, 10.0), np.zeros(100, np.float32))


def test_colored_noise_spectra():
    rng = np.random.default_rng(1)
    def low_high(exp):
        p = np.abs(np.fft.rfft(colored_noise(16000, rng, exp))) ** 2
        return p[10:200].mean() / p[4000:8000].mean()
    assert 0.5 < low_high(0.0) < 2.0  # white: flat
    assert low_high(1.0) > 10 and low_high(2.0) > low_high(1.0) * 10  # pink, brown: falling


def test_pad_silence_bounds():
    rng = np.random.default_rng(2)
    x = tone(1.0)
    y = pad_silence(x, rng, 0.5)
    assert len(x) <= len(y) <= len(x) + 16000
    start = np.argmax(np.abs(y) > 0)
    np.testing.assert_array_equal(y[start:start + len(x)], x)


def test_spec_augment_masks_with_zeros():
    cfg = AugmentConfig(spec_freq_masks=2, spec_freq_width=10, spec_time_masks=2, spec_time_width=20)
    f = torch.randn(300, 80) + 5.0
    g = spec_augment(f, cfg, np.random.default_rng(3))
    zero = g == 0
    assert zero.any() and torch.equal(g[~zero], f[~zero])
    cols = zero.all(0).sum()  # fully masked frequency bins
    rows = zero.all(1).sum()  # fully masked frames
    assert cols <= 20 and rows <= 40 and (cols > 0 or rows > 0)
    assert torch.equal(spec_augment(f, AugmentConfig.off(), np.random.default_rng(3)), f)


def test_augment_off_is_identity_and_on_changes_audio():
    x = tone(1.0)
    assert np.array_equal(augment_waveform(x, AugmentConfig.off(), np.random.default_rng(0)), x)
    cfg = AugmentConfig(speed_factors=[1.1], noise_prob=1.0)
    y = augment_waveform(x, cfg, np.random.default_rng(0))
    assert len(y) < len(x)
