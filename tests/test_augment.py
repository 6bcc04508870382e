"""Augmentations: speed perturbation, silence padding, noise at a target SNR, SpecAugment, gain,
band-limiting, reverberation, VTLP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entropy_asr.data.audio import SAMPLE_RATE
from entropy_asr.data.augment import (
    AugmentConfig,
    add_noise,
    augment_waveform,
    colored_noise,
    lowpass,
    pad_silence,
    reverberate,
    room_impulse_response,
    spec_augment,
    speed_perturb,
    vtlp,
)
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


def power(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, power spectrum) of `x`."""
    return np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE), np.abs(np.fft.rfft(x.astype(np.float64))) ** 2


@pytest.mark.parametrize("cutoff", [3400.0, 7000.0])
def test_lowpass_removes_the_energy_above_the_cutoff(cutoff):
    x = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)  # white: energy everywhere
    y = lowpass(x, cutoff)
    assert y.shape == x.shape and y.dtype == np.float32
    f, px = power(x)
    _, py = power(y)
    below, above = f < cutoff - 250, f > cutoff + 250  # outside the 500 Hz roll-off
    assert py[below].sum() / px[below].sum() == pytest.approx(1.0, abs=1e-3)  # the passband is kept
    assert py[above].sum() / px[above].sum() < 1e-3  # the stopband is 30+ dB down (measured: ~47 dB)
    assert lowpass(np.zeros(0, np.float32), cutoff).size == 0


@pytest.mark.parametrize("rt60", [0.2, 0.5, 0.8])
def test_room_impulse_response_has_unit_energy_and_decays_60_db_by_rt60(rt60):
    n = int(rt60 * SAMPLE_RATE)
    w = n // 10
    # Tail envelope exp(-6.9 t / rt60): energy in its first vs last tenth differs by exp(2 * 6.9 * 0.9),
    # 53.9 dB; each window's energy (w Gaussian samples) has a relative sd sqrt(2 / w): 4 sd of the ratio in dB.
    expected = 10 * np.log10(np.exp(2 * 6.9 * 0.9))
    tol = 4 * 10 / np.log(10) * np.sqrt(2 * 2 / w)
    for seed in range(4):
        rir = room_impulse_response(np.random.default_rng(seed), rt60)
        assert np.sum(rir ** 2) == pytest.approx(1.0, abs=1e-9)
        assert rir[0] > 0 and 0.002 * SAMPLE_RATE - 1 <= len(rir) - 1 - n <= 0.01 * SAMPLE_RATE  # direct path, gap
        tail = rir[-n:]
        decay = 10 * np.log10(np.sum(tail[:w] ** 2) / np.sum(tail[-w:] ** 2))
        assert abs(decay - expected) < tol, (seed, decay, expected, tol)
    same = room_impulse_response(np.random.default_rng(0), rt60)
    assert np.array_equal(same, room_impulse_response(np.random.default_rng(0), rt60))


def test_reverberate_keeps_length_and_peak():
    x = tone(1.0)
    assert np.allclose(reverberate(x, np.array([1.0])), x, atol=1e-6)  # a delta changes nothing
    shifted = reverberate(x, np.array([0.0] * 10 + [0.5]))  # a delayed, quieter delta: delayed, same peak
    assert shifted.shape == x.shape
    np.testing.assert_allclose(shifted[10:] * (np.abs(x[:-10]).max() / np.abs(shifted).max()), x[:-10], atol=1e-5)
    rir = room_impulse_response(np.random.default_rng(1), 0.3)
    y = reverberate(x, rir)
    assert y.shape == x.shape and y.dtype == np.float32
    assert float(np.abs(y).max()) == pytest.approx(float(np.abs(x).max()), rel=1e-6)
    click = np.zeros(8000, np.float32)
    click[0] = 0.5
    assert len(rir) < click.size
    expected = 0.5 * np.pad(rir, (0, click.size - len(rir))) / np.abs(rir).max()  # the room itself, at the peak
    np.testing.assert_allclose(reverberate(click, rir), expected, atol=1e-6)
    assert reverberate(np.zeros(0, np.float32), rir).size == 0


def test_gain_stays_within_the_range():
    x = tone(1.0)  # peak 0.46: +6 dB does not clip
    cfg = AugmentConfig(speed_factors=[1.0], noise_prob=0.0, gain_db=6.0)
    gains = []
    for seed in range(20):
        y = augment_waveform(x, cfg, np.random.default_rng(seed))
        ratio = y.astype(np.float64) / x
        assert np.allclose(ratio, ratio[0], rtol=1e-5)  # one level change for the whole utterance
        gains.append(20 * np.log10(ratio[0]))
    assert all(-6.0 <= g <= 6.0 for g in gains)
    assert min(gains) < -1 and max(gains) > 1  # both ways
    loud = augment_waveform(x * 2, AugmentConfig(speed_factors=[1.0], noise_prob=0.0, gain_db=20.0),
                            np.random.default_rng(0))
    assert np.abs(loud).max() <= 1.0


def test_augment_waveform_room_and_band_limit_keep_the_length():
    x = tone(1.0)
    cfg = AugmentConfig(speed_factors=[1.0], noise_prob=0.0, reverb_prob=1.0, lowpass_prob=1.0, lowpass_hz=(3000, 3000))
    y = augment_waveform(x, cfg, np.random.default_rng(0))
    assert y.shape == x.shape and not np.allclose(y, x)
    f, py = power(y)
    assert py[f > 3250].sum() / py.sum() < 1e-4  # band-limited after the room


def test_vtlp_warps_the_frequency_axis():
    feats = torch.randn(50, 80)
    assert vtlp(feats, 1.0) is feats  # factor 1: the identity
    bins = torch.arange(80, dtype=torch.float32)
    peak = torch.exp(-0.5 * ((bins - 40) / 2) ** 2).expand(30, 80)  # a formant at bin 40 in every frame
    for factor, expected in ((1.2, 40 / 1.2), (0.8, 40 / 0.8)):
        warped = vtlp(peak, factor)
        assert warped.shape == peak.shape
        assert int(warped.argmax(1).unique()) == round(expected)  # > 1: to a lower bin; < 1: higher
    ramp = bins.expand(2, 80)
    torch.testing.assert_close(vtlp(ramp, 0.5), (bins * 0.5).expand(2, 80))  # linear interpolation
    assert float(vtlp(ramp, 1.25)[0, -1]) == 79.0  # past the last bin: the last bin


@pytest.mark.parametrize("kw,field", [
    ({"lowpass_prob": 1.5}, "lowpass_prob"), ({"reverb_prob": -0.1}, "reverb_prob"),
    ({"lowpass_hz": (5000.0, 3000.0)}, "lowpass_hz"), ({"lowpass_hz": (3000.0, 9000.0)}, "lowpass_hz"),
    ({"reverb_rt60": (0.0, 0.5)}, "reverb_rt60"), ({"reverb_rt60": (0.2, 6.0)}, "reverb_rt60"),
    ({"vtlp": 0.5}, "vtlp"), ({"vtlp": -0.1}, "vtlp"), ({"gain_db": -1.0}, "gain_db"),
])
def test_augment_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=rf"^augment\.{field} must"):
        AugmentConfig(**kw)
