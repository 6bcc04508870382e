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


def capped_silence(silent: Tensor, lens: Tensor, max_run: int) -> Tensor:
    """(B, T) bool: which frames to keep so that no run of `silent` frames next to speech is longer than `max_run`.

    A leading run keeps its last `max_run` frames (the ones just before the speech), a trailing run its first
    `max_run`, a run between two stretches of speech its first ceil(max_run / 2) and last floor(max_run / 2). A row
    with no speech frame at all is kept whole (a non-speech clip is read as it is); padding (t >= lens) is dropped.
    """
    if max_run < 1:
        raise ValueError(f"max_run must be >= 1, got {max_run}")
    B, T = silent.shape
    valid = length_mask(lens, T)
    speech = valid & ~silent
    t = torch.arange(T, device=silent.device).expand(B, T)
    prev = torch.where(speech, t, torch.full_like(t, -1)).cummax(dim=1).values  # last speech frame at or before t
    nxt = torch.where(speech, t, torch.full_like(t, T)).flip(1).cummin(dim=1).values.flip(1)  # first at or after t
    since, until = t - prev, nxt - t  # both >= 1 on a silent frame
    lead, trail = prev < 0, nxt >= T
    inner = (since <= (max_run + 1) // 2) | (until <= max_run // 2)
    keep = torch.where(lead, until <= max_run, torch.where(trail, since <= max_run, inner))
    keep = speech | (~speech & keep) | ~speech.any(dim=1, keepdim=True)
    return keep & valid


def keep_frames(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T, ...) and a (B, T) keep mask -> (B, T2, ...) with each row's kept frames in order, zero-padded, and the
    rows' new lengths (B,); T2 is the longest row's count."""
    lens = keep.sum(dim=1)
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # kept frames first, in their order
    T2 = int(lens.max()) if lens.numel() else 0
    order = order[:, :T2]
    out = x.gather(1, order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:]))
    mask = length_mask(lens, T2).view(*order.shape, *([1] * (x.dim() - 2)))
    return out * mask.to(out.dtype), lens
