"""An optional stage after joint SFT, GRPO: the LLM learns from its own sampled transcripts, rewarded the way
evaluation scores them (entropy_asr.model.grpo)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from entropy_asr.errors import UserError
from entropy_asr.model.grpo import (
    REWARD_TERMS,
    GRPOConfig,
    RewardConfig,
    group_advantages,
    group_rewards,
    grpo_loss,
    temperature_at,
)
from entropy_asr.model.llm import llm_embed
from entropy_asr.model.prompt import max_new_tokens_for
from entropy_asr.model.rollout import hypothesis_texts, sample_hypotheses, sequence_logprobs
from lightning_modules.sft import SpeechSFT

REFERENCE = "reference."  # the frozen reference LLM's state-dict prefix


@dataclass
class Rollout:
    """One batch's sampled groups: ids [b][g], texts [b][g], rewards and advantages (B, G), the reward terms'
    means, and the temperature they were sampled at."""

    ids: list[list[list[int]]]
    texts: list[list[str]]
    rewards: Tensor
    advantages: Tensor
    means: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0


class GRPO(SpeechSFT):
    """GRPO on the LLM (DeepSeekMath's, arXiv 2402.03300; entropy_asr.model.grpo): per utterance, sample G
    transcripts, reward each, standardize the rewards within the group, and step on the clipped surrogate
    minus kl_beta * KL to the starting LLM.

    The encoder and adapter stay as joint SFT left them: the speech embeddings are computed once per batch,
    without grad, and shared by the rollout, the policy and the reference (model.trainable may name only LLM
    parameters). Rollouts run in eval mode under no_grad through the decoding code path (HF generate, KV cache,
    plain sampling at the scheduled temperature); the policy's log-probs are then recomputed with grad in
    train mode, teacher-forced on the sampled ids.

    One update per rollout batch (mu = 1, DeepSeekMath's iterative setting with a single inner step): the
    "old" policy that sampled is the current one, so old_logp = logp.detach() and the ratio is exactly 1 at
    the update; the clip is then inactive (grpo/clip_fraction stays 0) and the loss value is beta * KL (the
    advantages average to 0 in each group), while its gradient is the policy gradient. The clip code is
    the general one, right for a future mu > 1.

    The reference is a frozen deep copy of the LLM as the stage starts (llm.name_or_path: joint SFT's export),
    made in configure_model when fitting (before a resumed checkpoint is loaded), in eval mode. It is in the
    state dict (`reference.*`), so a checkpoint is self-contained and a resume restores the starting model,
    never the resumed policy. Cost: a second copy of the LLM's weights in device memory (no gradients or
    optimizer state: about a quarter of the policy's footprint under AdamW, 3.4 GB for Qwen3-1.7B in bf16)
    and in every checkpoint; one more forward pass per step; none with grpo.kl_beta 0 (no copy is made).
    Decoding (validation, test, evaluate.py, exports) never builds it.

    Args:
        grpo: GRPOConfig (group size, clip, KL weight, temperature schedule; the schedule needs trainer.max_steps).
        reward: RewardConfig (the terms and their weights). Hotword lists in the batch (hotwords_present /
            hotwords_absent, data.init_args.context) feed the context term.
    """

    default_trainable = ("llm.*",)
    stage = "grpo"

    def __init__(self, *, grpo: GRPOConfig | None = None, reward: RewardConfig | None = None, **kwargs):
        if kwargs.get("distill") is not None:
            raise UserError("grpo: model.distill shapes the adapter, which GRPO keeps frozen; remove model.distill")
        super().__init__(**kwargs)
        self.grpo = grpo or GRPOConfig()
        self.reward = reward or RewardConfig()
        self.reference: torch.nn.Module | None = None
        self.register_load_state_dict_pre_hook(_drop_unbuilt_reference)
        self._step_start = self._rollout_seconds = 0.0

    # ---- building ----------------------------------------------------------------------------
    def configure_model(self) -> None:
        super().configure_model()
        speech_side = [n for n, p in self.net.named_parameters() if p.requires_grad and not n.startswith("llm.")]
        if speech_side:
            raise UserError(f"grpo trains the LLM only (the speech embeddings are computed without grad); drop "
                            f"{speech_side[0]} from model.trainable")
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            self.build_reference()

    def build_reference(self) -> None:
        """The frozen reference: a copy of the LLM as it is now (call it before any update; configure_model does
        when fitting); nothing with kl_beta 0."""
        if self.reference is not None or self.grpo.kl_beta == 0:
            return
        if self.global_step > 0:
            raise RuntimeError(f"grpo: the reference must be the starting LLM, not the policy at step "
                               f"{self.global_step}")
        self.reference = copy.deepcopy(self.net.llm).requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.temperature()  # no trainer.max_steps: the schedule's error now, not at the first step
        if self.reference is not None:
            n = sum(p.numel() for p in self.reference.parameters())
            self.print(f"[{self.stage}] reference: frozen copy of the starting LLM ({n:,} parameters)")

    def exported_components(self) -> list[str]:
        """The LLM that trained plus the encoder and adapter it read through (and their CTC head and phone table):
        a whole model, as joint SFT's export is."""
        return list(dict.fromkeys(["encoder", "adapter", *super().exported_components()]))

    # ---- the step ----------------------------------------------------------------------------
    def temperature(self) -> float:
        """The sampling temperature at this step (temperature_start outside a trainer)."""
        if self._trainer is None:
            return self.grpo.temperature_start
        return temperature_at(self.global_step, self.trainer.max_steps, self.grpo)

    @torch.no_grad()
    def rollout(self, batch: dict, speech: Tensor, speech_lens: Tensor) -> Rollout:
        """Sample each utterance's group in eval mode, decode and reward it; advantages (B, G)."""
        net, temperature = self.net, self.temperature()
        limits = max_new_tokens_for(batch["durations"].tolist(), self.decode.tokens_per_second,
                                    self.decode.max_new_tokens_floor)
        extra = {"synced_gpus": True} if self._sharded() else {}  # every rank steps generate until all are done
        was_training = net.llm.training
        net.llm.eval()
        try:
            ids = sample_hypotheses(net.llm, net.tokenizer, net.prompt, speech, speech_lens, limits,
                                    self.grpo.group_size, temperature, hotwords=batch.get("hotwords"), **extra)
        finally:
            net.llm.train(was_training)
        texts = hypothesis_texts(net.tokenizer, net.prompt, ids)
        hotwords = {k: batch[k] for k in ("hotwords_present", "hotwords_absent") if batch.get(k) is not None}
        rewards, means = group_rewards(batch["text"], texts, batch["language"], self.reward, **hotwords)
        return Rollout(ids, texts, rewards, group_advantages(rewards), means, temperature)

    def model_step(self, batch: dict) -> Tensor:
        """The GRPO loss of one batch (rollout, rewards, policy and reference log-probs)."""
        net, G = self.net, self.grpo.group_size
        self.build_reference()  # (a no-op in a fit: configure_model made it) outside one, now: refused after step 0
        t0 = time.perf_counter()
        with torch.no_grad():
            speech, speech_lens = net.speech_embeddings(batch["feats"], batch["feat_lens"])  # (B, N, H)
        r = self.rollout(batch, speech, speech_lens)
        self._rollout_seconds = time.perf_counter() - t0
        flat = [ids for group in r.ids for ids in group]  # B*G sequences, grouped per utterance
        # repeated once here, shared by the policy and the reference: (B*G, N, H); the prompts' hotword lists with them
        speech, speech_lens = speech.repeat_interleave(G, dim=0), speech_lens.repeat_interleave(G)
        hotwords = [h for h in batch["hotwords"] for _ in range(G)] if batch.get("hotwords") is not None else None
        logp, mask = sequence_logprobs(net.llm, net.prompt, lambda x: llm_embed(net.llm, x), speech, speech_lens,
                                       flat, r.temperature, net.loss_chunk, hotwords)
        if self.reference is not None:
            with torch.no_grad():
                ref_logp, _ = sequence_logprobs(self.reference, net.prompt, lambda x: llm_embed(self.reference, x),
                                                speech, speech_lens, flat, r.temperature, net.loss_chunk, hotwords)
        else:  # kl_beta 0: no reference, no KL
            ref_logp = logp.detach()
        advantages = r.advantages.flatten().to(logp.device)  # (B*G,), the order of `flat`
        loss, stats = grpo_loss(logp, logp.detach(), ref_logp, advantages, mask, self.grpo)  # mu = 1: old = now
        self._log_means({"grpo/reward": r.means["total"], **{f"grpo/reward_{k}": r.means[k] for k in REWARD_TERMS},
                         "grpo/kl": stats["kl"], "grpo/clip_fraction": stats["clip_fraction"],
                         "grpo/temperature": r.temperature, "grpo/hyp_len": mask.sum(1).float().mean(),
                         # groups whose hypotheses all scored the same: no signal from them this step
                         "grpo/flat_groups": (r.advantages == 0).all(dim=1).float().mean()}, self.batch_size(batch))
        return loss

    def _log_means(self, values: dict[str, float | Tensor], n: int) -> None:
        """Log this step's means over every rank's utterances (n here; one all-reduce), so that a value does not
        depend on the world size."""
        vec = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device).reshape(())
                           for v in [*values.values(), 1.0]]) * n  # (K + 1,): sums, then the count
        if self._trainer is not None and self.trainer.world_size > 1:
            vec = self.trainer.strategy.reduce(vec, reduce_op="sum")
        for key, value in zip(values, vec[:-1] / vec[-1]):
            self.log(key, value, batch_size=n)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_start, self._rollout_seconds = time.perf_counter(), 0.0

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the update's kernels are queued: count them in the step
        step = time.perf_counter() - self._step_start
        # the share of the step's wall time before the update: speech embeddings, sampling, decoding, rewards
        if self._rollout_seconds > 0 and step > 0:
            self.log("grpo/rollout_share", self._rollout_seconds / step, batch_size=self.batch_size(batch))

    def _sharded(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.world_size > 1 and isinstance(trainer.strategy, FSDPStrategy)

    # ---- validation: greedy decoding, as the SFT stages --------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """The teacher-forced LM loss (one forward, cheap beside decoding) and the greedy transcripts' rates; no
        sampling."""
        loss = super().model_step(batch)  # SpeechSFT's: next-token loss on the transcript
        self.log("val/loss", loss, prog_bar=True, batch_size=self.batch_size(batch), sync_dist=True)
        self.evaluate_batch(batch, self.val_rates)


def _drop_unbuilt_reference(module: GRPO, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: a module built for decoding has no reference; a training checkpoint's is skipped."""
    if module.reference is None:
        for key in [k for k in state_dict if k.startswith(prefix + REFERENCE)]:
            del state_dict[key]
