"""Guards against runaway output when transcribing: a repetition stop and the length cap, both reported.

An LLM decoder that has lost track of the audio tends to loop ("the the the ...", a phrase 28
times) until its token budget runs out. Two guards bound that, and each says when it acted:

- the length cap: at most `tokens_per_second` new tokens per second of audio (DecodeConfig's;
  the same cap training's validation uses). A hypothesis that reaches it without the end-of-turn
  token is reported `truncated: "length"`.
- the repetition stop: generation of a row stops once its last tokens are some n-gram repeated
  back to back more than `min_repeats` times and over at least 16 tokens (`RepetitionStop`: a number's
  digits are single tokens), and the text loses the loop (`cut_repetition`, on words and characters: the
  units scoring counts): a hypothesis cut by a limit ends after the loop's first copy; one that ended by
  itself keeps what follows and the loop keeps min_repeats - 1 copies ("对对对对，我知道了" -> "对对对，我
  知道了"). Either is reported `truncated: "repetition"`. The threshold is one more than evaluate.py's
  repetition flag (entropy_asr.metrics.scoring.HallucinationParams.min_repeats).

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
MIN_TOKEN_SPAN = 16  # tokens a loop must cover before decoding stops (digits and letters are single tokens)


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


def cut_repetition(text: str, min_repeats: int, max_ngram: int, ended: bool = False) -> str | None:
    """`text` without its earliest back-to-back loop of >= min_repeats copies (units: Han characters and Latin words,
    lowercased), or None if it has none. An unfinished hypothesis (cut by a limit) is cut after the loop's first
    copy: the rest is the runaway. One that `ended` by itself keeps what follows the loop, and the loop only loses
    its copies beyond min_repeats - 1 (a speaker may say "对对对对" and go on)."""
    spans = [(m.start(), m.end(), m.group().lower()) for m in _UNIT.finditer(text)]
    units = [u for _, _, u in spans]
    found = loop_start(units, min_repeats, max_ngram)
    if found is None:
        return None
    i, n = found
    if not ended:
        return text[:spans[i + n - 1][1]].rstrip()
    copies = 1
    while units[i + copies * n:i + (copies + 1) * n] == units[i:i + n]:
        copies += 1
    keep_end = spans[i + (min_repeats - 1) * n - 1][1]  # the end of the last copy kept
    rest_start = spans[i + copies * n - 1][1]  # the end of the loop's last copy
    return (text[:keep_end] + text[rest_start:]).strip()


class RepetitionStop(StoppingCriteria):
    """Stops a row of a batched `generate` once its newest tokens repeat an n-gram back to back `repeats` times and
    over at least `min_span` tokens (a loop of single tokens needs that many: "2000000" is 6 tokens of a number,
    not a runaway)."""

    def __init__(self, repeats: int, max_ngram: int = MAX_TOKEN_NGRAM, min_span: int = MIN_TOKEN_SPAN):
        if repeats < 2:
            raise ValueError(f"repeats must be >= 2, got {repeats}")
        self.repeats, self.max_ngram, self.min_span = repeats, max_ngram, min_span
        self.fired_at: torch.Tensor | None = None  # (B,) new tokens when the row was stopped, -1 if never

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        B, L = input_ids.shape
        stop = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        for n in range(1, self.max_ngram + 1):
            copies = max(self.repeats, -(-self.min_span // n))
            if n * copies > L:
                break
            tail = input_ids[:, L - n * copies:].view(B, copies, n)  # (B, copies, n)
            stop |= (tail == tail[:, :1]).all(dim=2).all(dim=1)
        if self.fired_at is None or self.fired_at.shape[0] != B:
            self.fired_at = torch.full((B,), -1, dtype=torch.long)
        self.fired_at = torch.where(stop.cpu() & (self.fired_at < 0), L, self.fired_at)
        return stop


def guard_repeats(params: HallucinationParams | None = None) -> int:
    """Copies in a row at which the repetition stop acts: one more than the scorer's repetition flag needs."""
    return (params or HallucinationParams()).min_repeats + 1
