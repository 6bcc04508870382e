"""GRPO for ASR: rewards of sampled hypotheses, group-relative advantages and the clipped, KL-penalized loss.

Group Relative Policy Optimization is DeepSeekMath's (Shao et al. 2024, arXiv 2402.03300): for each
utterance the policy samples a group of G hypotheses, each is rewarded, and its advantage is its reward
standardized within the group (no value network). The objective (eq. 3) is PPO's clipped surrogate
(Schulman et al. 2017, arXiv 1707.06347) per token, averaged over each hypothesis' tokens and then over
the hypotheses, minus beta times an unbiased estimator of KL(pi || pi_ref) to the starting model (eq. 4).

Rewards (`RewardConfig`) are measured the way evaluation measures (entropy_asr.metrics.scoring): the
same normalization and units (Han characters, other words), so the error rate is CER for zh, WER for
en and MER for mix.

- accuracy: exp(-accuracy_scale * errors / reference units), 1 for an exact hypothesis. On a
  non-speech clip (empty reference) it is 1 for an empty hypothesis and 0 for any output.
- hallucination: -hallucination_penalty when the hypothesis has more than length_high or fewer than
  length_low times the reference's units (speech clips only).
- nonspeech: -nonspeech_penalty for any output (a scoring unit) on a clip whose reference is empty.
- context (context_weight > 0, when hotwords are given): context_weight * (the fraction of the
  present hotwords the hypothesis contains - the fraction of the absent (distractor) hotwords it
  inserts). A hotword is contained when its units occur contiguously in the hypothesis' units.
total is their sum: an exact transcript scores 1 on every clip (1 + context_weight with every hotword right).

Everything here is plain torch and Python; the stage's LightningModule samples, scores and steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_asr.errors import UserError
from entropy_asr.metrics.error_rate import contains_units, score_units
from entropy_asr.metrics.scoring import score_utterance
from entropy_asr.model.prompt import IGNORE_INDEX

REWARD_TERMS = ("accuracy", "hallucination", "nonspeech", "context")


@dataclass
class RewardConfig:
    """The reward's terms and weights (see the module docstring); a penalty or weight of 0 turns a term off."""

    accuracy_scale: float = 2.0  # accuracy = exp(-accuracy_scale * error rate)
    length_low: float = 0.5  # hypothesis units below length_low x the reference's: a hallucination (truncation)
    length_high: float = 2.0  # above length_high x the reference's: a hallucination (run-on)
    hallucination_penalty: float = 1.0
    nonspeech_penalty: float = 1.0  # any output on a clip whose reference is empty (language "none")
    context_weight: float = 0.0  # the hotword term's weight (0: off)

    def __post_init__(self):
        if self.accuracy_scale <= 0:
            raise UserError(f"reward.accuracy_scale must be > 0 (accuracy = exp(-scale * error rate)), "
                            f"got {self.accuracy_scale}")
        if not 0 <= self.length_low <= 1 <= self.length_high:
            raise UserError(f"reward.length_low and reward.length_high must satisfy 0 <= length_low <= 1 <= "
                            f"length_high (hypothesis / reference length bounds), got {self.length_low} and "
                            f"{self.length_high}")
        for name in ("hallucination_penalty", "nonspeech_penalty", "context_weight"):
            if getattr(self, name) < 0:
                raise UserError(f"reward.{name} must be >= 0 (0 turns the term off), got {getattr(self, name)}")


def _hotword_units(hotwords: Sequence[str], language: str) -> list[list[str]]:
    """The scoring units of each hotword; one that normalizes to nothing is a UserError."""
    out = []
    for word in hotwords:
        units = score_units(word, language)
        if not units:
            raise UserError(f"hotword {word!r} has no scoring units after normalization: remove it from the "
                            f"utterance's hotword list")
        out.append(units)
    return out


def context_score(ref: str, hyp: str, language: str, hotwords_present: Sequence[str] = (),
                  hotwords_absent: Sequence[str] = ()) -> float:
    """Hotword recall minus distractor insertion, each a fraction of its list (an empty list adds 0)."""
    hyp_units, ref_units = score_units(hyp, language), score_units(ref, language)
    present, absent = _hotword_units(hotwords_present, language), _hotword_units(hotwords_absent, language)
    recall = sum(contains_units(hyp_units, w) for w in present) / len(present) if present else 0.0
    # a distractor the reference happens to say is no insertion
    inserted = sum(contains_units(hyp_units, w) and not contains_units(ref_units, w) for w in absent) / len(absent) \
        if absent else 0.0
    return recall - inserted


def reward(ref: str, hyp: str, language: str, config: RewardConfig | None = None,
           hotwords_present: Sequence[str] = (), hotwords_absent: Sequence[str] = ()) -> dict[str, float]:
    """The reward of `hyp` for reference `ref` in `language`: {"total", "accuracy", "hallucination", ...}."""
    c = config or RewardConfig()
    s = score_utterance(ref, hyp, language)
    if s.ref_units:  # speech: errors (S + D + I) over reference units, as evaluation counts them
        accuracy = math.exp(-c.accuracy_scale * s.errors / s.ref_units)
        off = s.hyp_units > c.length_high * s.ref_units or s.hyp_units < c.length_low * s.ref_units
        hallucination = -c.hallucination_penalty if off else 0.0
        nonspeech = 0.0
    else:  # non-speech (empty reference): silence is the right answer, any unit of output is wrong
        accuracy = 0.0 if s.hyp_units else 1.0
        hallucination = 0.0
        nonspeech = -c.nonspeech_penalty if s.hyp_units else 0.0
    context = 0.0
    if c.context_weight and (hotwords_present or hotwords_absent):
        context = c.context_weight * context_score(ref, hyp, language, hotwords_present, hotwords_absent)
    terms = {"accuracy": accuracy, "hallucination": hallucination, "nonspeech": nonspeech, "context": context}
    return {"total": sum(terms.values()), **terms}


def group_rewards(refs: Sequence[str], hyps: Sequence[Sequence[str]], languages: Sequence[str],
                  config: RewardConfig | None = None, hotwords_present: Sequence[Sequence[str]] | None = None,
                  hotwords_absent: Sequence[Sequence[str]] | None = None) -> tuple[Tensor, dict[str, float]]:
    """Rewards (B, G) of B utterances' G hypotheses each (float32), and each term's mean for logging."""
    if not len(refs) == len(hyps) == len(languages):
        raise ValueError(f"refs/hyps/languages differ in length: {len(refs)}/{len(hyps)}/{len(languages)}")
    if len({len(group) for group in hyps}) > 1:
        raise ValueError(f"every utterance needs the same number of hypotheses, got {[len(g) for g in hyps]}")
    present = hotwords_present or [()] * len(refs)
    absent = hotwords_absent or [()] * len(refs)
    rows = [[reward(ref, h, lang, config, pw, aw) for h in group]
            for ref, group, lang, pw, aw in zip(refs, hyps, languages, present, absent, strict=True)]
    flat = [r for row in rows for r in row]
    means = {k: sum(r[k] for r in flat) / max(len(flat), 1) for k in ("total", *REWARD_TERMS)}
    return torch.tensor([[r["total"] for r in row] for row in rows], dtype=torch.float32), means


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """(r - mean) / (std + eps) within each group (row) of rewards (B, G); std is the population std."""
    # DeepSeekMath sec. 4.1.2 (outcome supervision): A_i = (r_i - mean(r)) / std(r). Population std (divide
    # by G): each group's advantages then have unit variance whatever G is. A group whose rewards are all
    # equal carries no signal: its advantages are exactly 0 (not rounding noise divided by eps).
    r = rewards.float()
    mean = r.mean(dim=-1, keepdim=True)
    std = r.std(dim=-1, correction=0, keepdim=True)
    adv = (r - mean) / (std + eps)
    flat = (r == r[..., :1]).all(dim=-1, keepdim=True)
    return torch.where(flat, torch.zeros_like(adv), adv)


@dataclass
class GRPOConfig:
    """GRPO's sampling and update: the group size, the ratio clip, the KL weight and the temperature schedule."""

    group_size: int = 4  # hypotheses sampled per utterance (G)
    clip_eps: float = 0.2  # the ratio is clipped to [1 - clip_eps, 1 + clip_eps]
    kl_beta: float = 0.04  # weight of the KL penalty to the reference (starting) model; DeepSeekMath's 0.04
    temperature_start: float = 1.0  # sampling temperature at the stage's first step ...
    temperature_end: float = 0.7  # ... falling linearly to this at its last

    def __post_init__(self):
        if self.group_size < 2:
            raise UserError(f"grpo.group_size must be >= 2 (advantages compare hypotheses within a group; 4 or "
                            f"more recommended), got {self.group_size}")
        if not 0 < self.clip_eps < 1:
            raise UserError(f"grpo.clip_eps must be in (0, 1) (the ratio is clipped to [1 - eps, 1 + eps]), "
                            f"got {self.clip_eps}")
        if self.kl_beta < 0:
            raise UserError(f"grpo.kl_beta must be >= 0 (0 drops the KL penalty), got {self.kl_beta}")
        for name in ("temperature_start", "temperature_end"):
            if getattr(self, name) <= 0:
                raise UserError(f"grpo.{name} must be > 0 (a sampling temperature), got {getattr(self, name)}")


def temperature_at(step: int, total_steps: int, config: GRPOConfig) -> float:
    """The sampling temperature after `step` of `total_steps` steps: linear from start to end, held outside."""
    if total_steps < 1:
        raise UserError(f"the GRPO stage needs a known number of steps >= 1 for its temperature schedule "
                        f"(set trainer.max_steps), got {total_steps}")
    frac = min(max(step / total_steps, 0.0), 1.0)
    return config.temperature_start + frac * (config.temperature_end - config.temperature_start)


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log pi(token) per position (float32) from logits (..., V) / temperature; IGNORE_INDEX tokens get 0."""
    # Use the same temperature for the current, sampling and reference log-probs: the ratio and the KL then
    # compare the distributions the hypotheses were drawn from.
    z = logits.float() / temperature
    pad = tokens == IGNORE_INDEX
    picked = z.gather(-1, tokens.masked_fill(pad, 0).unsqueeze(-1)).squeeze(-1)
    return (picked - torch.logsumexp(z, dim=-1)).masked_fill(pad, 0.0)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token unbiased estimate of KL(pi || pi_ref), >= 0: pi_ref/pi - log(pi_ref/pi) - 1."""
    log_ratio = ref_logp - logp  # DeepSeekMath eq. 4 (Schulman's k3 estimator), from log-probs of sampled tokens
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor, advantages: Tensor, mask: Tensor,
              config: GRPOConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss (to minimize) over N sampled sequences of L token positions, and detached stats.

    logp (N, L): log-probs of the sampled tokens under the current policy (with grad); old_logp under the
    policy that sampled them; ref_logp under the frozen reference; advantages (N,) (group_advantages
    flattened in the same order); mask (N, L) True at the hypothesis' tokens (EOS included). old_logp and
    ref_logp are detached here. Masked positions may hold anything (padding, -inf): they neither add to the
    loss nor get a gradient. A sequence without tokens is left out of the mean over sequences.
    Stats: policy (the surrogate part), kl (the k3 estimate, averaged like the loss), clip_fraction (share
    of tokens whose term was clipped), ratio_mean (mean token ratio).
    """
    if not logp.shape == old_logp.shape == ref_logp.shape == mask.shape or logp.dim() != 2:
        raise ValueError(f"logp, old_logp, ref_logp and mask must all be (N, L), got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(ref_logp.shape)}, {tuple(mask.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be (N,) = ({logp.shape[0]},), got {tuple(advantages.shape)}")
    mask = mask.bool()
    # zero the masked positions first, so that padding values (even inf/nan) reach neither the loss nor the grad
    logp = logp.float().masked_fill(~mask, 0.0)
    old_logp = old_logp.detach().float().masked_fill(~mask, 0.0)
    ref_logp = ref_logp.detach().float().masked_fill(~mask, 0.0)
    adv = advantages.detach().float().unsqueeze(-1)  # (N, 1)

    # PPO's clipped surrogate (Schulman et al. 2017, eq. 7) as GRPO uses it (DeepSeekMath eq. 3):
    # min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), ratio = pi_theta / pi_theta_old per token
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - config.clip_eps, 1 + config.clip_eps)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    kl = kl_k3(logp, ref_logp)
    per_token = -(surrogate - config.kl_beta * kl)  # eq. 3's bracket, negated to a loss

    # eq. 3's averaging: 1/|o_i| over each sequence's tokens, then 1/G over the sequences
    counts = mask.sum(dim=-1)
    keep = counts > 0
    denom = counts.clamp(min=1).float()

    def seq_mean(x: Tensor) -> Tensor:
        per_seq = x.masked_fill(~mask, 0.0).sum(dim=-1) / denom
        return per_seq[keep].mean() if keep.any() else per_seq.sum() * 0.0

    loss = seq_mean(per_token)
    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1)
        was_clipped = ((ratio > 1 + config.clip_eps) & (adv > 0)) | ((ratio < 1 - config.clip_eps) & (adv < 0))
        stats = {"policy": -seq_mean(surrogate), "kl": seq_mean(kl),
                 "clip_fraction": (was_clipped & mask).sum() / n_tok,
                 "ratio_mean": ratio.masked_fill(~mask, 0.0).sum() / n_tok}
    return loss, stats
