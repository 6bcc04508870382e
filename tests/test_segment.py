"""Long-form segmentation (entropy_asr.inference.segment): block reading with resampling, and the energy VAD
that cuts a stream on pauses into segments no longer than the training maximum."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import soundfile as sf

from entropy_asr.data.audio import TruncatedAudioError, resample, to_mono
from entropy_asr.errors import UserError, UserFileNotFound
from entropy_asr.inference.segment import Segment, Segmenter, iter_audio, segments

SR = 16_000
PAD = 0.15


# ---------------------------------------------------------------------------------------------------------------
# test signals


def utterance(rng: np.random.Generator, seconds: float, level: float = 0.1) -> np.ndarray:
    """A speech-like burst: a harmonic tone with a drifting pitch, amplitude-modulated at a syllable rate
    (3-6 Hz, down to 10 % of the peak between syllables), with 20 ms fades; rms about `level`."""
    t = np.arange(round(seconds * SR)) / SR
    f0 = rng.uniform(100, 220) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 9))
    env = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 2 * np.pi))
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
    x = x * env * fade
    return (x * level / np.sqrt(np.mean(x * x))).astype(np.float32)


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-rms pink (1/f power) noise."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / np.sqrt(np.mean(x * x))


def recording(seed: int, n_utt: int = 8, noise: str | None = None, snr_db: float = 15.0,
              lead: float = 1.0, trail: float = 1.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Utterances of 1-6 s separated by 0.4-1.5 s pauses, between a leading and trailing silence; background
    white or pink noise at snr_db under the speech's power, or a faint dither-level hiss.
    Returns (samples, [(start, end) s of each utterance])."""
    rng = np.random.default_rng(seed)
    parts, truth, t = [np.zeros(round(lead * SR), np.float32)], [], lead
    for i in range(n_utt):
        if i:
            gap = rng.uniform(0.4, 1.5)
            parts.append(np.zeros(round(gap * SR), np.float32))
            t += round(gap * SR) / SR
        u = utterance(rng, rng.uniform(1.0, 6.0))
        parts.append(u)
        truth.append((t, t + len(u) / SR))
        t += len(u) / SR
    parts.append(np.zeros(round(trail * SR), np.float32))
    x = np.concatenate(parts).astype(np.float64)
    if noise is None:
        x += 1e-5 * rng.standard_normal(len(x))
    else:
        n = rng.standard_normal(len(x)) if noise == "white" else pink(rng, len(x))
        speech_power = np.mean(np.concatenate([x[round(a * SR):round(b * SR)] for a, b in truth]) ** 2)
        x += n * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return x.astype(np.float32), truth


def check_exact(segs: list[Segment], x: np.ndarray) -> None:
    """Every segment's audio is the input's [start, end) slice; segments are ordered and do not overlap."""
    for s in segs:
        a, b = round(s.start * SR), round(s.end * SR)
        assert s.start == a / SR and s.end == b / SR  # exact sample positions
        np.testing.assert_array_equal(s.audio, x[a:b])
        assert s.audio.dtype == np.float32
        assert 0 < s.end - s.start <= 20.0
    for p, q in pairwise(segs):
        assert p.end <= q.start


# ---------------------------------------------------------------------------------------------------------------
# the segmenter


@pytest.mark.parametrize("noise", [None, "white", "pink"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_segment_per_utterance(seed, noise):
    x, truth = recording(seed, noise=noise)
    segs = list(segments(x))
    check_exact(segs, x)
    assert len(segs) == len(truth), ([(s.start, s.end) for s in segs], truth)
    for s, (t0, t1) in zip(segs, truth):
        assert s.start <= t0 and s.end >= t1, ((s.start, s.end), (t0, t1))  # holds its utterance
        assert abs(s.start - (t0 - PAD)) <= 0.3 and abs(s.end - (t1 + PAD)) <= 0.3, ((s.start, s.end), (t0, t1))


def test_boundaries_follow_the_padding():
    """A segment starts about pad_s before its speech: a larger pad moves the start back by the difference."""
    x, truth = recording(5, n_utt=4)
    for pad in (0.0, 0.15):
        segs = list(segments(x, pad_s=pad))
        assert len(segs) == len(truth)
        for s, (t0, t1) in zip(segs, truth):
            assert abs(s.start - (t0 - pad)) <= 0.1 and abs(s.end - (t1 + pad)) <= 0.1


def test_long_pads_are_clipped_in_the_middle_of_the_pause():
    x, truth = recording(3, noise="white")
    segs = list(segments(x, pad_s=1.0))
    check_exact(segs, x)  # no overlap although 2 * pad exceeds every pause
    assert len(segs) == len(truth)
    for p, q, (_, t1), (t0, _) in zip(segs, segs[1:], truth, truth[1:]):
        assert p.end == q.start and abs(p.end - (t1 + t0) / 2) <= 0.15


@pytest.mark.parametrize("noise", [None, "pink"])
def test_long_utterance_is_cut_below_the_maximum_without_gaps(noise):
    rng = np.random.default_rng(11)
    speech = utterance(rng, 45.0)
    x = np.concatenate([np.zeros(SR, np.float32), speech, np.zeros(SR, np.float32)])
    if noise:
        x = x + (pink(rng, len(x)) * 0.1 / 10 ** (15 / 20)).astype(np.float32)
    segs = list(segments(x))
    check_exact(segs, x)
    assert len(segs) >= 3
    assert all(s.end - s.start <= 20.0 for s in segs)
    assert segs[0].start <= 1.0 and segs[-1].end >= 46.0  # covers the utterance...
    for p, q in pairwise(segs):
        assert p.end == q.start  # ...without gaps
        cut = round(p.end * SR)  # at a quiet point (between two syllables), not mid-syllable
        assert np.sqrt(np.mean(x[cut - 160:cut + 160] ** 2)) < 0.4 * np.sqrt(np.mean(speech**2))
    assert all(s.end - s.start >= 13.0 for s in segs[:-1])  # forced cuts fall in the last third


def test_a_forced_cut_keeps_the_rest_of_the_speech():
    """Speech running 0.1 s past the maximum, its quietest point a 0.2 s dip just before the end: the cut falls
    in the dip, and the 50 ms of speech after it (too short to count as speech on its own) still gets a segment
    that starts at the cut."""
    rng = np.random.default_rng(3)
    sil = np.zeros(SR, np.float32)
    speech = [utterance(rng, 4.7), np.zeros(round(0.2 * SR), np.float32), utterance(rng, 0.05)]
    x = np.concatenate([sil, *speech, sil])
    x += (1e-5 * rng.standard_normal(len(x))).astype(np.float32)
    segs = list(segments(x, max_segment_s=5.0))
    check_exact(segs, x)
    assert len(segs) == 2 and segs[0].end == segs[1].start
    assert 5.7 <= segs[0].end <= 5.9  # in the dip
    assert segs[0].start <= 1.0 and segs[1].end >= 1.0 + 4.95


def test_max_segment_s_is_respected():
    x, _ = recording(4, n_utt=3)
    segs = list(segments(x, max_segment_s=2.0))
    check_exact(segs, x)
    assert all(s.end - s.start <= 2.0 for s in segs) and len(segs) > 3


@pytest.mark.parametrize("kind", ["zeros", "faint white", "faint pink", "faint bursts", "steady white", "steady pink"])
def test_no_speech_gives_no_segments(kind):
    rng = np.random.default_rng(0)
    n = 30 * SR
    x = {"zeros": np.zeros(n),
         "faint white": 1e-4 * rng.standard_normal(n),  # -80 dBFS
         "faint pink": 3e-4 * pink(rng, n),  # -70 dBFS
         # -70 dBFS hiss switching on and off over digital silence: near silence is never speech
         "faint bursts": 3e-4 * rng.standard_normal(n) * (np.arange(n) // SR % 2),
         "steady white": 0.03 * rng.standard_normal(n),  # -30 dBFS: the noise floor follows it
         "steady pink": 0.03 * pink(rng, n)}[kind].astype(np.float32)
    assert list(segments(x)) == []


@pytest.mark.parametrize("background", [0.0, 1e-4])
def test_a_click_is_not_speech(background):
    rng = np.random.default_rng(1)
    x = (background * rng.standard_normal(10 * SR)).astype(np.float32)
    x[5 * SR:5 * SR + 80] += 0.5 * np.sign(rng.standard_normal(80)).astype(np.float32)  # 5 ms, loud
    assert list(segments(x)) == []
    x[5 * SR:5 * SR + 80 * 40] = 0.5 * np.sign(rng.standard_normal(80 * 40))  # 200 ms of the same: speech
    assert len(list(segments(x))) == 1


def test_output_does_not_depend_on_block_sizes():
    x, _ = recording(7, n_utt=6, noise="white")
    x = np.concatenate([x, utterance(np.random.default_rng(0), 30.0)])
    whole = list(segments(x))
    rng = np.random.default_rng(0)
    seg, got, i = Segmenter(), [], 0
    while i < len(x):
        n = int(rng.integers(1, 3 * SR))
        got += seg.feed(x[i:i + n])
        i += n
    got += seg.flush()
    assert [(s.start, s.end) for s in got] == [(s.start, s.end) for s in whole]
    assert len(whole) >= 8
    # the segmenter is ready for another stream after flush
    again = seg.feed(x) + seg.flush()
    assert [(s.start, s.end) for s in again] == [(s.start, s.end) for s in whole]


def test_memory_stays_bounded_over_30_minutes():
    """30 minutes fed in 1 s blocks (6 s talks between 4 s pauses, a 2-minute monologue, 5 minutes of silence
    at the end): the segmenter never holds more than max_segment_s + 4 s of samples, and it finds all the speech."""
    rng = np.random.default_rng(2)
    syllables = utterance(rng, 1.0)  # one second of speech-like signal, repeated
    talking = np.array([10 <= m < 12 or (m < 25 and s % 10 < 6) for m in range(30) for s in range(60)])
    seg, biggest, segs = Segmenter(), 0, []
    for talk in talking:
        block = syllables if talk else np.zeros(SR, np.float32)
        segs += seg.feed(block + np.float32(1e-4) * rng.standard_normal(SR, np.float32))
        biggest = max(biggest, seg.buffered)
    segs += seg.flush()
    assert biggest <= (20 + 4) * SR
    assert all(s.end - s.start <= 20.0 for s in segs)
    # 23 minutes of talks, 6 a minute (138), less the one the monologue swallows (it runs on into 12:00-12:06),
    # plus the monologue (9:59.84-12:06.16) in pieces of 13-20 s (8)
    assert len(segs) == 137 + 8
    frames = np.repeat(talking, 100)  # 10 ms frames
    covered = np.zeros(len(frames), bool)
    for s in segs:
        covered[round(s.start * 100):round(s.end * 100)] = True
    assert covered[frames].all()  # all the speech is in segments...
    near = np.convolve(frames, np.ones(41), mode="same") > 0  # ...and nothing 0.2 s away from speech is
    assert not covered[~near].any()


def test_bad_parameters_are_user_errors():
    with pytest.raises(UserError, match="max_segment_s"):
        Segmenter(max_segment_s=0)
    with pytest.raises(UserError, match="pad_s"):
        Segmenter(pad_s=-1)


# ---------------------------------------------------------------------------------------------------------------
# reading files block by block


def test_iter_audio_blocks_equal_the_file(tmp_path):
    x, _ = recording(0, n_utt=2)
    for name, subtype in [("a.wav", "PCM_16"), ("a.flac", "PCM_24"), ("a.ogg", "VORBIS")]:
        path = tmp_path / name
        sf.write(path, x, SR, subtype=subtype)
        whole, _ = sf.read(path, dtype="float32")
        blocks = list(iter_audio(path, block_s=0.7))
        assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks) and len(blocks) > 5
        np.testing.assert_array_equal(np.concatenate(blocks), whole)


@pytest.mark.parametrize(("sr", "channels", "subtype"), [(44100, 2, "PCM_16"), (8000, 1, "PCM_16"),
                                                         (22050, 1, "FLOAT"), (48000, 2, "PCM_24")])
def test_iter_audio_resamples_like_the_whole_file(tmp_path, sr, channels, subtype):
    rng = np.random.default_rng(sr)
    n = round(7.31 * sr)
    x = 0.3 * rng.standard_normal((n, channels)) * np.sin(np.linspace(0, 9, n))[:, None]
    path = tmp_path / f"a{sr}.{'flac' if subtype == 'PCM_24' else 'wav'}"
    sf.write(path, x, sr, subtype=subtype)
    whole = resample(to_mono(sf.read(path, dtype="float32")[0]), sr)
    got = np.concatenate(list(iter_audio(path, block_s=0.93)))
    assert abs(len(got) - round(n * SR / sr)) <= 1 and len(got) == len(whole)
    assert np.max(np.abs(got - whole)) < 1e-3
    # blocks resampled without context would differ at their edges
    cut = round(0.93 * sr)
    naive = np.concatenate([resample(to_mono(sf.read(path, dtype="float32")[0])[i:i + cut], sr)
                            for i in range(0, n, cut)])
    assert np.max(np.abs(naive[:len(whole)] - whole)) > 1e-3


def test_segments_of_a_file_match_the_array(tmp_path):
    x, truth = recording(1, n_utt=5, noise="white")
    path = tmp_path / "rec.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    from_file = list(segments(path, block_s=2.5))
    assert [(s.start, s.end) for s in from_file] == [(s.start, s.end) for s in segments(x)]
    assert len(from_file) == len(truth)
    check_exact(from_file, x)


def test_iter_audio_bad_files(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(UserFileNotFound, match="nope.wav"):
        list(iter_audio(missing))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is a transcript, not audio\n" * 20)
    for path in (empty, text):
        with pytest.raises(UserError, match=f"{path.name}: not audio soundfile can read"):
            list(iter_audio(path))
    with pytest.raises(UserError, match="directory"):
        iter_audio(tmp_path)
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, np.float32), SR)
    assert list(iter_audio(zero)) == []
    assert list(segments(zero)) == []
    cut = tmp_path / "cut.wav"
    sf.write(cut, np.zeros(SR, np.float32), SR, subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[:-4000])
    with pytest.raises(TruncatedAudioError, match="cut.wav"):
        iter_audio(cut)
