"""Error rates for the test table and validation: CER (Mandarin), WER (English), MER (mixed), PER (phones).

Scoring units follow entropy_asr.text.tokenize_for_scoring: every Han character is one unit and
every non-Han word is one, so Mandarin scores as CER, English as WER, and code-switched text as
the mixed error rate (MER) that Mandarin-English benchmarks report. Both sides are normalized
with the same normalize_text before scoring.
"""

from __future__ import annotations

import torch
from torchaudio.functional import edit_distance
from torchmetrics import Metric

from entropy_asr.text import normalize_text, tokenize_for_scoring

GROUPS = ("zh", "en", "mix", "none")  # "none": non-speech input, where any output is an insertion
UNIT = {"zh": "cer", "en": "wer", "mix": "mer"}


def contains_units(units: list[str], sub: list[str]) -> bool:
    """Whether `sub` occurs contiguously in `units` (scoring units: a hotword said in a transcript)."""
    n = len(sub)
    return any(units[i:i + n] == sub for i in range(len(units) - n + 1))


def score_units(text: str, language: str) -> list[str]:
    """Normalized scoring units of a transcript or hypothesis, read as `language`."""
    return tokenize_for_scoring(normalize_text(text, language if language in UNIT else None))


class ErrorRates(Metric):
    """Edit-distance error rates per language, summed over utterances (and ranks) before dividing.

    update(hyps, refs, languages); compute() -> {"cer_zh": .., "wer_en": .., "mer_mix": ..,
    "nonempty_none": share of non-speech inputs that got any output}, only for groups seen.
    """

    full_state_update = False

    def __init__(self, **kw):
        super().__init__(**kw)
        n = len(GROUPS)
        self.add_state("errors", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("units", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("utts", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nonempty", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, hyps: list[str], refs: list[str], languages: list[str]) -> None:
        if not len(hyps) == len(refs) == len(languages):
            raise ValueError(f"hyps/refs/languages differ in length: {len(hyps)}/{len(refs)}/{len(languages)}")
        for hyp, ref, lang in zip(hyps, refs, languages):
            if lang not in GROUPS:
                raise ValueError(f"language {lang!r} is not one of {GROUPS}")
            g = GROUPS.index(lang)
            h, r = score_units(hyp, lang), score_units(ref, lang)
            self.errors[g] += edit_distance(r, h)
            self.units[g] += len(r)
            self.utts[g] += 1
            self.nonempty[g] += bool(h)

    def compute(self) -> dict[str, torch.Tensor]:
        out = {}
        for g, lang in enumerate(GROUPS):
            if self.utts[g] == 0:
                continue
            if lang in UNIT:
                out[f"{UNIT[lang]}_{lang}"] = (self.errors[g] / self.units[g].clamp(min=1)).float()
            else:  # non-speech input: the share of clips that got any text at all
                out[f"nonempty_{lang}"] = (self.nonempty[g] / self.utts[g]).float()
        return out


class PhoneErrorRate(Metric):
    """PER: summed phone edit distance over summed reference phones (ids, blank-free), over clips
    with phones; clips with none (non-speech) are counted apart.

    compute() -> {"per": ...} when any clip had reference phones, and {"phones_per_clip": ...},
    the phones emitted per clip where there is nothing to say, when any clip had none.
    """

    full_state_update = False
    key, empty_key = "per", "phones_per_clip"  # the names compute() returns

    def __init__(self, **kw):
        super().__init__(**kw)
        self.add_state("errors", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("units", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("empty_errors", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("empty_utts", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, hyps: list[list[int]], refs: list[list[int]]) -> None:
        for h, r in zip(hyps, refs, strict=True):
            if r:
                self.errors += edit_distance(r, h)
                self.units += len(r)
            else:
                self.empty_errors += len(h)
                self.empty_utts += 1

    def compute(self) -> dict[str, torch.Tensor]:
        out = {}
        if self.units > 0:
            out[self.key] = (self.errors / self.units).float()
        if self.empty_utts > 0:
            out[self.empty_key] = (self.empty_errors / self.empty_utts).float()
        return out


class CharCTCErrorRate(PhoneErrorRate):
    """The same edit-distance rate over character CTC ids (the character-level ablation): "char_er"."""

    key, empty_key = "char_er", "chars_per_clip"


def ctc_greedy(log_probs: torch.Tensor, lens: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks. log_probs (B, T, V)."""
    best = log_probs.argmax(-1)  # (B, T)
    out = []
    for b in range(best.shape[0]):
        seq = best[b, : int(lens[b])]
        keep = torch.ones_like(seq, dtype=torch.bool)
        keep[1:] = seq[1:] != seq[:-1]
        out.append([int(t) for t in seq[keep & (seq != blank)]])
    return out


class TranscriptAndPhoneRates(torch.nn.Module):
    """An LLM stage's error rates: the transcripts' (ErrorRates: update) and, beside them, the phone error of the
    CTC head's greedy phones (PhoneErrorRate: update_phones), so that a stage with a phone head shows how well its
    encoder hears next to how well the whole model transcribes. compute() merges the two dicts."""

    def __init__(self):
        super().__init__()
        self.text, self.phones = ErrorRates(), PhoneErrorRate()

    @property
    def update_called(self) -> bool:
        return self.text.update_called or self.phones.update_called

    def update(self, hyps: list[str], refs: list[str], languages: list[str]) -> None:
        self.text.update(hyps, refs, languages)

    def update_phones(self, hyps: list[list[int]], refs: list[list[int]]) -> None:
        self.phones.update(hyps, refs)

    def compute(self) -> dict[str, torch.Tensor]:
        return {**(self.text.compute() if self.text.update_called else {}),
                **(self.phones.compute() if self.phones.update_called else {})}

    def reset(self) -> None:
        self.text.reset()
        self.phones.reset()
