"""Padding masks of length-sorted batches."""

from __future__ import annotations

import torch
from torch import Tensor


def length_mask(lens: Tensor, max_len: int | None = None) -> Tensor:
    """(B, max_len) bool, True at the positions t < lens[b] (the real frames/tokens of each sequence), on
    lens' device; max_len defaults to the longest length."""
    if max_len is None:
        max_len = int(lens.max()) if lens.numel() else 0
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]
