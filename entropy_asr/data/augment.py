"""Training-only augmentations: speed perturbation, silence padding, additive noise and SpecAugment (the
paper's), plus what moves voices and rooms beyond them: gain, band-limiting, simulated reverberation
and vocal tract length perturbation (VTLP) of the filterbank."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torchaudio.transforms as T

from entropy_asr.data.audio import SAMPLE_RATE
from entropy_asr.errors import UserError


@dataclass
class AugmentConfig:
    """Which augmentations run and how strong; all off => features are the clean ones."""

    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # one drawn per utterance
    pad_silence_max: float = 0.0  # seconds of zeros added at each end, U(0, max) per end
    noise_prob: float = 0.2  # share of utterances that get additive noise
    noise_snr_mean: float = 10.0  # SNR ~ N(mean, std) dB (paper: N(10, 5))
    noise_snr_std: float = 5.0
    spec_freq_masks: int = 2
    spec_freq_width: int = 27  # max width (bins) of each frequency mask, of 80
    spec_time_masks: int = 2
    spec_time_width: int = 40  # max width (frames) of each time mask
    spec_time_max_ratio: float = 0.2  # a time mask never covers more than this share of frames
    views: int = 1  # 2: a second, independently SpecAugmented view of each utterance (CR-CTC), as feats2
    gain_db: float = 0.0  # level change U(-gain_db, +gain_db) dB per utterance
    lowpass_prob: float = 0.0  # share of utterances band-limited to a cutoff U(lowpass_hz) (phone lines, low-rate TTS)
    lowpass_hz: tuple[float, float] = (3400.0, 7000.0)
    reverb_prob: float = 0.0  # share of utterances convolved with a simulated room impulse response
    reverb_rt60: tuple[float, float] = (0.15, 0.8)  # reverberation time (s) of those rooms
    vtlp: float = 0.0  # VTLP: the filterbank's frequency axis is warped by a factor U(1 - vtlp, 1 + vtlp)

    def __post_init__(self):
        for f in self.speed_factors:
            if not 0.5 <= f <= 2.0:
                raise UserError(f"augment.speed_factors: {f} is outside [0.5, 2.0]; use factors like 0.9, 1.0, 1.1")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise UserError(f"augment.noise_prob must be in [0, 1], got {self.noise_prob}")
        for name in ("lowpass_prob", "reverb_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        for name, (lo, hi), top in (("lowpass_hz", self.lowpass_hz, SAMPLE_RATE / 2),
                                    ("reverb_rt60", self.reverb_rt60, 5.0)):
            if not 0 < lo <= hi <= top:
                raise UserError(f"augment.{name} must be [low, high] with 0 < low <= high <= {top:g}, got {[lo, hi]}")
        if not 0.0 <= self.vtlp < 0.5:
            raise UserError(f"augment.vtlp must be in [0, 0.5) (a warp factor 1 +- vtlp), got {self.vtlp}")
        for name in ("pad_silence_max", "noise_snr_std", "spec_freq_masks", "spec_freq_width",
                     "spec_time_masks", "spec_time_width", "gain_db"):
            if getattr(self, name) < 0:
                raise UserError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.views not in (1, 2):
            raise UserError(f"augment.views must be 1 or 2 (2 for consistency-regularized CTC), got {self.views}")
        if not 0.0 <= self.spec_time_max_ratio <= 1.0:
            raise UserError(f"augment.spec_time_max_ratio must be in [0, 1], got {self.spec_time_max_ratio}")

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all."""
        return cls(speed_factors=[1.0], pad_silence_max=0.0, noise_prob=0.0, spec_freq_masks=0, spec_time_masks=0)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Play `x` `factor` times faster (pitch shifts too, as in Kaldi's speed perturbation).

    Resampling from SR*factor to SR: a rational ratio with small terms (0.9 -> 9:10) keeps the
    sinc kernel short.
    """
    if factor == 1.0:
        return x
    with torch.no_grad():
        return _speed_resampler(factor)(torch.from_numpy(x)).numpy()


@functools.lru_cache(maxsize=16)
def _speed_resampler(factor: float) -> T.Resample:
    # The sinc kernel is built once per factor and reused (per process).
    return T.Resample(round(SAMPLE_RATE * factor / 100), SAMPLE_RATE // 100)


def pad_silence(x: np.ndarray, rng: np.random.Generator, max_seconds: float) -> np.ndarray:
    """Add U(0, max_seconds) of zeros at each end."""
    if max_seconds <= 0:
        return x
    left, right = (rng.uniform(0, max_seconds, 2) * SAMPLE_RATE).astype(int)
    return np.concatenate([np.zeros(left, np.float32), x, np.zeros(right, np.float32)])


def colored_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Unit-power noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    if exponent == 0.0:
        y = rng.standard_normal(n)
    else:
        n_fft = 1 << max(1, (n - 1).bit_length())  # power-of-two FFT: arbitrary n can be 10x slower
        spec = np.fft.rfft(rng.standard_normal(n_fft))
        f = np.arange(spec.shape[0], dtype=np.float64)
        f[0] = 1.0
        spec /= f ** (exponent / 2.0)
        y = np.fft.irfft(spec, n_fft)[:n]
    return (y / (np.sqrt(np.mean(y * y)) + 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """Add white/pink/brown noise at `snr_db` relative to the signal's mean power."""
    if x.size == 0:
        return x
    noise = colored_noise(x.size, rng, float(rng.choice([0.0, 1.0, 2.0])))
    p_signal = float(np.mean(x.astype(np.float64) ** 2))
    if p_signal <= 0.0:
        return x  # all-zero clip: SNR undefined, and non-speech clips carry their own noise
    scale = np.sqrt(p_signal / (10.0 ** (snr_db / 10.0)))  # SNR = 10 log10(P_s / P_n)
    return np.clip(x + scale * noise, -1.0, 1.0).astype(np.float32)


def lowpass(x: np.ndarray, cutoff_hz: float, width_hz: float = 500.0) -> np.ndarray:
    """Band-limit `x` to `cutoff_hz` (raised-cosine roll-off over `width_hz`), by FFT."""
    if x.size == 0:
        return x
    n_fft = 1 << max(1, (x.size - 1).bit_length())
    spec = np.fft.rfft(x.astype(np.float64), n_fft)
    f = np.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE)
    ramp = np.clip((f - cutoff_hz) / width_hz + 0.5, 0.0, 1.0)
    return np.fft.irfft(spec * 0.5 * (1 + np.cos(np.pi * ramp)), n_fft)[:x.size].astype(np.float32)


def room_impulse_response(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """A simulated room: a direct path, then exponentially decaying noise (60 dB down at rt60 s)."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # ln(1000) = 6.9: -60 dB at rt60
    delay = int(rng.uniform(0.002, 0.01) * SAMPLE_RATE)  # first reflections after the direct sound
    rir = np.concatenate([[1.0], np.zeros(delay), tail * rng.uniform(0.1, 0.5)])
    return rir / np.sqrt(np.sum(rir ** 2))


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """`x` convolved with `rir` (FFT), same length, at the dry signal's peak level."""
    if x.size == 0:
        return x
    n_fft = 1 << max(1, (x.size + rir.size - 2).bit_length())
    y = np.fft.irfft(np.fft.rfft(x.astype(np.float64), n_fft) * np.fft.rfft(rir, n_fft), n_fft)[:x.size]
    peak_x, peak_y = float(np.abs(x).max()), float(np.abs(y).max())
    return (y * (peak_x / peak_y) if peak_y > 0 else y).astype(np.float32)


def augment_waveform(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Speed, silence padding, room, band-limiting, noise and gain on one (T,) waveform."""
    x = speed_perturb(x, float(rng.choice(cfg.speed_factors)))
    x = pad_silence(x, rng, cfg.pad_silence_max)
    if cfg.reverb_prob > 0 and rng.random() < cfg.reverb_prob:
        x = reverberate(x, room_impulse_response(rng, rng.uniform(*cfg.reverb_rt60)))
    if cfg.lowpass_prob > 0 and rng.random() < cfg.lowpass_prob:
        x = lowpass(x, rng.uniform(*cfg.lowpass_hz))
    if cfg.noise_prob > 0 and rng.random() < cfg.noise_prob:
        x = add_noise(x, rng, rng.normal(cfg.noise_snr_mean, cfg.noise_snr_std))
    if cfg.gain_db > 0:
        x = np.clip(x * 10 ** (rng.uniform(-cfg.gain_db, cfg.gain_db) / 20), -1.0, 1.0).astype(np.float32)
    return x


def vtlp(feats: torch.Tensor, factor: float) -> torch.Tensor:
    """Vocal tract length perturbation on (T, F) log-mel features: bin f takes the value at f * factor
    (linear interpolation; past the last bin, the last bin), i.e. formants move by 1/factor."""
    if factor == 1.0:
        return feats
    F = feats.shape[1]
    src = (torch.arange(F, dtype=torch.float32) * factor).clamp(max=F - 1)  # (F,)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=F - 1)
    w = (src - lo)[None, :]  # (1, F)
    return feats[:, lo] * (1 - w) + feats[:, hi] * w


def spec_augment(feats: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) frequency and time masks on normalized (T, F) features.

    Masked values are set to 0, the global mean after CMVN. Hand-rolled rather than
    torchaudio's FrequencyMasking/TimeMasking so the masks come from the worker's own seeded
    generator (reproducible streams) and a time mask is capped by a share of the utterance.
    """
    T, F = feats.shape
    feats = feats.clone()
    for _ in range(cfg.spec_freq_masks):
        w = int(rng.integers(0, min(cfg.spec_freq_width, F) + 1))
        f0 = int(rng.integers(0, F - w + 1))
        feats[:, f0:f0 + w] = 0.0
    max_w = min(cfg.spec_time_width, int(cfg.spec_time_max_ratio * T))
    for _ in range(cfg.spec_time_masks):
        w = int(rng.integers(0, max_w + 1))
        t0 = int(rng.integers(0, T - w + 1))
        feats[t0:t0 + w, :] = 0.0
    return feats
