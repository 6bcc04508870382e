"""Hotword retrieval by CTC keyword scoring: known answers on hand-built phone posteriors, and a slow reference."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from entropy_asr.errors import UserError
from entropy_asr.inference.hotwords import HotwordIndex
from entropy_asr.text import Phonemizer
from entropy_asr.text.english import cmu
from entropy_asr.text.inventory import BLANK_ID, PHONE_TO_ID, PHONES

FRAME = 0.04
PHONEMIZER = Phonemizer()

# The utterance of most tests: "张伟", a pause, "hello world" (phones as placed below; checked in the first test).
ZHANG_WEI = ("zh", "ang1", "uei3")
HELLO_WORLD = ("HH", "AH0", "L", "OW1", "W", "ER1", "L", "D")
UTTERANCE = (("zh", 2, 4), ("ang1", 4, 6), ("uei3", 7, 9),  # 张伟 at frames 2..8 (zh held two frames)
             ("HH", 14, 15), ("AH0", 15, 16), ("L", 17, 18), ("OW1", 18, 20),  # hello at 14..19
             ("W", 23, 24), ("ER1", 24, 26), ("L", 27, 28), ("D", 28, 29))  # world at 23..28
UTTERANCE_T = 33
UTTERANCE_PHONES = [p for p, _, _ in UTTERANCE]


def peaked(frames: int, spans, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """(T, V) log-posteriors peaking (logit 0 vs -10) on the phone of each (phone, first, end) span, else blank."""
    logits = torch.full((frames, len(PHONES)), -10.0)
    logits[:, BLANK_ID] = 0.0
    for phone, a, b in spans:
        logits[a:b, BLANK_ID] = -10.0
        logits[a:b, PHONE_TO_ID[phone]] = 0.0
    if noise:
        logits += noise * torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed))
    return logits.log_softmax(-1)


def with_phones(table: dict[str, tuple[str, ...]]):
    """A phonemizer that reads the words in `table` as given and everything else with the real Phonemizer."""
    return lambda text, language=None: list(table[text]) if text in table else PHONEMIZER(text, language)


def contains(seq, sub) -> bool:
    return any(tuple(seq[i:i + len(sub)]) == tuple(sub) for i in range(len(seq) - len(sub) + 1))


def distractors() -> list[str]:
    """1,000 real words and Mandarin names, none of whose phones occur as a run in UTTERANCE_PHONES."""
    rng = random.Random(0)
    words = rng.sample(sorted(w for w in cmu() if w.isalpha()), 900)
    surnames, given = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗", "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂国华"
    names: set[str] = set()
    while len(names) < 500:
        names.add(rng.choice(surnames) + "".join(rng.choice(given) for _ in range(rng.choice((1, 2)))))
    out = []
    for text in words + sorted(names):
        phones = PHONEMIZER(text)
        if phones and not contains(UTTERANCE_PHONES, phones) and text not in ("张伟", "张伟国"):
            out.append(text)
    return out[:1000]


@pytest.fixture(scope="module")
def big_index() -> tuple[HotwordIndex, list[str]]:
    words = distractors()
    assert len(words) == 1000
    # the true hotwords sit in the middle of the list: their rank must come from the score, not the order
    hotwords = words[:500] + ["张伟", "hello world", "张伟国", "hello worlds", "Zhang Wei"] + words[500:]
    return HotwordIndex(hotwords), words


def test_phonemizer_phones_used_here():
    # The posteriors below are built for these phones; fail loudly if the lexicon changes under the tests.
    assert tuple(PHONEMIZER("张伟")) == ZHANG_WEI
    assert tuple(PHONEMIZER("hello world")) == HELLO_WORLD
    assert tuple(PHONEMIZER("张伟国")) == (*ZHANG_WEI, "g", "uo2")
    assert tuple(PHONEMIZER("bookkeeper")) == ("B", "UH1", "K", "K", "IY2", "P", "ER0")


def test_present_hotwords_rank_first_where_they_were_said(big_index):
    index, words = big_index
    assert len(index) == 1005
    log_probs = peaked(UTTERANCE_T, UTTERANCE)
    hits = index.search(log_probs, top_k=5, threshold=-0.5)
    assert [h.text for h in hits] == ["张伟", "hello world"]  # the order of the list breaks the tie of 0
    for hit, (a, b) in zip(hits, [(2, 9), (14, 29)]):
        assert hit.score == pytest.approx(0.0, abs=1e-6)
        assert (hit.start, hit.end) == (pytest.approx(a * FRAME), pytest.approx(b * FRAME))

    scores = index.scores(log_probs)
    by_text = dict(zip(index.texts, scores.tolist()))
    assert max(by_text[w] for w in words) < -1.0  # every distractor needs a wrong frame or more
    # A present hotword's phones and then more: the extra phones must take frames whose greedy label is another
    # (cost -10 each), and a pause inside the placement does not dilute that (the score is per phone).
    extra = {"张伟国": 2, "hello worlds": 1}
    for text, wrong in extra.items():
        assert by_text[text] == pytest.approx(-10 * wrong / len(index.phones[index.texts.index(text)]), abs=1e-4)
    assert by_text["Zhang Wei"] < -1.0  # the English reading of the name: other phones
    # search agrees with scores: everything at or above the threshold, best first
    hits = index.search(log_probs, top_k=2000, threshold=-6.0)
    want = sorted((k for k, s in enumerate(scores.tolist()) if s >= -6.0), key=lambda k: -scores[k].item())
    assert [h.text for h in hits] == [index.texts[k] for k in want]
    assert [h.score for h in hits] == pytest.approx([scores[k].item() for k in want], abs=1e-6)
    assert len(hits) > 5  # the threshold lets some distractors in, so the comparison means something


def test_noisy_posteriors_still_rank_the_present_hotwords_first(big_index):
    index, words = big_index
    for seed in range(3):
        log_probs = peaked(UTTERANCE_T, UTTERANCE, noise=2.0, seed=seed)
        hits = index.search(log_probs, top_k=2, threshold=-math.inf)
        assert {h.text for h in hits} == {"张伟", "hello world"}, (seed, hits)
        by_text = dict(zip(index.texts, index.scores(log_probs).tolist()))
        assert max(by_text[w] for w in words) < min(h.score for h in hits) - 0.5, seed


def test_times_follow_frame_length_and_offset():
    index = HotwordIndex(["张伟", "hello world", "hello"])
    hits = index.search(peaked(UTTERANCE_T, UTTERANCE), frame_s=0.02, offset=1.5)
    assert [(h.text, h.start, h.end) for h in hits] == [
        ("张伟", pytest.approx(1.5 + 2 * 0.02), pytest.approx(1.5 + 9 * 0.02)),
        ("hello world", pytest.approx(1.5 + 14 * 0.02), pytest.approx(1.5 + 29 * 0.02)),
        ("hello", pytest.approx(1.5 + 14 * 0.02), pytest.approx(1.5 + 20 * 0.02)),
    ]
    assert [h.text for h in index.search(peaked(UTTERANCE_T, UTTERANCE), top_k=1)] == ["张伟"]


def test_a_repeated_phone_needs_a_blank_between():
    # bookkeeper = B UH1 K K IY2 P ER0; "bookeeper" (made up) has one K
    index = HotwordIndex(["bookkeeper", "bookeeper"],
                         phonemizer=with_phones({"bookeeper": ("B", "UH1", "K", "IY2", "P", "ER0")}))
    two_ks = [("B", 2, 3), ("UH1", 3, 4), ("K", 4, 5), ("K", 6, 7), ("IY2", 7, 8), ("P", 8, 9), ("ER0", 9, 10)]
    scores = index.scores(peaked(12, two_ks))
    assert scores[0].item() == pytest.approx(0.0, abs=1e-6)
    assert scores[1].item() < -1.0  # one K would have to take the second K's frame as blank
    hits = index.search(peaked(12, two_ks), threshold=-1.0)
    assert [(h.text, h.start, h.end) for h in hits] == [("bookkeeper", pytest.approx(2 * FRAME),
                                                         pytest.approx(10 * FRAME))]
    # one K held over two frames: CTC reads a single K, so the word with two Ks must pay for a blank
    one_k = [("B", 2, 3), ("UH1", 3, 4), ("K", 4, 7), ("IY2", 7, 8), ("P", 8, 9), ("ER0", 9, 10)]
    scores = index.scores(peaked(12, one_k))
    assert scores[1].item() == pytest.approx(0.0, abs=1e-6)
    assert scores[0].item() == pytest.approx(-10 / 7, abs=1e-4)  # K blank K over the held K: one -10 frame, 7 phones


def test_a_hotword_longer_than_the_utterance_cannot_match():
    index = HotwordIndex(["bookkeeper", "book"])
    tight = [("B", 0, 1), ("UH1", 1, 2), ("K", 2, 3), ("K", 4, 5), ("IY2", 5, 6), ("P", 6, 7), ("ER0", 7, 8)]
    # 7 phones with a repeat need 8 frames: 8 fit exactly, 7 do not
    assert index.scores(peaked(8, tight))[0].item() == pytest.approx(0.0, abs=1e-6)
    short = peaked(8, tight)[:7]
    scores = index.scores(short)
    assert scores[0].item() == -math.inf
    assert scores[1].item() == pytest.approx(0.0, abs=1e-6)  # book = B UH1 K, at frames 0..2
    assert [h.text for h in index.search(short, threshold=-math.inf)] == ["book"]


def test_empty_and_punctuation_only_hotwords():
    index = HotwordIndex([])
    assert len(index) == 0 and index.skipped == []
    log_probs = peaked(UTTERANCE_T, UTTERANCE)
    assert index.search(log_probs) == []
    assert index.scores(log_probs).shape == (0,)

    index = HotwordIndex(["，。！", "hello", " hello ", "  ", "张伟", "hello"])
    assert index.texts == ["hello", "张伟"]  # duplicates kept once, in the order given
    assert index.skipped == ["，。！", "  "]
    assert len(index) == 2
    assert [h.text for h in index.search(log_probs)] == ["hello", "张伟"]  # equal scores: the list's order
    assert HotwordIndex(["?!"]).search(log_probs) == []


def test_no_frames_and_wrong_vocabulary():
    index = HotwordIndex(["hello"])
    assert index.search(torch.zeros(0, len(PHONES))) == []
    assert index.scores(torch.zeros(0, len(PHONES))).tolist() == [-math.inf]
    with pytest.raises(UserError, match="phone CTC head"):
        index.search(torch.zeros(10, 5000).log_softmax(-1))
    with pytest.raises(UserError, match="phone CTC head"):
        HotwordIndex([]).scores(torch.zeros(10, len(PHONES) + 1))
    with pytest.raises(ValueError, match=r"\(T, V\)"):
        index.search(torch.zeros(1, 10, len(PHONES)))


# --- a slow, obviously correct reference: every window [a, b], the best CTC path through exactly that window ---

def reference(log_probs: torch.Tensor, phones: tuple[str, ...]) -> list[tuple[float, int, int]]:
    """[(cost sum / phones, a, b)] of every window the hotword fits, best first."""
    lp = log_probs.double().tolist()
    cost = [[x - max(row) for x in row] for row in lp]
    ids = [PHONE_TO_ID[p] for p in phones]
    states = [x for i, p in enumerate(ids) for x in ([BLANK_ID, p] if i else [p])]
    out = []
    for a in range(len(cost)):
        alpha = [-math.inf] * len(states)
        for b in range(a, len(cost)):
            if b == a:
                new = [cost[a][states[0]]] + [-math.inf] * (len(states) - 1)
            else:
                new = []
                for s, label in enumerate(states):
                    best = alpha[s]
                    if s >= 1:
                        best = max(best, alpha[s - 1])
                    if s >= 2 and label != BLANK_ID and label != states[s - 2]:
                        best = max(best, alpha[s - 2])
                    new.append(best + cost[b][label])
            alpha = new
            if alpha[-1] > -math.inf:
                out.append((alpha[-1] / len(phones), a, b))
    return sorted(out, key=lambda x: -x[0])


def test_batched_scores_equal_the_reference():
    rng = random.Random(1)
    inventory = ["a1", "b", "ang4", "K", "IY1", "S"]  # few phones, so hotwords partly match random posteriors
    table = {f"w{i}": tuple(rng.choice(inventory) for _ in range(rng.randint(1, 6))) for i in range(20)}
    table["w20"] = ("K", "K", "S", "S", "a1")  # repeats, surely
    table["w21"] = ("b",) * 30  # needs 59 frames: cannot fit
    index = HotwordIndex(list(table), phonemizer=with_phones(table))
    gen = torch.Generator().manual_seed(0)
    logits = torch.full((40, len(PHONES)), -30.0)
    cols = [BLANK_ID] + [PHONE_TO_ID[p] for p in inventory]
    logits[:, cols] = 2.0 * torch.randn(40, len(cols), generator=gen)
    logits[:, BLANK_ID] += 1.0
    log_probs = logits.log_softmax(-1)

    got = index.scores(log_probs)
    hits = {h.text: h for h in index.search(log_probs, top_k=100, threshold=-60.0)}
    for k, text in enumerate(index.texts):
        windows = reference(log_probs, table[text])
        if not windows:
            assert got[k].item() == -math.inf and text not in hits
            continue
        want, a, b = windows[0]
        assert got[k].item() == pytest.approx(want, abs=1e-4), text
        assert hits[text].score == pytest.approx(want, abs=1e-4), text
        if len(windows) == 1 or windows[1][0] < want - 1e-4:  # a clear best window: the same one
            assert (hits[text].start, hits[text].end) == (pytest.approx(a * FRAME), pytest.approx((b + 1) * FRAME))
    assert len(set(itertools.chain.from_iterable(table.values()))) == len(inventory)


def test_a_long_pause_inside_a_placement_does_not_lift_absent_hotwords(big_index):
    """Blank frames cost nothing, and the score is per phone: spanning a 4 s pause gains an absent hotword
    nothing (a score per frame would let it dilute its wrong phones toward 0)."""
    index, words = big_index
    shift = 100  # 4 s of blank between the name and "hello world"
    spread = [(p, a + shift, b + shift) if a >= 14 else (p, a, b) for p, a, b in UTTERANCE]
    log_probs = peaked(UTTERANCE_T + shift, spread)
    by_text = dict(zip(index.texts, index.scores(log_probs).tolist()))
    assert by_text["张伟"] == pytest.approx(0.0, abs=1e-6) and by_text["hello world"] == pytest.approx(0.0, abs=1e-6)
    assert max(by_text[w] for w in words) < -1.0
    before = index.scores(peaked(UTTERANCE_T, UTTERANCE))[index.texts.index("张伟国")].item()
    assert by_text["张伟国"] == pytest.approx(before, abs=1e-4)  # the same as without the pause
