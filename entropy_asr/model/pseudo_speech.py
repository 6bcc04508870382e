"""Pseudo speech for the tiny LLM's text step: phone sequences laid out as 25 Hz "encoder frames".

A real LLM-ASR run starts from an LLM that has read the web: it copies, transliterates and reads
its context, and a frozen one can be driven by an adapter's soft prompts. A tiny LLM trained
from scratch on a few thousand sentences learns none of that, so an adapter trained against it
(docs/method.md's alignment stage) has nothing to align to. The tiny pipeline's text step therefore
also teaches its LLM to *read*: each sentence's phones become a frame sequence shaped like the
speech encoder's output (one learned vector per phone, held 1-5 frames at 25 Hz, silence at the
edges and in random pauses, some phones substituted, noise added), which the speech stages'
adapter (k-frame stack + MLP) turns into LLM inputs. That is the synthetic corpus' own pace:
6.4 phones per second, ~3.9 encoder frames per phone. The tiny speech stages then hand the LLM
the same thing from real speech: the CTC head's phones through this table, soft posteriors or
greedy phones held as here (`AdapterConfig.input = "phone_posteriors"`, `AdapterConfig.hold`,
`held_phones`, `SpeechLLM.adapt`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entropy_asr.errors import UserError
from entropy_asr.metrics.alignment import frame_phone_positions
from entropy_asr.model.masks import length_mask
from entropy_asr.text import PHONE_TO_ID, PHONES

SILENCE_ID = PHONE_TO_ID["<blank>"]  # the CTC blank doubles as "no phone here"
_FIRST_REAL_PHONE = 2  # PHONES[0] is <blank>, PHONES[1] is <unk>: substitutes are drawn from the rest


def _tone_siblings() -> dict[int, tuple[int, ...]]:
    """Phone id -> the ids of the same Mandarin final with another tone (an1 -> an2..an5), or of the same English
    vowel with another stress (AH0 -> AH1, AH2); phones without a tone or stress digit are absent."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(PHONES[_FIRST_REAL_PHONE:], _FIRST_REAL_PHONE):
        if p[-1].isdigit():
            groups.setdefault(p[:-1] + ("#" if p.isupper() else "~"), []).append(i)
    return {i: tuple(j for j in ids if j != i) for ids in groups.values() if len(ids) > 1 for i in ids}


TONE_SIBLINGS = _tone_siblings()


def confuse_tone(p: int, share: float, rng: random.Random) -> int:
    """Phone id `p`, or with probability `share` the same final or vowel with another tone or stress (TONE_SIBLINGS);
    draws from `rng` only for a tone-bearing phone and a share > 0."""
    return rng.choice(TONE_SIBLINGS[p]) if share and p in TONE_SIBLINGS and rng.random() < share else p


@dataclass
class PhoneFramesConfig:
    """How phone sequences are laid out as pseudo encoder frames (all lengths in 25 Hz frames)."""

    dim: int = 144  # the speech encoder's width, so the adapter trained here has the speech stages' shape
    frames_per_phone: tuple[int, int] = (1, 5)  # uniform, inclusive: 40-200 ms per phone (fast to slow speakers)
    edge_silence: tuple[int, int] = (1, 6)  # leading and trailing silence
    pause_prob: float = 0.05  # chance of a pause after each phone
    pause_frames: tuple[int, int] = (1, 3)
    substitution: float = 0.1  # share of phones replaced by a random one in training (encoder errors)
    deletion: float = 0.03  # share of phones dropped in training (a CTC encoder's commonest error)
    # mean share of tone-bearing phones (Mandarin finals, English vowels; of those not substituted or deleted) given
    # another tone or stress in training, a CTC encoder's commonest confusion (two thirds of the tiny encoder's
    # Mandarin phone errors are tones); each training sequence draws its own share from [0, 2 x confusion], so clean
    # and noisy sequences both occur
    confusion: float = 0.0
    noise: float = 0.3  # Gaussian noise on training frames, relative to the table's spread
    silence_frames: tuple[int, int] = (10, 150)  # length of a silence-only layout (a non-speech clip)
    # share of training sequences laid out as the speech stages read a CTC encoder (adapter.hold = `hold`): phone
    # after phone `held_gaps` frames apart (weights of a gap of 1, 2, ... frames), each phone held `hold` frames of
    # its gap and silence for the rest. The default gaps are the tiny phone CTC encoder's spike-to-spike gaps on dev
    # (docs/tiny_llm.md): a CTC encoder's phones come faster and more unevenly than frames_per_phone's.
    held_share: float = 0.0
    hold: int = 3
    held_gaps: tuple[float, ...] = (0.40, 0.33, 0.14, 0.066, 0.022, 0.022, 0.012, 0.008)

    def __post_init__(self):
        for name in ("frames_per_phone", "edge_silence", "pause_frames", "silence_frames"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name == "frames_per_phone" and lo < 1):
                raise UserError(f"phone_frames.{name} must be [low, high] frames with 0 <= low <= high "
                                f"(low >= 1 for frames_per_phone), got {[lo, hi]}")
            setattr(self, name, (int(lo), int(hi)))
        for name in ("pause_prob", "substitution", "deletion"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"phone_frames.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.held_share <= 1:
            raise UserError(f"phone_frames.held_share must be in [0, 1], got {self.held_share}")
        if isinstance(self.hold, bool) or int(self.hold) != self.hold or self.hold < 1:
            raise UserError(f"phone_frames.hold must be a whole number of frames >= 1 (like adapter.hold), "
                            f"got {self.hold}")
        self.hold = int(self.hold)
        self.held_gaps = tuple(float(w) for w in self.held_gaps)
        if not self.held_gaps or min(self.held_gaps) < 0 or sum(self.held_gaps) <= 0:
            raise UserError(f"phone_frames.held_gaps must be weights >= 0 of a gap of 1, 2, ... frames with a positive "
                            f"sum, got {list(self.held_gaps)}")
        if not 0 <= self.confusion <= 0.5:
            raise UserError(f"phone_frames.confusion must be in [0, 0.5] (sequences draw from [0, 2 x confusion]), "
                            f"got {self.confusion}")
        if self.noise < 0 or self.dim < 1:
            raise UserError(f"phone_frames.noise must be >= 0 and dim >= 1, got noise={self.noise}, dim={self.dim}")


class PhoneFrames(nn.Module):
    """Phone ids -> pseudo encoder frames (B, T, dim) at 25 Hz, via one learned vector per phone."""

    def __init__(self, cfg: PhoneFramesConfig):
        super().__init__()
        self.cfg = cfg
        self.table = nn.Embedding(len(PHONES), cfg.dim)  # row SILENCE_ID: silence

    def layout(self, phones: list[list[int] | None], rng: random.Random, train: bool,
               held: bool | None = None) -> tuple[Tensor, Tensor]:
        """Frame-level phone ids (B, T) and lengths (B,); an empty phone list gives zero frames (no speech
        slot: text only), None a silence-only layout (a non-speech clip, which reads as nothing).

        Durations, pauses and edges are always random (from `rng`); substitutions, tone/stress confusions
        and deletions only in training. held: every sequence in the held layout (True), none (False), or in
        training a `held_share` of them (None; outside training none).
        """
        c = self.cfg
        gaps, cum = range(1, len(c.held_gaps) + 1), list(accumulate(c.held_gaps))  # once, not per phone
        rows = []
        for ids in phones:
            if ids is None:
                rows.append([SILENCE_ID] * rng.randint(*c.silence_frames))
                continue
            if not ids:
                rows.append([])
                continue
            row = [SILENCE_ID] * rng.randint(*c.edge_silence)
            is_held = held if held is not None else bool(train and c.held_share and rng.random() < c.held_share)
            confusion = rng.uniform(0, 2 * c.confusion) if train and c.confusion else 0.0
            for p in ids:
                if train and c.deletion and rng.random() < c.deletion:
                    continue
                if train and rng.random() < c.substitution:
                    p = rng.randrange(_FIRST_REAL_PHONE, len(PHONES))
                else:
                    p = confuse_tone(p, confusion, rng)
                if is_held:
                    gap = rng.choices(gaps, cum_weights=cum)[0]
                    row += [p] * min(gap, c.hold) + [SILENCE_ID] * max(gap - c.hold, 0)
                else:
                    row += [p] * rng.randint(*c.frames_per_phone)
                if rng.random() < c.pause_prob:
                    row += [SILENCE_ID] * rng.randint(*c.pause_frames)
            rows.append(row + [SILENCE_ID] * rng.randint(*c.edge_silence))
        lens = torch.tensor([len(r) for r in rows], dtype=torch.long)
        out = torch.full((len(rows), max((len(r) for r in rows), default=0)), SILENCE_ID, dtype=torch.long)
        for b, r in enumerate(rows):
            out[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out, lens

    def forward(self, frame_ids: Tensor, lens: Tensor, noise: bool = False) -> Tensor:
        """(B, T) frame-level phone ids -> (B, T, dim) frames, zero past each length."""
        x = self.table(frame_ids)  # (B, T, dim)
        if noise and self.cfg.noise > 0:
            x = x + self.cfg.noise * self.table.weight.detach().std() * torch.randn_like(x)
        valid = length_mask(lens.to(x.device), x.shape[1])  # (B, T)
        return x * valid[..., None]


def aligned_layout(log_probs: Tensor, lens: Tensor, phones: Tensor, phone_lens: Tensor,
                   max_frames_per_phone: int = 5) -> Tensor:
    """Frame-level phone ids (B, T') of real speech in PhoneFrames' layout (SILENCE_ID off the phones),
    from a CTC forced alignment (entropy_asr.metrics.alignment.frame_phone_positions)."""
    pos = frame_phone_positions(log_probs, lens, phones, phone_lens, max_frames_per_phone)  # (B, T')
    ids = phones.cpu().gather(1, pos.clamp_min(0).clamp_max(phones.shape[1] - 1))  # (B, T')
    return torch.where(pos >= 0, ids, torch.full_like(ids, SILENCE_ID))


def held_phones(posteriors: Tensor, hold: int) -> Tensor:
    """(B, T', phones) CTC posteriors -> (B, T', phones) one-hot frames in PhoneFrames' layout: the greedy phone of
    each spike held over the blank frames after it, `hold` frames in all counting the spike, SILENCE_ID past that
    (CTC's blank is SILENCE_ID). Straight-through: the values are one-hot, the gradient is the posteriors' (each held
    frame's flows to its spike's posterior). Causal: a frame depends only on frames up to it."""
    if hold < 1:
        raise UserError(f"adapter.hold must be >= 1 frames here, got {hold}")
    ids = posteriors.argmax(-1)  # (B, T')
    t = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    last = torch.where(ids != SILENCE_ID, t, torch.full_like(t, -1)).cummax(dim=1).values  # last spike at or before t
    held = (last >= 0) & (t - last < hold)
    src = torch.where(held, last, t)  # the frame each output frame takes its posterior from
    soft = posteriors.gather(1, src[..., None].expand_as(posteriors))
    phone = torch.where(held, ids.gather(1, src), torch.full_like(ids, SILENCE_ID))
    hard = F.one_hot(phone, posteriors.shape[-1]).to(posteriors.dtype)
    return hard + soft - soft.detach()
