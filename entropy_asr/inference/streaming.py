"""Streaming recognition: audio in chunks (default 640 ms), partial hypotheses as they arrive, a final one per
utterance.

    session = recognizer.stream_session(chunk_s=0.64, left_chunks=4)
    for samples in microphone_blocks():          # 16 kHz float32, any block size
        for event in session.accept(samples):
            print("final" if event.final else "partial", event.text)
    for event in session.finish(): ...

How it runs, per chunk of C = chunk_s / 40 ms encoder frames:
- fbank frames are computed as the samples arrive (Kaldi frames are independent windows, so the
  incremental features equal the whole recording's);
- the encoder runs on a window of the `left_chunks` previous chunks plus the new one, under the
  dynamic-chunk attention mask training uses (docs/method.md, "Encoder"): the new chunk's frames
  attend to the window, never to the future. The left context is cached as features and re-encoded
  with each chunk, so a chunk costs (left_chunks + 1) chunks of encoder compute, whatever the
  stream's length. Two approximations against offline decoding, both counted in the measured gap
  (docs/benchmarks.md): the left context's own deeper-layer states are recomputed without their
  earlier context, and the depthwise convolutions see zeros past the newest frame (exact only for
  `causal_conv` encoders). A model trained with `dynamic_chunk: true` (the paper's) is built for
  this; one trained on full context only (the tiny default) loses more;
- a partial hypothesis: the LLM decodes the current utterance's speech tokens so far (greedy, with
  the guards) every `partial_every` chunks;
- endpointing: after `endpoint_s` of frames the phone CTC head calls blank (or at the training
  maximum length), the utterance's final hypothesis is decoded, with timestamps, and the next
  utterance starts; a stream of any length therefore keeps bounded state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from entropy_asr.data.audio import FRAME_LENGTH_MS, FRAME_SHIFT_MS, SAMPLE_RATE, fbank
from entropy_asr.errors import UserError
from entropy_asr.inference.recognizer import as_16k_mono, float_samples, join_texts, with_original_case
from entropy_asr.inference.segment import iter_audio
from entropy_asr.inference.timestamps import ENCODER_FRAME_DELAY_S, UnitTime, unit_times
from entropy_asr.model.encoder import subsampled_lengths
from entropy_asr.text import Phonemizer, detect_language

FRAME_S = 0.04  # encoder frame: 4 fbank hops of 10 ms
SUBSAMPLING = 4
HOP = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)  # 160 samples per fbank frame
WINDOW = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # 400


@dataclass
class StreamEvent:
    """A hypothesis of the current utterance: partial (may change) or final (the utterance ended)."""

    text: str
    final: bool
    start: float  # the utterance's start in the stream (s)
    end: float  # audio covered so far (s)
    audio_s: float  # audio received when the event was emitted (s)
    compute_s: float  # wall seconds spent in the session up to this event
    truncated: str | None = None
    units: list[UnitTime] | None = field(default=None, repr=False)


class StreamSession:
    """Push audio with `accept`, get StreamEvents; `finish` at the end of the stream."""

    def __init__(self, recognizer, chunk_s: float = 0.64, left_chunks: int = 4, partial_every: int = 1,
                 endpoint_s: float = 0.8, guards: bool = True, timestamps: bool = True):
        chunk = round(chunk_s / FRAME_S)
        if chunk < 1 or abs(chunk * FRAME_S - chunk_s) > 1e-6:
            raise UserError(f"chunk_s must be a positive multiple of {FRAME_S * 1000:.0f} ms (the encoder's frame), "
                            f"got {chunk_s}")
        if isinstance(left_chunks, bool) or not isinstance(left_chunks, int) or left_chunks < 0:
            raise UserError(f"left_chunks must be an integer >= 0 (a bounded left context), got {left_chunks!r}")
        if not isinstance(partial_every, int) or partial_every < 1 or not endpoint_s > 0:
            raise UserError(f"partial_every must be >= 1 and endpoint_s > 0, got {partial_every}, {endpoint_s}")
        if chunk_s > recognizer.max_segment_s:
            raise UserError(f"chunk_s ({chunk_s} s) must not exceed the longest utterance the model decodes "
                            f"({recognizer.max_segment_s} s)")
        self.asr, self.chunk, self.left = recognizer, chunk, left_chunks
        self.partial_every, self.guards, self.timestamps = partial_every, guards, timestamps
        self.endpoint_frames = max(1, round(endpoint_s / FRAME_S))
        self.max_frames = int(recognizer.max_segment_s / FRAME_S)
        self.samples = np.zeros(0, np.float32)  # not yet framed, from sample `self.sample0`
        self.sample0 = 0
        self.received = 0  # samples accepted
        self.feats = torch.zeros(0, 80)  # normalized fbank frames from input frame `self.feat0`
        self.feat0 = 0
        self.n_feats = 0  # fbank frames computed so far
        self.done = 0  # encoder frames output so far
        self.utt_frames: list[torch.Tensor] = []  # encoder frames (t, D) of the current utterance
        self.utt_blank: list[torch.Tensor] = []  # whether the CTC head calls each of them blank
        self.utt_start = 0  # its first encoder frame
        self.chunks_in_utt = 0
        self.last_partial = ""  # the current utterance's last partial text (a partial is sent only when it changes)
        self.compute_s = 0.0
        self.finished = False
        if timestamps and recognizer.phone_ctc:  # the pronunciation dictionaries load once (~1 s), not at a final
            Phonemizer().units("a")

    # ---- input ---------------------------------------------------------------------------------------
    def accept(self, samples: np.ndarray) -> list[StreamEvent]:
        """Take 16 kHz mono float32 samples; returns the events the chunks they complete produce."""
        if self.finished:
            raise UserError("StreamSession.accept after finish(): the stream has ended; start a new session")
        t0 = time.perf_counter()
        x = float_samples(samples if isinstance(samples, (np.ndarray, torch.Tensor)) else np.asarray(samples),
                          "a streamed block")
        if x.ndim == 2:  # (samples, channels)
            x = x.mean(axis=1)
        if x.ndim != 1:
            raise UserError(f"a streamed block is (samples,) or (samples, channels) at 16 kHz, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise UserError("a streamed block holds NaN or infinite samples; the audio is corrupt")
        x = x.astype(np.float32)
        self.received += len(x)
        self.samples = np.concatenate([self.samples, x])
        self._frame()
        events = []
        while self.n_feats >= SUBSAMPLING * (self.done + self.chunk) + 3:  # the next chunk's last frame reads 4t+6
            events += self._encode(self.chunk)
        self.compute_s += time.perf_counter() - t0
        return [self._stamp(e) for e in events]

    def finish(self) -> list[StreamEvent]:
        """The end of the stream: encode what is left, and the last utterance's final hypothesis."""
        if self.finished:
            raise UserError("StreamSession.finish called twice: the stream has ended; start a new session")
        self.finished = True
        t0 = time.perf_counter()
        events = []
        rest = int(subsampled_lengths(self.n_feats)) - self.done if self.n_feats >= 7 else 0
        while rest > 0:
            n = min(rest, self.chunk)
            events += self._encode(n, partial=False)  # the final hypothesis follows at once
            rest -= n
        if self.utt_frames and self._has_speech():  # (a stream ending in silence: nothing more to say)
            events.append(self._final())
        self.compute_s += time.perf_counter() - t0
        return [self._stamp(e) for e in events]

    def _frame(self) -> None:
        """fbank frames for every complete 25 ms window of the samples so far (Kaldi frames are independent)."""
        n = (len(self.samples) - WINDOW) // HOP + 1 if len(self.samples) >= WINDOW else 0
        if n <= 0:
            return
        used = (n - 1) * HOP + WINDOW
        feats = (fbank(self.samples[:used]) - self.asr.mean) * self.asr.inv_std  # (n, 80)
        self.feats = torch.cat([self.feats, feats])
        self.n_feats += n
        self.samples = self.samples[n * HOP:]  # the next frame starts n hops on
        self.sample0 += n * HOP

    # ---- encoder -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, n: int, partial: bool = True) -> list[StreamEvent]:
        """Encode the next `n` encoder frames with the left-context window; endpoint and partial decoding."""
        net, C = self.asr.net, self.chunk
        w0 = max(0, self.done - self.left * C)  # the window's first output frame, chunk-aligned
        lo, hi = SUBSAMPLING * w0 - self.feat0, SUBSAMPLING * (self.done + n) + 3 - self.feat0
        x = self.feats[lo:min(hi, len(self.feats))][None].to(self.asr.device)  # (1, T_in, 80)
        lens = torch.tensor([x.shape[1]], device=x.device)
        frames, _ = net.encode(x, lens, chunk_size=C, left_chunks=-1)  # (1, T_win, D)
        new = frames[0, self.done - w0:self.done - w0 + n]  # (n, D): the chunk's frames
        self.done += n
        # drop features no later window reads
        keep_from = SUBSAMPLING * max(0, self.done - self.left * C)
        if keep_from > self.feat0:
            self.feats, self.feat0 = self.feats[keep_from - self.feat0:], keep_from
        blank = net.ctc_log_probs(new[None])[0].argmax(-1) == 0 if net.ctc_head is not None else \
            torch.zeros(n, dtype=torch.bool)
        self.utt_frames.append(new)
        self.utt_blank.append(blank.cpu())
        self.chunks_in_utt += 1
        if self._endpoint():
            spoke = self._has_speech()
            final = self._final()
            return [final] if spoke else []  # a stretch of silence or noise at the maximum length: nothing to say
        if partial and self.chunks_in_utt % self.partial_every == 0 and self._has_speech():
            event = self._decode(final=False)
            if event.text and event.text != self.last_partial:  # only news
                self.last_partial = event.text
                return [event]
        return []

    def _has_speech(self) -> bool:
        return bool((~torch.cat(self.utt_blank)).any()) if self.utt_blank else False

    def _endpoint(self) -> bool:
        """The utterance ends: speech, then `endpoint_frames` of blanks; or it reached the training maximum."""
        blank = torch.cat(self.utt_blank)
        if len(blank) + self.chunk > self.max_frames:  # another chunk would pass the training maximum
            return True
        if len(blank) <= self.endpoint_frames or not self._has_speech():
            return False
        return bool(blank[-self.endpoint_frames:].all())

    # ---- decoding ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _decode(self, final: bool) -> StreamEvent:
        net = self.asr.net
        frames = torch.cat(self.utt_frames)[None]  # (1, T, D)
        lens = torch.tensor([frames.shape[1]], device=frames.device)
        speech, speech_lens = net.adapt(frames, lens)
        seconds = frames.shape[1] * FRAME_S
        (text, truncated), = self.asr._generate(speech.to(net.llm.dtype), speech_lens, [seconds], self.guards)
        start = self.utt_start * FRAME_S
        units = None
        if final and self.timestamps and self.asr.phone_ctc:
            units = with_original_case(text, unit_times(net.ctc_log_probs(frames)[0].cpu(), text, detect_language(text),
                                                        offset=start + ENCODER_FRAME_DELAY_S))
        return StreamEvent(text, final, start, start + seconds, 0.0, 0.0, truncated, units)

    def _final(self) -> StreamEvent:
        """The current utterance's final hypothesis (empty text if it held no speech); the next one starts."""
        event = self._decode(final=True) if self._has_speech() else StreamEvent(
            "", True, self.utt_start * FRAME_S, self.done * FRAME_S, 0.0, 0.0, None, [])
        self.utt_start, self.utt_frames, self.utt_blank, self.chunks_in_utt = self.done, [], [], 0
        self.last_partial = ""
        return event

    def _stamp(self, e: StreamEvent) -> StreamEvent:
        e.audio_s, e.compute_s = self.received / SAMPLE_RATE, self.compute_s
        return e


def stream(recognizer, audio, chunk_s: float = 0.64, **kw) -> Iterator[StreamEvent]:
    """The events of `audio` fed to a StreamSession `chunk_s` at a time, as if it arrived live: a file path, an array
    or (array, rate) (Recognizer.transcribe's array inputs), or an iterable of 16 kHz blocks (iter_audio's)."""
    session = StreamSession(recognizer, chunk_s=chunk_s, **kw)
    step = round(chunk_s * SAMPLE_RATE)
    if isinstance(audio, (str, Path)):
        blocks = iter_audio(audio)
    elif isinstance(audio, (np.ndarray, torch.Tensor, tuple)):
        blocks = [as_16k_mono(audio, "the streamed audio")]
    else:
        blocks = audio
    for block in blocks:
        for i in range(0, len(block), step):
            yield from session.accept(block[i:i + step])
    yield from session.finish()


def final_text(events: Iterable[StreamEvent]) -> str:
    """The stream's transcript: its final events' text, joined."""
    return join_texts(e.text for e in events if e.final)
