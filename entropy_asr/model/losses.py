"""The training losses: phone CTC (ctc_loss), and next-token cross-entropy without the full logits
(chunked_lm_loss): Qwen3's 151,936-row vocabulary times every
position of a batch is the largest tensor of a step (16 x 2,000 positions in float32: 19 GB).

Only the positions whose next token is a label (the transcript and EOS; the prompt and the
speech are masked) go through the output layer, in chunks of `chunk` positions, each chunk
recomputed in the backward pass (activation checkpointing), so at most one chunk's logits
(chunk x V) exist at a time. The result equals Hugging Face's ForCausalLMLoss (mean over the
label positions, logits upcast to float32) to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from entropy_asr.errors import UserError
from entropy_asr.model.prompt import IGNORE_INDEX


def _chunk_ce_sum(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> Tensor:
    logits = F.linear(hidden, weight, bias).float()  # (n, V): the only logits alive
    return F.cross_entropy(logits, labels, reduction="sum")


def chunked_lm_loss(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None,
                    chunk: int = 4096) -> Tensor:
    """Mean CE of next tokens: hidden (B, L, H) last hidden states, weight (V, H) output layer, labels (B, L).

    Position t predicts labels[:, t + 1]; labels equal to IGNORE_INDEX (-100) are skipped.
    """
    if chunk < 1:
        raise UserError(f"chunk must be >= 1 positions, got {chunk}")
    target = labels[:, 1:]  # (B, L-1)
    keep = target != IGNORE_INDEX
    h, y = hidden[:, :-1][keep], target[keep]  # (N, H), (N,)
    n = y.numel()
    if n == 0:
        return hidden.sum() * 0.0  # no label in the batch: a zero that keeps the graph
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        part = (h[i:i + chunk], weight, bias, y[i:i + chunk])
        total = total + (checkpoint(_chunk_ce_sum, *part, use_reentrant=False) if torch.is_grad_enabled()
                         else _chunk_ce_sum(*part))
    return total / n


def ctc_loss(log_probs: Tensor, lens: Tensor, phones: Tensor, phone_lens: Tensor) -> Tensor:
    """CTC summed over the batch, divided by the batch size; log_probs (B, T, V), blank = 0.

    Impossible alignments (fewer frames than the label needs) give 0 instead of inf, so one
    unusable utterance does not poison the batch.
    """
    loss = F.ctc_loss(log_probs.transpose(0, 1), phones, lens, phone_lens, blank=0, reduction="sum",
                      zero_infinity=True)
    return loss / log_probs.shape[0]
