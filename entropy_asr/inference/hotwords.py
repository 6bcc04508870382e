"""Hotword retrieval for context biasing: which entries of a user's hotword list the audio probably contains.

A user may give thousands of hotwords (names, product terms); only the few that were probably said should go
into the LLM's prompt. Each hotword is phonemized once (`HotwordIndex`), and at search time its phone sequence
is matched against the phone CTC head's log-posteriors of one utterance, all hotwords in one batch.

The idea is CTC keyword spotting / posteriorgram matching: align the keyword's CTC label sequence to a
sub-window of the utterance with free start and end, and compare that path with the unconstrained best
(greedy) path over the same frames.

Scoring, per hotword with phones p_1..p_L:

* CTC states: p_1, blank, p_2, blank, ..., p_L: the usual 2L+1 states without the leading and trailing
  blank, so the window starts at the first frame of the first phone and ends at the last frame of the last
  phone, as in `timestamps`. A state stays or moves to the next one; a phone may skip the blank before it
  unless it repeats the previous phone (a repeat needs a blank between).
* A path covers frames a..b (any a <= b): each frame's cost is log p(path label) - max_v log p(v), <= 0, 0 where
  the label is that frame's greedy choice. The sum of costs is the path's log-probability minus that of the
  greedy path over the same window. One Viterbi pass (max) with free start and end finds the best placement.
* score = (best sum of costs) / L: the log-likelihood ratio per phone. It is <= 0, and 0 when the greedy
  decoding of the window is exactly the hotword. Dividing by the phones, not the frames, keeps a pause
  inside a placement from diluting its wrong phones (blank frames cost nothing either way), and keeps long
  and short hotwords comparable. A hotword that needs more frames than the utterance has (one per phone,
  plus a blank between repeats) scores -inf.

One pass loops over the T frames with (K, S) tensor operations for all K hotwords, padded to the longest state
sequence; 1,000 hotwords on 500 frames take about a tenth of a second on one CPU thread
(`python -m entropy_asr.inference.hotwords` prints it).

Limits: the CTC head's phones decide everything, so homophones score alike and a misrecognized phone costs
as much as the head is sure of the other one. Very short hotwords (one or two phones) match wherever those
phones are the greedy choice: require a few phones, or rely on `top_k`. `threshold` (DEFAULT_THRESHOLD) is a
starting point; tune it on held-out audio. Only a phone CTC head (vocabulary = the phone inventory) can be used.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from entropy_asr.errors import UserError
from entropy_asr.text import Phonemizer
from entropy_asr.text.inventory import BLANK_ID, PHONES, phones_to_ids

# log-likelihood ratio per phone; on the tiny main-command model (test split, 1,000 distractors;
# experiments/hotword_retrieval.py) -1 retrieved 83% of the hotwords with 0.7 false retrievals per utterance
DEFAULT_THRESHOLD = -1.0
_COST_FLOOR = -64.0  # a frame's cost is floored here (e^-64: impossible either way)


@dataclass
class HotwordHit:
    """A hotword the audio probably holds: its score and where."""

    text: str
    score: float  # log-likelihood ratio per phone of its best placement (<= 0; near 0 = clearly there)
    start: float  # seconds from the start of the audio the posteriors cover (plus `offset`)
    end: float


def _states(ids: list[int]) -> tuple[list[int], list[bool]]:
    """CTC states p_1, blank, ..., p_L and whether each may skip the blank before it (a phone not repeating)."""
    labels: list[int] = []
    skip: list[bool] = []
    for i, p in enumerate(ids):
        if i:
            labels.append(BLANK_ID)
            skip.append(False)
        labels.append(p)
        skip.append(i > 0 and ids[i - 1] != p)
    return labels, skip


def _viterbi(cost: torch.Tensor, labels: torch.Tensor, skip: torch.Tensor,
             last: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Best sum of costs over paths with free start and end, and that path's first and last frame, per hotword.

    cost (T, V + 1): a frame's cost per label, the last column (padding states) 0; labels (K, S): the label of each
    state; skip (K, S) bool: a state may be entered from two states back; last (K,): each hotword's final state.
    Ties go to the earlier start and the later end (the widest window of an equally good placement).
    """
    k, s = labels.shape
    neg = torch.tensor(float("-inf"))
    alpha = torch.full((k, s), float("-inf"))
    first = torch.zeros((k, s), dtype=torch.long)
    best, best_first, best_last = torch.full((k,), float("-inf")), torch.zeros(k, dtype=torch.long), \
        torch.zeros(k, dtype=torch.long)
    rows = torch.arange(k)
    for t in range(cost.shape[0]):
        prev1 = torch.cat([torch.full((k, 1), float("-inf")), alpha[:, :-1]], 1)  # from the state before
        prev2 = torch.cat([torch.full((k, 2), float("-inf")), alpha[:, :-2]], 1)
        prev2 = torch.where(skip, prev2, neg)  # from two states back (over a blank)
        first1 = torch.cat([first[:, :1], first[:, :-1]], 1)
        first2 = torch.cat([first[:, :2], first[:, :-2]], 1)
        new = alpha.clone()
        new_first = first.clone()
        for cand, cand_first in ((prev1, first1), (prev2, first2)):
            take = cand > new
            new = torch.where(take, cand, new)
            new_first = torch.where(take, cand_first, new_first)
        fresh = new[:, 0] < 0  # a placement may start here, at the first phone (0: the empty path before it)
        new[:, 0] = torch.where(fresh, torch.zeros(k), new[:, 0])
        new_first[:, 0] = torch.where(fresh, t, new_first[:, 0])
        alpha = new + cost[t, labels]
        first = new_first
        end = alpha[rows, last]
        better = end >= best
        best = torch.where(better, end, best)
        best_first = torch.where(better, first[rows, last], best_first)
        best_last = torch.where(better, t, best_last)
    return best, best_first, best_last


class HotwordIndex:
    """A user's hotword list, phonemized once (thousands of entries), scored against CTC posteriors in one batch."""

    def __init__(self, hotwords: Sequence[str], language: str | None = None,
                 phonemizer: Callable[[str, str | None], list[str]] | None = None):
        phonemize = phonemizer or Phonemizer()
        self.texts: list[str] = []  # the kept hotwords, stripped, in the order given (first of duplicates)
        self.skipped: list[str] = []  # entries without phones (punctuation, blank lines), as given
        self.phones: list[tuple[str, ...]] = []
        seen: set[str] = set()
        for word in hotwords:
            text = word.strip()
            if text in seen:
                continue
            seen.add(text)
            phones = tuple(phonemize(text, language)) if text else ()
            if not phones:
                self.skipped.append(word)
                continue
            self.texts.append(text)
            self.phones.append(phones)
        states = [_states(phones_to_ids(p)) for p in self.phones]
        width = max((len(lab) for lab, _ in states), default=1)
        self._labels = torch.full((len(states), width), len(PHONES), dtype=torch.long)  # padding: cost 0
        self._skip = torch.zeros((len(states), width), dtype=torch.bool)
        for r, (lab, sk) in enumerate(states):
            self._labels[r, :len(lab)] = torch.tensor(lab)
            self._skip[r, :len(sk)] = torch.tensor(sk, dtype=torch.bool)
        self._nstates = torch.tensor([len(lab) for lab, _ in states], dtype=torch.long)
        self._nphones = torch.tensor([len(p) for p in self.phones], dtype=torch.float32)
        # fewest frames a placement takes: one per phone, plus a blank between repeats
        self._min_frames = torch.tensor([len(p) + sum(a == b for a, b in itertools.pairwise(phones_to_ids(p)))
                                         for p in self.phones], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.texts)

    def scores(self, log_probs: torch.Tensor) -> torch.Tensor:
        """(K,) score of every hotword (see the module docstring), -inf where it cannot fit; for tests/analysis."""
        return self._solve(log_probs)[0]

    def search(self, log_probs: torch.Tensor, top_k: int = 10, threshold: float = DEFAULT_THRESHOLD,
               frame_s: float = 0.04, offset: float = 0.0) -> list[HotwordHit]:
        """The hotwords scoring >= threshold in one utterance's (T, V) log-posteriors, best first, at most top_k."""
        score, first, last = self._solve(log_probs)
        found = torch.nonzero(torch.isfinite(score) & (score >= threshold))[:, 0].tolist()
        found.sort(key=lambda k: (-score[k].item(), k))  # best first; equal scores keep the list's order
        return [HotwordHit(text=self.texts[k], score=score[k].item(), start=offset + first[k].item() * frame_s,
                           end=offset + (last[k].item() + 1) * frame_s) for k in found[:max(top_k, 0)]]

    def _solve(self, log_probs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(score, first frame, last frame) per hotword."""
        if log_probs.ndim != 2:
            raise ValueError(f"log_probs must be (T, V) for one utterance, got shape {tuple(log_probs.shape)}")
        if log_probs.shape[-1] != len(PHONES):
            raise UserError(f"hotword retrieval needs a phone CTC head: the log-posteriors have "
                            f"{log_probs.shape[-1]} classes, the phone inventory has {len(PHONES)} "
                            f"(a character CTC head cannot match phones)")
        k, frames = len(self), log_probs.shape[0]
        if not k or not frames:
            return torch.full((k,), float("-inf")), torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)
        lp = log_probs.detach().to("cpu", torch.float32)
        cost = torch.nan_to_num(lp - lp.max(dim=-1, keepdim=True).values, nan=_COST_FLOOR).clamp(min=_COST_FLOOR)
        cost = torch.cat([cost, torch.zeros(frames, 1)], 1)  # the padding states' label: cost 0
        best, first, last = _viterbi(cost, self._labels, self._skip, self._nstates - 1)
        fits = self._min_frames <= frames
        score = torch.where(fits & torch.isfinite(best), best / self._nphones, torch.tensor(float("-inf")))
        return score.clamp(max=0.0), first, last


if __name__ == "__main__":  # timing: 1,000 CMUdict words against 500 frames of random posteriors
    import random
    import time

    from entropy_asr.text.english import cmu

    torch.set_num_threads(1)
    words = random.Random(0).sample(sorted(w for w in cmu() if w.isalpha()), 1000)
    tic = time.perf_counter()
    index = HotwordIndex(words, language="en")
    built = time.perf_counter() - tic
    gen = torch.Generator().manual_seed(0)
    log_probs = (torch.randn(500, len(PHONES), generator=gen) * 3).log_softmax(-1)
    tic = time.perf_counter()
    hits = index.search(log_probs)
    searched = time.perf_counter() - tic
    tic = time.perf_counter()
    index.scores(log_probs)
    scored = time.perf_counter() - tic
    print(f"{len(index)} hotwords: index {built:.2f} s; 500 frames: search {searched:.3f} s "
          f"({len(hits)} hits), scores of all {scored:.3f} s (one thread)")
