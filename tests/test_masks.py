"""entropy_asr.model.masks.length_mask: the (B, T) valid-position mask of a padded batch."""

from __future__ import annotations

import torch

from entropy_asr.model.masks import length_mask


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
