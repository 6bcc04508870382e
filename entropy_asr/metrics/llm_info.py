"""LLM-side accessible information: how much of the transcript the audio resolves (docs/method.md).

Over a set of utterances, with NLL_0 the transcript's summed negative log-likelihood (nats,
tokens + EOS) under the LLM with the audio slot emptied and NLL_1 with the audio
(`entropy_asr.model.prompt.transcript_scores`), and C the transcripts' characters (non-space):

    H0 = sum NLL_0 / (C ln 2)    bits per character without the audio
    H1 = sum NLL_1 / (C ln 2)    bits per character with it
    I = H0 - H1                  bits per character the audio makes accessible to the LLM
    share = 1 - H1 / H0          the share of the transcript's entropy the audio resolves
    token_entropy = mean over scored tokens of H(next-token distribution | audio), in bits

All states are sums (float64), so ranks all-reduce to the one-process value.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


def transcript_characters(text: str) -> int:
    """Characters a bits-per-character figure divides by: the non-whitespace characters."""
    return len("".join(text.split()))


class TranscriptInformation(Metric):
    """update(nll_without (B,), nll_with (B,), transcripts, entropy_with (B,), tokens (B,)); compute() -> dict."""

    full_state_update = False

    def __init__(self, **kw):
        super().__init__(**kw)
        for name in ("nll0", "nll1", "chars", "entropy", "tokens"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_without: Tensor, nll_with: Tensor, transcripts: list[str], entropy_with: Tensor,
               tokens: Tensor) -> None:
        if not len(nll_without) == len(nll_with) == len(transcripts) == len(entropy_with) == len(tokens):
            raise ValueError("TranscriptInformation.update: per-utterance inputs differ in length")
        self.nll0 += nll_without.double().sum()
        self.nll1 += nll_with.double().sum()
        self.chars += sum(transcript_characters(t) for t in transcripts)
        self.entropy += entropy_with.double().sum()
        self.tokens += tokens.double().sum()

    def compute(self) -> dict[str, Tensor]:
        if self.chars == 0:
            raise ValueError("TranscriptInformation: no transcript characters scored (non-speech only?)")
        ln2 = math.log(2)
        h0, h1 = self.nll0 / (self.chars * ln2), self.nll1 / (self.chars * ln2)
        return {"h0_bits_per_char": h0, "h1_bits_per_char": h1, "info_bits_per_char": h0 - h1,
                "share_resolved": 1 - h1 / h0, "token_entropy_bits": self.entropy / (self.tokens * ln2)}
