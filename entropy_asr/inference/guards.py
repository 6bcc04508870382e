"""Guards against runaway output when transcribing: a repetition stop and the length cap, both reported.

An LLM decoder that has lost track of the audio tends to loop ("the the the ...", a phrase 28
times) until its token budget runs out. Two guards bound that, and each says when it acted:

- the length cap: at most `tokens_per_second` new tokens per second of audio (DecodeConfig's;
  the same cap training's validation uses). A hypothesis that reaches it without the end-of-turn
  token is reported `truncated: "length"`.
- the repetition stop: generation of a row stops once its last tokens are some n-gram repeated
  back to back more than `min_repeats` times (`RepetitionStop`), and the text is cut after the
  loop's first copy (`cut_repetition`, on words and characters: the units scoring counts). Such a
  hypothesis is reported `truncated: "repetition"`. The threshold is evaluate.py's repetition flag
  (entropy_asr.metrics.scoring.HallucinationParams.min_repeats): a loop the scorer would flag.

Scoring runs (experiments/evaluate.py) use neither guard beyond the length cap: they must show the
model's raw behaviour.
"""

from __future__ import annotations

import re

import torch
from transformers import StoppingCriteria

from entropy_asr.metrics.scoring import HallucinationParams
from entropy_asr.text.script import _HAN

# a unit of a transcript: one Han character, or one Latin/digit word (as the scorer counts them)
_UNIT = re.compile(rf"[{_HAN}]|[A-Za-z0-9'\u00c0-\u024f]+")
MAX_TOKEN_NGRAM = 12  # a repeated unit n-gram (n <= 4 words) spans up to ~12 BPE tokens


def loop_start(items: list, min_repeats: int, max_ngram: int) -> tuple[int, int] | None:
    """(start, n) of the earliest n-gram (n <= max_ngram) that `items` repeats back to back at least `min_repeats`
    times, or None."""
    for i in range(len(items)):
        for n in range(1, max_ngram + 1):
            if i + n * min_repeats > len(items):
                break
            gram = items[i:i + n]
            if all(items[i + r * n:i + (r + 1) * n] == gram for r in range(1, min_repeats)):
                return i, n
    return None


def cut_repetition(text: str, min_repeats: int, max_ngram: int) -> str | None:
    """`text` cut after the first copy of its earliest back-to-back loop of >= min_repeats copies, or None if it
    has none (units: Han characters and Latin words, lowercased)."""
    spans = [(m.start(), m.end(), m.group().lower()) for m in _UNIT.finditer(text)]
    found = loop_start([u for _, _, u in spans], min_repeats, max_ngram)
    if found is None:
        return None
    i, n = found
    return text[:spans[i + n - 1][1]].rstrip()


class RepetitionStop(StoppingCriteria):
    """Stops a row of a batched `generate` once its newest tokens repeat an n-gram `repeats` times back to back."""

    def __init__(self, repeats: int, max_ngram: int = MAX_TOKEN_NGRAM):
        if repeats < 2:
            raise ValueError(f"repeats must be >= 2, got {repeats}")
        self.repeats, self.max_ngram = repeats, max_ngram
        self.fired: torch.Tensor | None = None  # (B,) rows this criterion stopped

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        B, L = input_ids.shape
        stop = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        for n in range(1, min(self.max_ngram, L // self.repeats) + 1):
            tail = input_ids[:, L - n * self.repeats:].view(B, self.repeats, n)  # (B, repeats, n)
            stop |= (tail == tail[:, :1]).all(dim=2).all(dim=1)
        self.fired = stop if self.fired is None or self.fired.shape != stop.shape else self.fired | stop
        return stop


def guard_repeats(params: HallucinationParams | None = None) -> int:
    """Copies in a row at which the repetition stop acts: one more than the scorer's repetition flag needs."""
    return (params or HallucinationParams()).min_repeats + 1
