"""entropy_asr.model.masks: length_mask (the (B, T) valid-position mask of a padded batch), capped_silence and
keep_frames (the silence runs the adapter reads under adapter.max_silence)."""

from __future__ import annotations

import pytest
import torch

from entropy_asr.model.masks import capped_silence, keep_frames, length_mask


def test_length_mask_marks_the_first_lens_positions():
    lens = torch.tensor([3, 0, 5])
    want = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(length_mask(lens, 6), want)
    assert torch.equal(length_mask(lens), want[:, :5])  # max_len defaults to the longest
    assert length_mask(lens, 2).shape == (3, 2) and length_mask(lens, 2).dtype == torch.bool
    assert length_mask(torch.zeros(0, dtype=torch.long)).shape == (0, 0)
    # the idiom it replaces, for int32 lengths too
    lens32 = torch.tensor([4, 1], dtype=torch.int32)
    assert torch.equal(length_mask(lens32, 7), torch.arange(7)[None, :] < lens32[:, None])


def _row(text: str) -> torch.Tensor:
    """'12ab123c12' -> (T,) bool silent mask: a digit or '.' is a silent frame, a letter speech."""
    return torch.tensor([not c.isalpha() for c in text])


def _kept(text: str, max_run: int, length: int | None = None) -> str:
    keep = capped_silence(_row(text)[None], torch.tensor([len(text) if length is None else length]), max_run)[0]
    return "".join(c for c, k in zip(text, keep.tolist()) if k)


def test_capped_silence_shortens_each_kind_of_run_to_max_run():
    # leading: the last frames before the speech; trailing: the first after it; inner: ceil/floor halves of each end
    assert _kept("12345a", 2) == "45a"
    assert _kept("a12345", 2) == "a12"
    assert _kept("a1234567b", 3) == "a127b"
    assert _kept("a1234567b", 4) == "a1267b"
    assert _kept("a1234567b", 1) == "a1b"
    # runs at or under the cap, and speech, are untouched
    assert _kept("12a1b12", 2) == "12a1b12"
    assert _kept("abc", 1) == "abc"
    # no speech at all: the clip is read whole (a non-speech clip, as trained); padding is always dropped
    assert _kept("......", 2) == "......"
    assert _kept("1234ab5678xyz", 2, length=10) == "34ab56"
    assert _kept("1234ab5678", 2, length=0) == ""
    with pytest.raises(ValueError, match="max_run"):
        capped_silence(_row("a.")[None], torch.tensor([2]), 0)


def test_capped_silence_rows_are_independent():
    rows = ["123ab12345c1234", "ab.............", "..............."]
    silent = torch.stack([_row(r) for r in rows])
    keep = capped_silence(silent, torch.tensor([15, 15, 9]), 2)
    for i in range(len(rows)):
        one = capped_silence(silent[i:i + 1], torch.tensor([[15, 15, 9][i]]), 2)
        assert torch.equal(keep[i], one[0])
    assert keep.sum(1).tolist() == [2 + 2 + 2 + 1 + 2, 2 + 2, 9]


def test_keep_frames_gathers_kept_frames_in_order_and_zero_pads():
    x = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    keep = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    out, lens = keep_frames(x, keep)
    assert lens.tolist() == [3, 1] and out.shape == (2, 3, 3)
    assert torch.equal(out[0], x[0, [0, 2, 3]])
    assert torch.equal(out[1, 0], x[1, 1]) and not out[1, 1:].any()
    ids, id_lens = keep_frames(torch.tensor([[4, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 0, 0]]).bool())
    assert ids.tolist() == [[5, 6], [7, 0]] and id_lens.tolist() == [2, 1]  # (B, T) ids too: padding 0
