"""Per-unit timestamps for a transcript, by CTC forced alignment against the phone CTC head's log-posteriors.

The transcript (usually the LLM's hypothesis) is cut into units by the Phonemizer (an English word, a
Mandarin character, an unreadable token), each unit's phones are looked up in the shared inventory, and
torchaudio's forced aligner finds the best CTC path for that phone sequence through the posteriors. A unit
starts at the first frame of its first phone and ends after the last frame of its last phone.

Limits: these are the CTC head's alignment of the LLM's text, not a second recognition. When the text
differs from what was said, the forced alignment still places every unit somewhere, so the times of wrong
words are where the aligner fits them best (their low `score` is the hint). Resolution is one encoder frame
(40 ms). A unit's time covers only frames aligned to its phones: blank frames between units (silence, or
CTC's peaky spikes) belong to no unit, so `end` of one unit and `start` of the next may leave a gap.
Alignment needs at least one frame per phone plus one blank between adjacent identical phones; with fewer
frames `unit_times` returns None and the caller should report "no timestamps" for that utterance.
Only a phone CTC head (vocabulary = the phone inventory) can be used; a character CTC head cannot.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torchaudio.functional as taf

from entropy_asr.errors import UserError
from entropy_asr.text import Phonemizer
from entropy_asr.text.inventory import BLANK_ID, PHONES, phones_to_ids

# Where an encoder frame sits in time: frame t reads fbank frames 4t..4t+6 (25 ms windows every 10 ms), whose
# centres average 40t + 42.5 ms, so frame t stands for [40t + 22.5, 40t + 62.5) ms. Callers add this to `offset`.
ENCODER_FRAME_DELAY_S = 0.0225

@dataclass
class UnitTime:
    """One unit of a transcript (an English word, a Mandarin character, or an unreadable token) and when it is said."""

    text: str
    start: float  # seconds from the start of the audio the posteriors cover (plus `offset`)
    end: float
    score: float  # mean log-posterior of its frames' aligned phones (confidence; <= 0)


def _min_frames(targets: list[int]) -> int:
    """Fewest frames a CTC path for `targets` needs: one per label, plus a blank between adjacent repeats."""
    repeats = sum(a == b for a, b in itertools.pairwise(targets))
    return len(targets) + repeats


def unit_times(log_probs: torch.Tensor, text: str, language: str | None = None, frame_s: float = 0.04,
               offset: float = 0.0, phonemizer: Phonemizer | None = None) -> list[UnitTime] | None:
    """Start/end/score of each unit of `text` in one utterance's (T, V) phone log-posteriors; None if infeasible."""
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs must be (T, V) for one utterance, got shape {tuple(log_probs.shape)}")
    if log_probs.shape[-1] != len(PHONES):
        raise UserError(f"timestamps need a phone CTC head: the log-posteriors have {log_probs.shape[-1]} classes, "
                        f"the phone inventory has {len(PHONES)} (a character CTC head cannot align phones)")
    units = (phonemizer or Phonemizer()).units(text, language)
    # A unit without phones could not be placed; the Phonemizer gives none, but keep the spans in step if it did.
    units = [(unit, phones) for unit, phones in units if phones]
    if not units:
        return []
    ids = [phones_to_ids(phones) for _, phones in units]
    targets = [i for unit_ids in ids for i in unit_ids]
    if log_probs.shape[0] < _min_frames(targets):
        return None
    # One utterance is small: aligning on the CPU in float32 avoids bf16 posteriors and device syncs per span.
    emissions = log_probs.detach().to("cpu", torch.float32)[None]
    labels = torch.tensor(targets, dtype=torch.int32)[None]
    aligned, scores = taf.forced_align(emissions, labels, blank=BLANK_ID)
    spans = taf.merge_tokens(aligned[0], scores[0], blank=BLANK_ID)
    # A blank always separates repeats on a feasible path, so spans map one-to-one onto targets.
    assert len(spans) == len(targets), (len(spans), len(targets))
    frame_scores = scores[0]
    out: list[UnitTime] = []
    k = 0
    for (unit, _), unit_ids in zip(units, ids):
        unit_spans = spans[k:k + len(unit_ids)]
        k += len(unit_ids)
        frames = torch.cat([frame_scores[s.start:s.end] for s in unit_spans])
        out.append(UnitTime(text=unit, start=offset + unit_spans[0].start * frame_s,
                            end=offset + unit_spans[-1].end * frame_s, score=min(frames.mean().item(), 0.0)))
    return out
