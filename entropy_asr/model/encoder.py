"""The speech encoder: a FireRedASR-AED-style Conformer over 80-dim fbank, 4x subsampled to 25 Hz.

Read top to bottom: config -> subsampling -> rotary positions -> chunk masks -> the block's
parts (FFN, self-attention, conv module) -> block -> encoder (the sizes: experiments/models/).

Streaming (docs/method.md, "Encoder": dynamic-chunk attention, as in WeNet's U2): in training, each
batch may get a chunk mask; frame i then attends to its own chunk and some previous chunks,
never to later ones. The depthwise conv still looks conv_kernel // 2 frames ahead per layer
unless `causal_conv=True`, and the subsampler always looks 6 input frames (60 ms) ahead of
the first input frame of each output frame; a real streaming decoder must buffer for both.

Deviation from FireRedASR-AED: positions are rotary embeddings (RoPE) on q and k instead of
Transformer-XL relative positions (see `rotary_tables`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from entropy_asr.errors import UserError
from entropy_asr.model.masks import length_mask

MIN_INPUT_FRAMES = 7  # the smallest T two no-padding 3x3/stride-2 convs turn into one output frame


@dataclass
class EncoderConfig:
    """Shape and streaming behaviour of a ConformerEncoder.

    The defaults are a small ~5.4M-parameter Conformer (d_model 192, ffn 768, dropout 0.1), not a size any
    config trains: the sizes are experiments/models/<size>/encoder.yaml (tiny: d_model 144, ffn 576, 3.1M;
    paper: d_model 1280, ~600M).
    """

    input_dim: int = 80  # fbank bins
    d_model: int = 192
    num_layers: int = 6
    num_heads: int = 4
    ffn_dim: int = 768
    conv_kernel: int = 15  # depthwise conv width, odd so "same" padding keeps frames aligned
    dropout: float = 0.1
    # Channels of both 3x3 convs in the 4x subsampler; 64, not 192: at 192 they doubled the CPU step time of
    # this d_model-192 model (16 x 5 s: 2.1 s vs 1.1 s fwd+bwd on 2 cores) for 0.8M more weights.
    subsampling_channels: int = 64
    dynamic_chunk: bool = False  # sample a chunk mask per training batch (see sample_chunk)
    max_chunk: int = 25  # chunk sizes are drawn from [1, max_chunk] output frames (25 = 1 s)
    max_left_chunks: int = -1  # -1: see all previous chunks; N >= 0: left chunks drawn from [0, N]
    full_context_prob: float = 0.5  # share of training batches that get no chunk mask at all
    causal_conv: bool = False  # left-padded depthwise conv, so no layer looks into the future
    rope_base: float = 10000.0
    activation_checkpointing: bool = False  # recompute each block in the backward pass: memory for ~1/3 more compute

    def __post_init__(self):
        for name in ("input_dim", "d_model", "num_layers", "num_heads", "ffn_dim", "conv_kernel",
                     "subsampling_channels", "max_chunk"):
            if getattr(self, name) < 1:
                raise UserError(f"EncoderConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.input_dim < MIN_INPUT_FRAMES:
            raise UserError(f"EncoderConfig.input_dim must be >= {MIN_INPUT_FRAMES} (the subsampler also "
                            f"shrinks the feature axis 4x), got {self.input_dim}; use 80 fbank bins")
        if self.d_model % self.num_heads:
            raise UserError(f"EncoderConfig.d_model ({self.d_model}) must be divisible by num_heads "
                            f"({self.num_heads}); pick num_heads from the divisors of d_model")
        if (self.d_model // self.num_heads) % 2:
            raise UserError(f"EncoderConfig.d_model // num_heads = {self.d_model // self.num_heads} must be even "
                            "for rotary position embeddings; change d_model or num_heads")
        if self.conv_kernel % 2 == 0:
            raise UserError(f"EncoderConfig.conv_kernel must be odd so the depthwise conv keeps frames aligned, "
                            f"got {self.conv_kernel}; use {self.conv_kernel - 1} or {self.conv_kernel + 1}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"EncoderConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.full_context_prob <= 1.0:
            raise UserError(f"EncoderConfig.full_context_prob must be a probability in [0, 1], "
                            f"got {self.full_context_prob}")
        if self.max_left_chunks < -1:
            raise UserError(f"EncoderConfig.max_left_chunks must be -1 (all previous chunks) or >= 0, "
                            f"got {self.max_left_chunks}")
        if self.rope_base <= 1.0:
            raise UserError(f"EncoderConfig.rope_base must be > 1, got {self.rope_base}; the usual value is 10000")


def subsampled_lengths(lens: Tensor | int) -> Tensor | int:
    """Output lengths of Conv2dSubsampling4 for input lengths `lens` (an int or an int tensor)."""
    # Each 3x3/stride-2 conv without padding maps L -> (L - 3) // 2 + 1 = (L - 1) // 2, so two give
    # ((L - 1) // 2 - 1) // 2 = (L - 3) // 4. Output frame t reads input frames 4t .. 4t + 6, so these
    # are exactly the output frames that see no padding.
    return ((lens - 1) // 2 - 1) // 2


class Conv2dSubsampling4(nn.Module):
    """Two 3x3 stride-2 Conv2d + ReLU, then Linear: (B, T, F) at 100 Hz -> (B, (T-3)//4, d_model) at 25 Hz."""

    def __init__(self, input_dim: int, d_model: int, channels: int, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(),
        )
        freq_out = subsampled_lengths(input_dim)  # the feature axis shrinks the same way
        self.out = nn.Linear(channels * freq_out, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        """Subsample features `x` (B, T, F) with valid lengths `lens` (B,)."""
        if x.size(1) < MIN_INPUT_FRAMES:
            raise UserError(f"Conv2dSubsampling4 needs at least {MIN_INPUT_FRAMES} input frames (70 ms), "
                            f"got T={x.size(1)}; drop or pad such short utterances")
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        B, C, T, Fq = x.shape
        x = x.transpose(1, 2).reshape(B, T, C * Fq)  # (B, T', C*F')
        return self.dropout(self.out(x)), subsampled_lengths(lens)  # (B, T', d_model)


def rotary_tables(num_frames: int, head_dim: int, base: float, device=None) -> tuple[Tensor, Tensor]:
    """cos and sin tables (T, head_dim) for rotary position embeddings (Su et al. 2021, RoFormer eq. 34)."""
    # Why RoPE: q.k then depends only on the offset between two frames (relative positions, as
    # FireRedASR's Transformer-XL rel-pos gives), it costs two elementwise ops and no parameters, and
    # it needs no change under chunk masks or padding because it never looks at the mask.
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(num_frames, device=device, dtype=torch.float32)[:, None] * inv_freq  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, hd) queries or keys by their frame positions (rotate-half layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)


def chunk_attention_mask(num_frames: int, chunk_size: int, left_chunks: int, device=None) -> Tensor:
    """(T, T) bool mask, True = may attend: own chunk plus `left_chunks` previous ones (< 0: all previous)."""
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1 frame, got {chunk_size}; use None for full context")
    chunk = torch.arange(num_frames, device=device) // chunk_size  # chunk index of every frame
    query, key = chunk[:, None], chunk[None, :]
    mask = key <= query  # (T, T): never a later chunk
    if left_chunks >= 0:
        mask &= key >= query - left_chunks
    return mask


def sample_chunk(config: EncoderConfig) -> tuple[int | None, int]:
    """Draw one batch's (chunk_size or None for full context, left_chunks) with torch's global RNG."""
    # torch's RNG (not `random`) so torch.manual_seed / Lightning's seed_everything make it repeatable.
    if torch.rand(()).item() < config.full_context_prob:
        return None, -1
    chunk_size = int(torch.randint(1, config.max_chunk + 1, ()).item())
    if config.max_left_chunks < 0:
        return chunk_size, -1
    return chunk_size, int(torch.randint(0, config.max_left_chunks + 1, ()).item())


class FeedForward(nn.Module):
    """Pre-norm Conformer FFN: LayerNorm -> Linear -> Swish -> Linear (the caller scales the half step)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, ffn_dim), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(ffn_dim, d_model), nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.net(x)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with RoPE on q and k, through scaled_dot_product_attention."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.attn_dropout = dropout
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """(B, T, D) with a bool mask broadcastable to (B, H, T, T), True = may attend -> (B, T, D)."""
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, T, 3, self.num_heads, D // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # each (B, H, T, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, H*hd)
        return self.dropout(self.proj(y))


class ConvModule(nn.Module):
    """Pre-norm Conformer conv module: pointwise + GLU -> depthwise -> LayerNorm -> Swish -> pointwise."""

    def __init__(self, d_model: int, kernel: int, dropout: float, causal: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)  # a 1x1 conv, written as Linear on (B, T, D)
        # Causal: all kernel - 1 zeros on the left, so frame t reads t-kernel+1 .. t; else centred.
        self.pad = (kernel - 1, 0) if causal else (kernel // 2, kernel // 2)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, groups=d_model)
        # LayerNorm over channels, not BatchNorm: identical in train and eval, with padding and with batch size 1.
        self.conv_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """(B, T, D) and valid frames (B, T) bool -> (B, T, D)."""
        x = F.glu(self.pointwise_in(self.norm(x)), dim=-1)  # (B, T, 2D) -> (B, T, D)
        x = x * valid[..., None]  # zero padding so the depthwise conv reads zeros, as at a true utterance end
        x = self.depthwise(F.pad(x.transpose(1, 2), self.pad)).transpose(1, 2)  # (B, D, T) conv, back to (B, T, D)
        x = F.silu(self.conv_norm(x))
        return self.dropout(self.pointwise_out(x))


class ConformerBlock(nn.Module):
    """Macaron FFN/2 -> self-attention -> conv module -> FFN/2, pre-norm residuals.

    Unlike Gulati et al. (and FireRedASR), no LayerNorm closes the block: that per-block norm
    turns the pre-norm stack into an effectively post-norm one, and on the tiny CPU budget phone
    CTC then sat on the all-blank plateau for over 1,200 steps (4 blocks), while this pre-norm
    stack with one final LayerNorm (ConformerEncoder.norm) left it within ~300.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        c = config
        self.ffn1 = FeedForward(c.d_model, c.ffn_dim, c.dropout)
        self.attn = SelfAttention(c.d_model, c.num_heads, c.dropout)
        self.conv = ConvModule(c.d_model, c.conv_kernel, c.dropout, c.causal_conv)
        self.ffn2 = FeedForward(c.d_model, c.ffn_dim, c.dropout)

    def forward(self, x: Tensor, mask: Tensor, valid: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D); `mask` is the attention mask, `valid` the (B, T) non-padding frames."""
        x = x + 0.5 * self.ffn1(x)
        x = x + self.attn(x, mask, cos, sin)
        x = x + self.conv(x, valid)
        return x + 0.5 * self.ffn2(x)


class ConformerEncoder(nn.Module):
    """Fbank (B, T, 80) at 100 Hz -> encoder frames (B, T', d_model) at 25 Hz, with dynamic-chunk masking."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.output_dim = config.d_model
        self.subsampling = Conv2dSubsampling4(config.input_dim, config.d_model, config.subsampling_channels,
                                              config.dropout)
        self.layers = nn.ModuleList(ConformerBlock(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.d_model)  # the one norm after the pre-norm stack

    def forward(self, feats: Tensor, feat_lens: Tensor, chunk_size: int | None = None,
                left_chunks: int = -1) -> tuple[Tensor, Tensor]:
        """Encode padded `feats` (B, T, F) with lengths `feat_lens` (B,); returns (out (B, T', D), out_lens (B,)).

        chunk_size (output frames) forces a chunk mask with `left_chunks` previous chunks (-1 = all);
        without it, training with config.dynamic_chunk samples one per call, otherwise full context.
        """
        if feats.dim() != 3 or feats.size(-1) != self.config.input_dim:
            raise ValueError(f"feats must be (B, T, {self.config.input_dim}), got {tuple(feats.shape)}")
        if feat_lens.shape != feats.shape[:1]:
            raise ValueError(f"feat_lens must be (B,) = ({feats.size(0)},), got {tuple(feat_lens.shape)}")
        shortest = int(feat_lens.min())
        if shortest < MIN_INPUT_FRAMES:
            raise UserError(f"every utterance needs at least {MIN_INPUT_FRAMES} input frames (70 ms) to give "
                            f"one encoder frame, got a length of {shortest}; drop such utterances")

        x, out_lens = self.subsampling(feats, feat_lens)  # (B, T', D), (B,)
        T = x.size(1)
        valid = length_mask(out_lens, T)  # (B, T')

        if chunk_size is None and self.training and self.config.dynamic_chunk:
            chunk_size, left_chunks = sample_chunk(self.config)
        if chunk_size is None:
            allowed = torch.ones(T, T, dtype=torch.bool, device=x.device)
        else:
            allowed = chunk_attention_mask(T, chunk_size, left_chunks, device=x.device)
        # Padded keys are masked; every frame may attend to itself so a padded query row (which may
        # see only padding under a chunk mask) never becomes all -inf, i.e. NaN.
        eye = torch.eye(T, dtype=torch.bool, device=x.device)
        mask = ((allowed[None] & valid[:, None, :]) | eye)[:, None]  # (B, 1, T', T'), broadcast over heads

        cos, sin = rotary_tables(T, self.config.d_model // self.config.num_heads, self.config.rope_base, x.device)
        recompute = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, mask, valid, cos, sin, use_reentrant=False)
            else:
                x = layer(x, mask, valid, cos, sin)
        return self.norm(x) * valid[..., None], out_lens

