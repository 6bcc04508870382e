"""CTC forced alignment of a transcript's phones to encoder frames.

The accessible-information probe labels frames with it (PAI, CSAI: entropy_asr.metrics.probe,
callbacks.AccessibleInformationProbe), and the tiny pipeline's distillation lays out the reader's
pseudo speech with it (entropy_asr.model.pseudo_speech.aligned_layout).
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropy_asr.text import PHONE_TO_ID

BLANK_ID = PHONE_TO_ID["<blank>"]


def frame_phone_positions(log_probs: Tensor, lens: Tensor, phones: Tensor, phone_lens: Tensor,
                          max_frames_per_phone: int = 5) -> Tensor:
    """(B, T') index of the transcript phone each encoder frame belongs to (-1 = silence), by CTC forced alignment.

    log_probs (B, T', V) are a CTC head's phone log-posteriors over encoder frames; phones (B, S)
    with phone_lens (B,) the transcript's phones. CTC marks each phone with a spike, so phone i is
    held from its first aligned frame to phone i+1's, at most `max_frames_per_phone` frames (longer
    gaps are pauses); frames before the first phone and after the last are silence. Utterances the
    alignment cannot fit (more phones than frames) are all silence.
    """
    from torchaudio.functional import forced_align  # torchaudio's CTC Viterbi alignment

    B, T = log_probs.shape[:2]
    out = torch.full((B, T), -1, dtype=torch.long)
    lp = log_probs.detach().float().cpu()
    for b in range(B):
        n, s = int(lens[b]), int(phone_lens[b])
        target = phones[b, :s].cpu()
        repeats = int((target[1:] == target[:-1]).sum()) if s > 1 else 0
        if s == 0 or n < s + repeats:  # CTC needs a blank between repeated phones
            continue
        path, _ = forced_align(lp[b:b + 1, :n], target[None], blank=BLANK_ID)  # (1, n) token per frame
        path = path[0]
        prev = torch.cat([torch.tensor([BLANK_ID]), path[:-1]])
        starts = ((path != BLANK_ID) & (path != prev)).nonzero()[:, 0].tolist()  # first frame of each phone
        for i, start in enumerate(starts):
            end = min(starts[i + 1] if i + 1 < len(starts) else n, start + max_frames_per_phone)
            out[b, start:end] = i
    return out
