"""Per-unit timestamps by forced alignment: known answers on hand-built phone posteriors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from entropy_asr.errors import UserError
from entropy_asr.inference.timestamps import UnitTime, unit_times
from entropy_asr.text import Phonemizer
from entropy_asr.text.inventory import BLANK_ID, PHONE_TO_ID, PHONES, UNK

FRAME = 0.04


def peaked(T: int, placed: dict[int, str]) -> torch.Tensor:
    """(T, V) log-posteriors: frame t peaks on the phone placed[t] (blank where nothing is placed)."""
    logits = torch.full((T, len(PHONES)), -10.0)
    for t in range(T):
        logits[t, PHONE_TO_ID[placed[t]] if t in placed else BLANK_ID] = 0.0
    return logits.log_softmax(-1)


def place(*spans: tuple[str, int, int]) -> dict[int, str]:
    """{frame: phone} from (phone, first frame, end frame exclusive) spans."""
    return {t: phone for phone, a, b in spans for t in range(a, b)}


def check(got: list[UnitTime] | None, want: list[tuple[str, int, int]], offset: float = 0.0) -> None:
    """The units' texts and their [start, end) frames, in seconds with the offset applied."""
    assert got is not None
    assert [u.text for u in got] == [w[0] for w in want]
    for u, (_, a, b) in zip(got, want):
        assert u.start == pytest.approx(offset + a * FRAME, abs=1e-9), u
        assert u.end == pytest.approx(offset + b * FRAME, abs=1e-9), u


def test_phonemizer_units_used_here():
    # The posteriors below are built for these phones; fail loudly if the lexicon changes under the tests.
    p = Phonemizer()
    assert p.units("hello world") == [("hello", ("HH", "AH0", "L", "OW1")), ("world", ("W", "ER1", "L", "D"))]
    assert p.units("世界") == [("世", ("sh", "i4")), ("界", ("j", "ie4"))]
    assert p.units("bus sun") == [("bus", ("B", "AH1", "S")), ("sun", ("S", "AH1", "N"))]


def test_english_words_at_the_frames_they_peak():
    placed = place(("HH", 2, 3), ("AH0", 4, 6), ("L", 6, 7), ("OW1", 8, 9),  # silence 9..14 between the words
                   ("W", 15, 16), ("ER1", 16, 18), ("L", 19, 20), ("D", 20, 21))
    got = unit_times(peaked(24, placed), "Hello, world!", offset=1.5)
    check(got, [("hello", 2, 9), ("world", 15, 21)], offset=1.5)


def test_frame_length_scales_times():
    placed = place(("HH", 2, 3), ("AH0", 3, 4), ("L", 4, 5), ("OW1", 5, 6), ("W", 10, 11), ("ER1", 11, 12),
                   ("L", 12, 13), ("D", 13, 14))
    got = unit_times(peaked(16, placed), "hello world", frame_s=0.02)
    assert got is not None
    assert [x for u in got for x in (u.start, u.end)] == pytest.approx([0.04, 0.12, 0.20, 0.28], abs=1e-9)


def test_mandarin_characters_get_their_own_times():
    placed = place(("sh", 1, 2), ("i4", 2, 4), ("j", 7, 8), ("ie4", 8, 11))
    got = unit_times(peaked(13, placed), "世界", language="zh")
    check(got, [("世", 1, 4), ("界", 7, 11)])


def test_mixed_mandarin_and_english():
    placed = place(("HH", 0, 1), ("AH0", 1, 2), ("L", 2, 3), ("OW1", 3, 5),
                   ("sh", 6, 7), ("i4", 7, 8), ("j", 9, 10), ("ie4", 10, 12))
    got = unit_times(peaked(14, placed), "hello世界", language="mix", offset=0.4)
    check(got, [("hello", 0, 5), ("世", 6, 8), ("界", 9, 12)], offset=0.4)


def test_unreadable_token_aligns_as_unk():
    placed = place(("HH", 1, 2), ("AH0", 2, 3), ("L", 3, 4), ("OW1", 4, 5), (UNK, 7, 9),
                   ("W", 11, 12), ("ER1", 12, 13), ("L", 13, 14), ("D", 14, 15))
    phonemizer = Phonemizer()
    got = unit_times(peaked(16, placed), "hello Ωμέγα world", phonemizer=phonemizer)
    check(got, [("hello", 1, 5), ("Ωμέγα", 7, 9), ("world", 11, 15)])
    assert phonemizer.unk_counts["Ωμέγα"] == 1  # the caller's phonemizer is the one used


def test_repeated_phone_across_units_needs_a_blank():
    # "bus sun": S ends one word and starts the next; a single run of S frames could not be two phones.
    placed = place(("B", 1, 2), ("AH1", 2, 3), ("S", 3, 5), ("S", 6, 8), ("AH1", 8, 9), ("N", 9, 10))
    check(unit_times(peaked(11, placed), "bus sun"), [("bus", 1, 5), ("sun", 6, 10)])


def test_minimum_frames_count_the_blank_between_repeats():
    flat = torch.zeros(7, len(PHONES)).log_softmax(-1)
    # 6 phones + 1 blank between the two S: 7 frames admit exactly one path, B AH S _ S AH N.
    check(unit_times(flat, "bus sun"), [("bus", 0, 3), ("sun", 4, 7)])
    assert unit_times(flat[:6], "bus sun") is None


def test_too_few_frames_is_none():
    flat = torch.zeros(8, len(PHONES)).log_softmax(-1)
    check(unit_times(flat, "hello world"), [("hello", 0, 4), ("world", 4, 8)])  # one frame a phone just fits
    assert unit_times(flat[:7], "hello world") is None
    assert unit_times(flat[:0], "hello world") is None


@pytest.mark.parametrize("text", ["", "   ", "。，！", "... ?!"])
def test_no_units_is_empty(text):
    assert unit_times(torch.zeros(5, len(PHONES)).log_softmax(-1), text) == []


def test_char_ctc_vocabulary_is_refused():
    with pytest.raises(UserError, match="phone CTC head"):
        unit_times(torch.zeros(20, len(PHONES) + 3000).log_softmax(-1), "hello")
    with pytest.raises(UserError, match="phone CTC head"):
        unit_times(torch.zeros(20, len(PHONES) - 1).log_softmax(-1), "hello")


def test_bad_language_is_a_user_error():
    with pytest.raises(UserError, match="language"):
        unit_times(torch.zeros(20, len(PHONES)).log_softmax(-1), "hello", language="fr")


def test_times_are_monotonic_and_inside_the_audio():
    g = torch.Generator().manual_seed(0)
    log_probs = (3 * torch.randn(60, len(PHONES), generator=g)).log_softmax(-1)
    text = "hello 世界 world 42 bus sun"
    got = unit_times(log_probs, text, offset=10.0)
    assert got is not None
    assert [u.text for u in got] == [u for u, _ in Phonemizer().units(text)]
    for u in got:
        assert 10.0 <= u.start < u.end <= 10.0 + 60 * FRAME
        assert u.score <= 0
    for a, b in itertools.pairwise(got):
        assert a.end <= b.start


def test_score_is_higher_for_peaked_than_flat_posteriors():
    placed = place(("sh", 1, 2), ("i4", 2, 4), ("j", 7, 8), ("ie4", 8, 11))
    sharp = unit_times(peaked(13, placed), "世界")
    flat = unit_times(torch.zeros(13, len(PHONES)).log_softmax(-1), "世界")
    assert sharp is not None and flat is not None
    for s, f in zip(sharp, flat):
        assert f.score == pytest.approx(-math.log(len(PHONES)), abs=1e-5)  # uniform: every frame is -log V
        assert -0.1 < s.score <= 0
        assert s.score > f.score


def test_score_averages_the_units_own_phone_frames():
    # Lower the peak of one phone of "世": only that unit's score drops, by the mean over its 3 phone frames.
    placed = place(("sh", 1, 2), ("i4", 2, 4), ("j", 7, 8), ("ie4", 8, 11))
    base = peaked(13, placed)
    weak = base.clone()
    logits = torch.full((len(PHONES),), -10.0)
    logits[[BLANK_ID, PHONE_TO_ID["sh"]]] = 0.0  # sh still wins the frame, at about half the probability
    weak[1] = logits.log_softmax(-1)
    a, b = unit_times(base, "世界"), unit_times(weak, "世界")
    assert a is not None and b is not None
    expect = (weak[1, PHONE_TO_ID["sh"]] + base[2, PHONE_TO_ID["i4"]] + base[3, PHONE_TO_ID["i4"]]) / 3
    assert b[0].score == pytest.approx(expect.item(), abs=1e-5)
    assert b[0].score < a[0].score - 0.1
    assert b[1].score == pytest.approx(a[1].score, abs=1e-6)
    assert (b[0].start, b[0].end) == (a[0].start, a[0].end)


def test_low_precision_posteriors_give_the_same_times():
    placed = place(("sh", 1, 2), ("i4", 2, 4), ("j", 7, 8), ("ie4", 8, 11))
    check(unit_times(peaked(13, placed).to(torch.bfloat16), "世界"), [("世", 1, 4), ("界", 7, 11)])
