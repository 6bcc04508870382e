"""Audio I/O and the acoustic front end: decode, resample to 16 kHz, 80-dim Kaldi fbank, CMVN."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torchaudio.compliance import kaldi

from entropy_asr.errors import UserError, UserFileNotFound

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
# Version of the feature definition; cmvn.json records it and load_cmvn refuses another one.
# 2: log-Mel energies floored at the level of Kaldi's dither (see fbank_floor).
FEATURE_VERSION = 2


def to_mono(x: np.ndarray) -> np.ndarray:
    """(T,) or (T, C) -> (T,) float32, channels averaged."""
    if x.ndim == 2:
        x = x.mean(axis=1)
    return np.ascontiguousarray(x, dtype=np.float32)


def resample(x: np.ndarray, orig_sr: int, new_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio) of a mono float waveform."""
    if orig_sr == new_sr:
        return x
    g = math.gcd(int(orig_sr), int(new_sr))
    with torch.no_grad():
        y = _resampler(int(orig_sr) // g, int(new_sr) // g)(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    return y.numpy()


@functools.lru_cache(maxsize=8)
def _resampler(orig: int, new: int):
    """torchaudio's Resample with its sinc kernel built once per rate pair (per process): the kernel
    costs more than the convolution for short clips."""
    import torchaudio.transforms as T

    return T.Resample(orig, new)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode an encoded audio file (FLAC, WAV, ...) from bytes -> (mono float32 samples, rate)."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return to_mono(x), int(sr)


# how far a segment's end may run past the end of its file (Kaldi's extract-segments --max-overshoot)
MAX_OVERSHOOT_S = 0.5


# a RIFF data size this large is a streaming writer's "unknown" (SoX: 0x7FFFF000), not a 2 GiB claim to check
UNKNOWN_RIFF_SIZE = 0x7FFF0000


class TruncatedAudioError(UserError):
    """A file holds less audio than its header or its segment says: its transcript would not match."""


def _riff_data_shortfall(path: str | Path) -> tuple[int, int] | None:
    """(declared, present) bytes of a RIFF/WAVE file's data chunk when fewer are present than declared.

    libsndfile reads a cut WAV without complaint (it trims the length to the bytes there), so the
    header is read here. Streamed WAVs whose writer could not know the length (0, or a placeholder near
    2^31 or 2^32: SoX writes 0x7FFFF000, others 0xFFFFFFFF) are not judged.
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size, pos = os.fstat(fh.fileno()).st_size, 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk, n = struct.unpack("<4sI", fh.read(8))
            if chunk == b"data":
                present = size - pos - 8
                return (n, present) if 0 < n < UNKNOWN_RIFF_SIZE and present < n else None
            pos += 8 + n + (n & 1)
    return None


def read_audio(path: str | Path, start: float = 0.0, end: float | None = None) -> tuple[np.ndarray, int]:
    """Read a file (or the [start, end) seconds segment of it) -> (mono float32, rate).

    A file cut short (fewer samples than its header declares) or a segment ending more than
    MAX_OVERSHOOT_S past the audio raises TruncatedAudioError: its transcript covers audio that is not there.
    """
    short = _riff_data_shortfall(path)
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        if short is not None:
            declared, present = short
            raise TruncatedAudioError(f"{path}: truncated: its header declares {declared} bytes of audio "
                                      f"({declared / max(present, 1) * f.frames / sr:.2f} s), the file holds {present} "
                                      f"({f.frames / sr:.2f} s); re-copy or re-export it")
        first = round(start * sr)
        last = f.frames if end is None else round(end * sr)
        if last > f.frames + MAX_OVERSHOOT_S * sr:
            raise TruncatedAudioError(f"{path}: the segment [{start:g}, {end:g}] s ends past the audio "
                                      f"({f.frames / sr:.2f} s); fix its times or the file")
        last = min(last, f.frames)
        f.seek(first)
        x = f.read(max(0, last - first), dtype="float32", always_2d=False)
    if len(x) < last - first:  # a header (e.g. FLAC's STREAMINFO) promising more than decodes
        raise TruncatedAudioError(f"{path}: truncated: {(last - first) / sr:.2f} s declared, {len(x) / sr:.2f} s "
                                  "decode; re-copy or re-export it")
    return to_mono(x), int(sr)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples -> int16 on libsndfile's scale (a decoded int16 s reads back as s / 32768)."""
    return np.clip(np.round(np.asarray(x, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def encode_flac(x: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    """Encode mono float audio as 16-bit FLAC bytes (deterministic for equal input)."""
    buf = io.BytesIO()
    sf.write(buf, to_pcm16(x), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _kaldi_fbank(w: torch.Tensor, sr: int) -> torch.Tensor:
    return kaldi.fbank(w, num_mel_bins=NUM_MEL_BINS, frame_length=FRAME_LENGTH_MS, frame_shift=FRAME_SHIFT_MS,
                       dither=0.0, energy_floor=0.0, sample_frequency=float(sr))


@functools.cache
def fbank_floor() -> torch.Tensor:
    """(80,) per-bin floor of the log-Mel energies: their mean on unit-variance white noise.

    That is the noise Kaldi's default dither (1.0 on the int16 scale) adds. Without a floor,
    digital silence (the synthetic corpus' padding, gaps in real recordings) gives log(eps) =
    -15.9 in every bin, and the global CMVN, stretched over that gap, squeezes all speech into
    about 0.2 standard deviations: phone CTC then barely learns. Flooring instead of dithering
    keeps features deterministic. Computed once from a fixed-seed signal (cached: do not modify it in place).
    """
    noise = torch.randn(1, 10 * SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    return _kaldi_fbank(noise, SAMPLE_RATE).mean(0)


def fbank(x: np.ndarray | torch.Tensor, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """(T,) waveform in [-1, 1] -> (frames, 80) log-Mel filterbank, 25 ms window / 10 ms shift.

    Kaldi-compatible (torchaudio.compliance.kaldi.fbank) on 16-bit scale samples, no dither but
    a per-bin floor at the dither's level (fbank_floor), so features and their CMVN statistics
    are deterministic.
    """
    w = torch.as_tensor(x, dtype=torch.float32).reshape(1, -1) * 32768.0  # (1, T): Kaldi's int16 scale
    if w.shape[1] < int(sr * FRAME_LENGTH_MS / 1000):  # shorter than one window: zero frames
        return torch.zeros(0, NUM_MEL_BINS)
    return torch.maximum(_kaldi_fbank(w, sr), fbank_floor())


@dataclass
class CMVNStats:
    """Streaming sums for global mean/variance normalization (float64, mergeable across shards)."""

    count: int
    sum: np.ndarray  # (80,)
    sum_sq: np.ndarray  # (80,)

    @classmethod
    def zeros(cls, dim: int = NUM_MEL_BINS) -> CMVNStats:
        """Empty statistics."""
        return cls(0, np.zeros(dim, np.float64), np.zeros(dim, np.float64))

    def add(self, feats: torch.Tensor) -> None:
        """Accumulate the frames of one (frames, dim) feature matrix."""
        f = feats.double().numpy()
        self.count += f.shape[0]
        self.sum += f.sum(0)
        self.sum_sq += (f * f).sum(0)

    def merge(self, other: CMVNStats) -> CMVNStats:
        """Sum of two statistics (shards combine in any order)."""
        return CMVNStats(self.count + other.count, self.sum + other.sum, self.sum_sq + other.sum_sq)

    def mean_std(self, floor: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation per bin; var = E[x^2] - E[x]^2, floored."""
        if self.count == 0:
            raise UserError("CMVN statistics are empty: no audio frames were accumulated")
        mean = self.sum / self.count
        var = np.maximum(self.sum_sq / self.count - mean * mean, floor)
        return mean, np.sqrt(var)

    def to_json(self) -> dict:
        """JSON-able dict with the raw sums and the derived mean/std."""
        mean, std = self.mean_std() if self.count else (self.sum, self.sum)
        return {
            "count": self.count,
            "sum": self.sum.tolist(),
            "sum_sq": self.sum_sq.tolist(),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "feature": {"type": "kaldi_fbank", "version": FEATURE_VERSION, "num_mel_bins": NUM_MEL_BINS,
                        "frame_length_ms": FRAME_LENGTH_MS, "frame_shift_ms": FRAME_SHIFT_MS,
                        "sample_rate": SAMPLE_RATE},
        }

    @classmethod
    def from_json(cls, d: dict) -> CMVNStats:
        """Inverse of to_json."""
        return cls(int(d["count"]), np.asarray(d["sum"], np.float64), np.asarray(d["sum_sq"], np.float64))


def load_cmvn(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read cmvn.json -> (mean, 1/std) float32 tensors of shape (80,)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        version = d.get("feature", {}).get("version", 1)
        if version != FEATURE_VERSION:
            raise UserError(f"{path}: statistics of feature version {version}, but this code computes version "
                            f"{FEATURE_VERSION} (log-Mel floored at the dither level); rebuild the shard dir "
                            "(entropy_asr.data.prepare / entropy_asr.data.synthetic)")
        stats = CMVNStats.from_json(d)
    except FileNotFoundError:
        raise UserFileNotFound(
            f"{path}: CMVN statistics not found; shard dirs written by entropy_asr.data.prepare "
            "or entropy_asr.data.synthetic contain cmvn.json, or set cmvn to an existing file"
        ) from None
    except (KeyError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a valid cmvn.json ({e}); re-run entropy_asr.data.prepare") from None
    mean, std = stats.mean_std()
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise UserError(f"{path}: the CMVN statistics hold NaN, inf or a zero deviation (count "
                        f"{getattr(stats, 'count', '?')}); rebuild the shard dir (entropy_asr.data.prepare) or point "
                        "data.cmvn at a good cmvn.json")
    return torch.from_numpy(mean).float(), torch.from_numpy(1.0 / std).float()
