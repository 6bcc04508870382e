"""What sits on the encoder: the phone CTC head (pretraining) and the adapter into the LLM (docs/method.md)."""

from __future__ import annotations

from torch import Tensor, nn

from entropy_asr.errors import UserError
from entropy_asr.model.masks import length_mask


class CTCHead(nn.Module):
    """Phone CTC head, a 3-layer MLP over encoder frames: (B, T, D) -> raw logits (B, T, V), blank = id 0.

    The two hidden layers sit on a residual path (x + MLP(x)) before the output layer: with a
    plain 3-layer stack, phone CTC on the tiny CPU budget stayed on the all-blank plateau for
    hundreds of steps longer (measured: 4.6 vs 2.6 nats/phone after 400 steps).
    """

    def __init__(self, in_dim: int, vocab_size: int | None = None, hidden_dim: int | None = None,
                 dropout: float = 0.1, residual: bool = True):
        super().__init__()
        if vocab_size is None:
            # Imported here so building a model does not load the text front end (pypinyin, g2p).
            from entropy_asr.text.inventory import PHONES

            vocab_size = len(PHONES)
        hidden_dim = hidden_dim or in_dim
        self.vocab_size, self.residual = vocab_size, residual
        self.hidden = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, in_dim), nn.GELU(), nn.Dropout(dropout),
        )
        self.out = nn.Linear(in_dim, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, T, V) for encoder frames (B, T, D); apply log_softmax before CTC."""
        h = self.hidden(x)
        return self.out(x + h if self.residual else h)


class Adapter(nn.Module):
    """Stack k=4 consecutive encoder frames (25 Hz -> 6.25 Hz), then a 2-layer MLP into the LLM's embedding size."""

    def __init__(self, in_dim: int, out_dim: int, k: int = 4, hidden_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if k < 1:
            raise UserError(f"Adapter k (frames stacked per token) must be >= 1, got {k}; the paper uses 4")
        # hidden defaults to out_dim, as FireRedASR-LLM's adapter (Linear(k*D, llm) -> act -> Linear(llm, llm)).
        hidden_dim = hidden_dim or out_dim
        self.k = k
        self.net = nn.Sequential(
            nn.Linear(k * in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        """Map frames (B, T, D) with lengths (B,) to tokens (B, ceil(T/k), out_dim) with lengths ceil(lens/k)."""
        B, T, D = x.shape
        k = self.k
        valid = length_mask(lens, T)  # (B, T)
        # Zero padding first: an utterance's last token may stack a few padded frames, which must read as silence.
        x = x * valid[..., None]
        x = nn.functional.pad(x, (0, 0, 0, -T % k))  # (B, ceil(T/k)*k, D)
        x = x.reshape(B, -1, k * D)  # (B, T/k, k*D): frames kj .. kj+k-1 side by side
        out_lens = (lens + k - 1) // k
        token_valid = length_mask(out_lens, x.size(1))  # (B, T/k)
        return self.net(x) * token_valid[..., None], out_lens

