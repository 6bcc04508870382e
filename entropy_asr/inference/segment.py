"""Long-form segmentation: cut a recording of any length into speech segments a model can decode.

    for seg in segments("meeting.flac"):          # or a 16 kHz array
        print(seg.start, seg.end, len(seg.audio))  # seconds; float32 16 kHz samples of [start, end)

- `iter_audio` reads a file block by block (soundfile), downmixed to mono and resampled to 16 kHz per
  block, with enough context at the block edges that the blocks join into exactly what resampling the
  whole file gives: an hour-long recording never sits in memory.
- `Segmenter` cuts a stream of 16 kHz blocks on pauses with an energy VAD (frame log energy, 25 ms
  windows every 10 ms, against an adaptive noise floor), so that each segment is at most
  `max_segment_s` (the training maximum): a speech run longer than that is cut at its quietest frame
  in the last third before the maximum, so nothing is silently truncated. Segments holding no speech
  are dropped. It holds about `max_segment_s` + 3 s of samples whatever the stream's length.

Times are exact sample positions / 16000 of the stream: `seg.audio` is the input's [start, end) slice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view

from entropy_asr.data.audio import (
    SAMPLE_RATE,
    TruncatedAudioError,
    _resampler,
    _riff_data_shortfall,
    resample,
    to_mono,
)
from entropy_asr.errors import UserError, UserFileNotFound

HOP = SAMPLE_RATE // 100  # 10 ms: one VAD frame per hop; all cut points fall on hop boundaries
WIN = SAMPLE_RATE * 25 // 1000  # 25 ms energy window
LEAD = (WIN - HOP) // 2  # a frame's window starts this far before its hop: it is centred on the hop
GROUP = 10  # frames that share one noise-floor estimate (100 ms)
CHUNK = SAMPLE_RATE  # feed() works through its input 1 s at a time, which bounds the buffer
FRAMES_PER_S = SAMPLE_RATE / HOP


# ---------------------------------------------------------------------------------------------------------------
# reading


def iter_audio(path: str | PathLike, block_s: float = 30.0) -> Iterator[np.ndarray]:
    """Mono float32 16 kHz blocks of an audio file (any format/rate soundfile reads), read block by block.

    Channels are averaged; another rate is resampled (the sinc resampler of `entropy_asr.data.audio.resample`)
    block by block with the filter's context at each edge, so the blocks concatenated equal resampling the
    whole file (to float rounding). The file is checked when this is called (missing, not audio, a WAV
    cut short: one-line UserError); a file holding more frames in its header than decode raises
    TruncatedAudioError at its end. A file of 0 samples yields nothing.
    """
    path = Path(path)
    if not block_s > 0:
        raise UserError(f"iter_audio: block_s must be > 0 seconds, got {block_s!r}")
    if not path.exists():
        raise UserFileNotFound(f"{path}: no such audio file; check the path")
    if path.is_dir():
        raise UserError(f"{path}: a directory, not an audio file; give the path of a file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise UserError(f"{path}: not audio soundfile can read ({_one_line(e)}); convert it to WAV or FLAC, "
                        "e.g. ffmpeg -i IN -ac 1 -ar 16000 OUT.wav") from None
    short = _riff_data_shortfall(path)
    if short is not None:
        declared, present = short
        raise TruncatedAudioError(f"{path}: truncated: its header declares {declared} bytes of audio, the file "
                                  f"holds {present}; re-copy or re-export it")
    return _read_blocks(path, int(info.samplerate), block_s)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_blocks(path: Path, sr: int, block_s: float) -> Iterator[np.ndarray]:
    """The generator behind iter_audio (the file is opened on the first block)."""
    if sr == SAMPLE_RATE:
        orig = new = 1
        ctx = 0
    else:
        g = math.gcd(sr, SAMPLE_RATE)
        orig, new = sr // g, SAMPLE_RATE // g
        # output i of torchaudio's resampler reads the inputs [i*orig - width, (i+1)*orig + width): a context
        # of `width` inputs on each side, rounded up to whole periods of `orig` inputs, makes a block's
        # outputs those of the whole file
        width = int(_resampler(orig, new).width)
        ctx = orig * -(-width // orig)
    block = max(orig, round(block_s * sr / orig) * orig)
    pending = np.zeros(0, np.float32)  # input samples from stream position p0 on
    p0 = 0
    done = 0  # input position (a multiple of orig) up to which the outputs have been yielded
    total = 0  # input samples read
    try:
        with sf.SoundFile(str(path)) as f:
            declared = f.frames
            while True:
                try:
                    x = f.read(block, dtype="float32", always_2d=True)
                except sf.LibsndfileError as e:
                    raise UserError(f"{path}: decoding failed after {total / sr:.2f} s ({_one_line(e)}); "
                                    "re-export or convert the file") from None
                if len(x) == 0:
                    break
                x = to_mono(x)
                total += len(x)
                if orig == new:
                    yield x
                    continue
                pending = np.concatenate((pending, x))
                end = ((total - ctx) // orig) * orig  # the outputs of inputs [done, end) have all their context
                if end > done:
                    lo = max(0, done - ctx)
                    y = resample(pending[lo - p0:end + ctx - p0], orig, new)
                    skip = (done - lo) // orig * new
                    yield y[skip:skip + (end - done) // orig * new]
                    done = end
                    keep = max(0, done - ctx)
                    pending, p0 = pending[keep - p0:], keep
    except sf.LibsndfileError as e:  # (opening it: only soundfile's own errors, never a bug in the code above)
        raise UserError(f"{path}: not audio soundfile can read ({_one_line(e)}); convert it to WAV or FLAC") from None
    if orig != new and total > done:
        lo = max(0, done - ctx)
        y = resample(pending[lo - p0:], orig, new)
        skip = (done - lo) // orig * new
        rest = math.ceil(new * total / orig) - done // orig * new  # the whole file's length: ceil(new * n / orig)
        if rest > 0:
            yield y[skip:skip + rest]
    if 0 < total < declared:  # a header (e.g. FLAC's STREAMINFO) promising more than decodes
        raise TruncatedAudioError(f"{path}: truncated: {declared / sr:.2f} s declared, {total / sr:.2f} s decode; "
                                  "re-copy or re-export it")


# ---------------------------------------------------------------------------------------------------------------
# segmentation


@dataclass
class Segment:
    """A piece of the recording holding speech, at most max_segment_s long."""

    start: float  # seconds from the start of the recording (a sample position / 16000)
    end: float
    audio: np.ndarray  # float32 16 kHz samples of [start, end)

    @property
    def duration(self) -> float:
        """end - start, in seconds."""
        return self.end - self.start


class Segmenter:
    """Cuts a stream of 16 kHz blocks into speech segments on pauses (energy VAD with an adaptive noise floor).

    VAD: each 10 ms frame's log energy (variance of a 25 ms window centred on it, in dB of full scale) is
    speech when it exceeds the noise floor by `threshold_db`. The noise floor is the `noise_percentile`-th
    percentile of the frame energies over the last `noise_window_s` (looking `lookahead_s` ahead), never
    below `floor_db`, so digital silence and near-silent noise never count as speech, and stationary
    background noise sets the floor instead of becoming speech. Speech frames closer than `min_silence_s`
    form one region; a region with fewer than `min_speech_s` of speech frames (a click) is dropped.

    Cuts: in the middle of every pause of at least `min_silence_s`; a segment is its region padded by
    `pad_s` on both sides (clipped at the pause's middle and at the recording). A region running past
    `max_segment_s` is cut at the quietest frame of the last third before the maximum, and the next
    segment starts right there, so no segment exceeds the maximum and none is lost.

    Memory: at most about max_segment_s + min_silence_s + lookahead_s + 1 s of samples (`buffered`).
    Output does not depend on how the stream is split into blocks.
    """

    def __init__(self, max_segment_s: float = 20.0, min_silence_s: float = 0.3, pad_s: float = 0.15,
                 threshold_db: float = 8.0, floor_db: float = -65.0, min_speech_s: float = 0.1,
                 noise_window_s: float = 8.0, noise_percentile: float = 10.0, lookahead_s: float = 1.0):
        checks = [("max_segment_s", max_segment_s, max_segment_s >= 1.0, ">= 1"),
                  ("min_silence_s", min_silence_s, min_silence_s > 0, "> 0"),
                  ("pad_s", pad_s, 0 <= pad_s <= max_segment_s / 4, "in [0, max_segment_s / 4]"),
                  ("threshold_db", threshold_db, threshold_db >= 0, ">= 0"),
                  ("floor_db", floor_db, math.isfinite(floor_db), "finite"),
                  ("min_speech_s", min_speech_s, 0 <= min_speech_s < max_segment_s, "in [0, max_segment_s)"),
                  ("noise_window_s", noise_window_s, noise_window_s >= 0.5, ">= 0.5"),
                  ("noise_percentile", noise_percentile, 0 <= noise_percentile <= 100, "in [0, 100]"),
                  ("lookahead_s", lookahead_s, 0 <= lookahead_s <= noise_window_s / 2, "in [0, noise_window_s / 2]")]
        for name, value, ok, want in checks:
            if not ok:
                raise UserError(f"Segmenter: {name} must be {want}, got {value!r}")
        self.max_segment_s = float(max_segment_s)
        self.threshold_db = float(threshold_db)
        self.floor_db = float(floor_db)
        self.noise_percentile = float(noise_percentile)
        self._max = int(round(max_segment_s * SAMPLE_RATE, 6)) // HOP  # in frames
        self._min_silence = max(1, round(min_silence_s * FRAMES_PER_S))
        self._pad = round(pad_s * FRAMES_PER_S)
        self._min_speech = max(1, round(min_speech_s * FRAMES_PER_S))
        self._window = max(GROUP, round(noise_window_s * FRAMES_PER_S))
        self._lookahead = round(lookahead_s * FRAMES_PER_S)
        self._reset()

    def _reset(self) -> None:
        self._buf = np.zeros(4 * CHUNK, np.float32)  # samples [_b0, _b0 + _blen) at _buf[_boff:]
        self._boff = self._blen = self._b0 = 0
        self._total = 0  # samples fed
        self._en = np.zeros(0)  # energies (dB) of frames [_e0, _ke)
        self._e0 = 0
        self._dec = np.zeros(0, bool)  # speech decisions of frames [_f0, _kd)
        self._f0 = 0
        self._lo = 0  # the next segment starts at this frame or later (the last cut point)
        self._forced = False  # the last cut was forced inside speech: the next segment starts exactly at _lo

    @property
    def buffered(self) -> int:
        """Samples held now (bounded by about max_segment_s + 3 s, whatever the stream's length)."""
        return self._blen

    @property
    def _ke(self) -> int:
        return self._e0 + len(self._en)

    @property
    def _kd(self) -> int:
        return self._f0 + len(self._dec)

    def feed(self, block: np.ndarray) -> list[Segment]:
        """Take the next samples of the stream (16 kHz, mono or (T, C)); return the segments they complete."""
        x = to_mono(np.asarray(block))
        out: list[Segment] = []
        for i in range(0, len(x), CHUNK):
            self._append(x[i:i + CHUNK])
            self._analyse(final=False)
            out += self._emit(final=False)
            self._trim()
        return out

    def flush(self) -> list[Segment]:
        """End of the stream: return the remaining segments (the segmenter is then ready for a new stream)."""
        self._analyse(final=True)
        out = self._emit(final=True)
        self._reset()
        return out

    # -- samples ------------------------------------------------------------------------------------------------

    def _append(self, x: np.ndarray) -> None:
        end = self._boff + self._blen
        if end + len(x) > len(self._buf):
            if self._blen + len(x) > len(self._buf) // 2:  # grow (rarely: the buffer is bounded)
                buf = np.zeros(2 * (self._blen + len(x)), np.float32)
            else:
                buf = self._buf
            buf[:self._blen] = self._buf[self._boff:end]
            self._buf, self._boff = buf, 0
            end = self._blen
        self._buf[end:end + len(x)] = x
        self._blen += len(x)
        self._total += len(x)

    def _samples(self, a: int, b: int) -> np.ndarray:
        """Stream samples [a, b), zeros outside [0, total); a >= the buffer's start unless a < 0."""
        lo, hi = max(a, 0), min(b, self._total)
        assert lo >= self._b0 or hi <= lo, (a, self._b0)
        x = self._buf[self._boff + lo - self._b0:self._boff + max(hi, lo) - self._b0]
        if lo == a and hi == b:
            return x
        return np.concatenate((np.zeros(lo - a, np.float32), x, np.zeros(b - max(hi, lo), np.float32)))

    # -- VAD ----------------------------------------------------------------------------------------------------

    def _analyse(self, final: bool) -> None:
        """Energies of the frames whose window is complete (all at the end), then decisions up to the lookahead."""
        ke, total = self._ke, self._total
        if final:
            kend = -(-total // HOP)
        else:
            kend = (total - (WIN - LEAD)) // HOP + 1 if total >= WIN - LEAD else 0
        if kend > ke:
            x = self._samples(HOP * ke - LEAD, HOP * (kend - 1) - LEAD + WIN).astype(np.float64)
            c1 = np.concatenate(([0.0], np.cumsum(x)))
            c2 = np.concatenate(([0.0], np.cumsum(x * x)))
            at = np.arange(kend - ke) * HOP
            mean = (c1[at + WIN] - c1[at]) / WIN
            var = np.maximum((c2[at + WIN] - c2[at]) / WIN - mean * mean, 0.0)
            self._en = np.concatenate((self._en, 10.0 * np.log10(var + 1e-12)))
            ke = kend
        kd = self._kd
        upto = ke if final else (ke - self._lookahead) // GROUP * GROUP
        if upto <= kd:
            return
        groups = np.arange(kd // GROUP, -(-upto // GROUP))
        hi = np.minimum((groups + 1) * GROUP + self._lookahead, ke)
        lo = np.maximum((groups + 1) * GROUP + self._lookahead - self._window, 0)
        noise = np.repeat(self._noise_floor(lo, hi), GROUP)[kd - groups[0] * GROUP:][:upto - kd]
        en = self._en[kd - self._e0:upto - self._e0]
        self._dec = np.concatenate((self._dec, en > noise + self.threshold_db))

    def _noise_floor(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The noise floor of each frame window [lo, hi): a low percentile of its energies, at least floor_db."""
        v = np.maximum(self._en, self.floor_db)
        out = np.empty(len(lo))
        full = (hi - lo) == self._window
        if full.any():
            rows = sliding_window_view(v, self._window)[lo[full] - self._e0]
            out[full] = np.percentile(rows, self.noise_percentile, axis=1)
        for i in np.flatnonzero(~full):  # the stream's first seconds, and its end
            out[i] = np.percentile(v[lo[i] - self._e0:hi[i] - self._e0], self.noise_percentile)
        return out

    # -- cuts ---------------------------------------------------------------------------------------------------

    def _region(self, d: np.ndarray, r0: int, final: bool) -> tuple[int, bool, int | None]:
        """The speech region starting at frame r0 (index into d): (end, closed, start of the next speech or None).

        Speech frames closer than min_silence join one region; it is closed once a pause of min_silence
        follows it (or the stream ended)."""
        x = np.diff(np.concatenate(([0], d[r0:].view(np.int8), [0])))
        starts, ends = np.flatnonzero(x == 1), np.flatnonzero(x == -1)
        big = np.flatnonzero(starts[1:] - ends[:-1] >= self._min_silence)
        if big.size:
            return r0 + int(ends[big[0]]), True, r0 + int(starts[big[0] + 1])
        r1 = r0 + int(ends[-1])
        return r1, final or len(d) - r1 >= self._min_silence, None

    def _emit(self, final: bool) -> list[Segment]:
        """The segments the decisions so far settle (indices below are frames relative to _f0)."""
        out = []
        while True:
            d, f0 = self._dec, self._f0
            i = self._lo - f0
            nz = np.flatnonzero(d[i:])
            if nz.size == 0:
                break
            r0 = i + int(nz[0])
            r1, closed, nxt = self._region(d, r0, final)
            s = i if self._forced else max(i, r0 - self._pad)
            if r1 - s > self._max:  # speech past the longest segment: cut at the quietest frame of its last third
                a, b = s + self._max - self._max // 3, s + self._max
                en = self._en[f0 + a - 1 - self._e0:f0 + b + 1 - self._e0]
                smooth = np.convolve(en, np.ones(3) / 3, mode="valid")  # frames a .. b-1
                c = a + int(np.argmin(smooth))
                out.append(self._segment(f0 + s, f0 + c))
                self._lo, self._forced = f0 + c, True
                continue
            if not closed:
                break
            if not self._forced and d[r0:r1].sum() < self._min_speech:  # a click, not speech
                d[r0:r1] = False
                continue
            if nxt is None or nxt - r1 >= 2 * self._pad:
                if nxt is None and not final and len(d) - r1 < 2 * self._pad:
                    break  # wait for the pause to be long enough for the padding
                e = nxt_lo = r1 + self._pad
            else:  # a pause shorter than two pads: cut in its middle, once the next region is known to be speech
                n1, nclosed, _ = self._region(d, nxt, final)
                if d[nxt:n1].sum() < self._min_speech:
                    if not nclosed:
                        break
                    d[nxt:n1] = False
                    continue
                nxt_lo = (r1 + nxt) // 2
                e = min(r1 + self._pad, nxt_lo)
            out.append(self._segment(f0 + s, f0 + min(e, s + self._max)))
            self._lo, self._forced = f0 + nxt_lo, False
        return out

    def _segment(self, fs: int, fe: int) -> Segment:
        a, b = HOP * fs, min(HOP * fe, self._total)
        assert 0 < b - a <= self.max_segment_s * SAMPLE_RATE, (a, b)
        return Segment(a / SAMPLE_RATE, b / SAMPLE_RATE, self._samples(a, b).copy())

    def _trim(self) -> None:
        """Forget what no future segment or decision needs."""
        d, f0 = self._dec, self._f0
        nz = np.flatnonzero(d[self._lo - f0:])
        if self._forced:
            keep = self._lo
        elif nz.size:
            keep = max(self._lo, self._lo + int(nz[0]) - self._pad)
        else:
            keep = max(self._lo, self._kd - self._pad)
        self._lo = keep
        self._dec, self._f0 = d[keep - f0:], keep
        e0 = max(0, min(keep, self._kd + GROUP + self._lookahead - self._window))
        self._en, self._e0 = self._en[e0 - self._e0:], e0
        b0 = max(0, min(HOP * keep, HOP * self._ke - LEAD))
        drop = b0 - self._b0
        self._boff += drop
        self._blen -= drop
        self._b0 = b0


def segments(source: str | PathLike | np.ndarray, *, block_s: float = 30.0, **kw) -> Iterator[Segment]:
    """The speech segments of a file (read with iter_audio) or of a 16 kHz array, through a Segmenter(**kw)."""
    segmenter = Segmenter(**kw)
    if isinstance(source, (str, PathLike)):
        blocks: Iterable[np.ndarray] = iter_audio(source, block_s)
    else:
        blocks = (np.asarray(source),)
    return _run(segmenter, blocks)


def _run(segmenter: Segmenter, blocks: Iterable[np.ndarray]) -> Iterator[Segment]:
    for block in blocks:
        yield from segmenter.feed(block)
    yield from segmenter.flush()
