"""Per-utterance scoring for evaluation: edit operations, hallucination flags, and their summaries.

Units are error_rate.score_units' (every Han character one unit, every other word one), after the
same normalization on both sides, so a language's rate is CER (zh), WER (en) or MER (mix). The
substitution / deletion / insertion counts come from jiwer's alignment of the unit sequences.

Flags (`HallucinationParams`; utterances with a non-empty reference only):
- hallucination (NIM4-ASR's definition): the hypothesis is longer than the reference by over
  `length_ratio` - 1 (50%) in units, and its lexical overlap with the reference is negligible:
  aligned hits / reference units <= `max_overlap`.
- repetition: the hypothesis holds an n-gram loop, some n-gram (1 <= n <= `max_ngram`) repeated
  back to back at least `min_repeats` times, more often in a row than anywhere in the reference.
Rates over utterances: hallucination_rate, repetition_rate; insertion_rate = inserted units /
reference units. On empty references (non-speech clips): nonspeech_emission_rate, the share of
clips with any output, and nonspeech_mean_chars, the mean non-space characters emitted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import jiwer

from entropy_asr.errors import UserError
from entropy_asr.metrics.error_rate import UNIT, score_units


@dataclass
class HallucinationParams:
    length_ratio: float = 1.5
    max_overlap: float = 0.1
    max_ngram: int = 4
    min_repeats: int = 3

    def __post_init__(self):
        if self.length_ratio < 1 or not 0 <= self.max_overlap <= 1 or self.max_ngram < 1 or self.min_repeats < 2:
            raise UserError(f"HallucinationParams: need length_ratio >= 1, 0 <= max_overlap <= 1, max_ngram >= 1 "
                            f"and min_repeats >= 2, got {self}")


@dataclass
class UtteranceScore:
    """One scored utterance: unit counts, edit operations and flags."""

    language: str
    ref_units: int
    hyp_units: int
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    emitted_chars: int
    flags: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def longest_loop(units: list[str], max_ngram: int) -> int:
    """The most times any n-gram (n <= max_ngram) repeats back to back in `units` (1 = no loop)."""
    best = 1
    for n in range(1, max_ngram + 1):
        for start in range(n):  # every phase of the n-gram grid
            run = 1
            for i in range(start + n, len(units) - n + 1, n):
                run = run + 1 if units[i:i + n] == units[i - n:i] else 1
                best = max(best, run)
    return best


def score_utterance(ref: str, hyp: str, language: str, params: HallucinationParams | None = None) -> UtteranceScore:
    """Score `hyp` against `ref` read as `language` ("zh", "en", "mix"; "none" = non-speech, empty ref)."""
    p = params or HallucinationParams()
    r, h = score_units(ref, language), score_units(hyp, language)
    ops = jiwer.process_words(" ".join(r), " ".join(h))
    score = UtteranceScore(language, len(r), len(h), ops.hits, ops.substitutions, ops.deletions, ops.insertions,
                           len("".join(hyp.split())))
    if r:
        if len(h) > p.length_ratio * len(r) and ops.hits / len(r) <= p.max_overlap:
            score.flags.append("hallucination")
        if longest_loop(h, p.max_ngram) >= max(p.min_repeats, longest_loop(r, p.max_ngram) + 1):
            score.flags.append("repetition")
    return score


def summarize(scores: list[UtteranceScore]) -> dict:
    """Rates and counts over `scores`: {"overall": {...}, "zh": {...}, ...} (a language only if present).

    Each group: utterances, ref_units, substitutions, deletions, insertions, error_rate (errors /
    reference units) and its named form (cer / wer / mer for a single language), insertion_rate,
    hallucination_rate, repetition_rate (over utterances with a reference), and for non-speech
    clips nonspeech_emission_rate and nonspeech_mean_chars.
    """
    groups: dict[str, list[UtteranceScore]] = {"overall": list(scores)}
    for s in scores:
        groups.setdefault(s.language, []).append(s)
    return {name: _group(group, name) for name, group in groups.items()}


def _group(scores: list[UtteranceScore], name: str) -> dict:
    speech = [s for s in scores if s.ref_units]
    silent = [s for s in scores if not s.ref_units]
    total = Counter()
    for s in scores:
        total.update(substitutions=s.substitutions, deletions=s.deletions, insertions=s.insertions,
                     ref_units=s.ref_units)
    out: dict = {"utterances": len(scores), **{k: total[k] for k in ("ref_units", "substitutions", "deletions",
                                                                      "insertions")}}
    if total["ref_units"]:
        out["error_rate"] = (total["substitutions"] + total["deletions"] + total["insertions"]) / total["ref_units"]
        out["insertion_rate"] = total["insertions"] / total["ref_units"]
        if name in UNIT:
            out[UNIT[name]] = out["error_rate"]
    if speech:
        out["hallucination_rate"] = sum("hallucination" in s.flags for s in speech) / len(speech)
        out["repetition_rate"] = sum("repetition" in s.flags for s in speech) / len(speech)
    if silent:
        out["nonspeech_emission_rate"] = sum(s.hyp_units > 0 for s in silent) / len(silent)
        out["nonspeech_mean_chars"] = sum(s.emitted_chars for s in silent) / len(silent)
    return out


def as_record(score: UtteranceScore) -> dict:
    """A JSON-ready dict of one score (with its error count)."""
    return {**asdict(score), "errors": score.errors}
