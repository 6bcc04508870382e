"""Stage 1: encoder pretraining with phone CTC (optionally consistency-regularized CTC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from entropy_asr.errors import UserError
from entropy_asr.metrics.error_rate import CharCTCErrorRate, PhoneErrorRate, ctc_greedy
from entropy_asr.model.losses import ctc_loss
from entropy_asr.model.masks import length_mask
from lightning_modules.base import SpeechLLMModule


def symmetric_kl(log_p: torch.Tensor, log_q: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """CR-CTC's consistency term (Yao et al. 2024, eq. 2): KL(p || sg q) + KL(q || sg p) over valid frames, / B.

    Each view's posteriors are the (stop-gradient) target of the other.
    """
    valid = length_mask(lens, log_p.shape[1])  # (B, T)
    kl_pq = F.kl_div(log_q, log_p.detach(), log_target=True, reduction="none").sum(-1)  # KL(p || q), grad to q
    kl_qp = F.kl_div(log_p, log_q.detach(), log_target=True, reduction="none").sum(-1)  # KL(q || p), grad to p
    return ((kl_pq + kl_qp) * valid).sum() / log_p.shape[0]


class PretrainCTC(SpeechLLMModule):
    """Encoder + phone CTC head; validation reports the phone error rate (val/per).

    With model.ctc_head.units "chars" the targets are the transcript's characters instead
    (entropy_asr.text.chars, from norm_text; the character-level ablation) and validation
    reports their error rate (val/char_er).

    Args:
        consistency_weight: > 0 turns on CR-CTC: the batch must carry two augmented views
            (data.augment.views: 2); loss = mean CTC of both views + weight * symmetric KL.

    The encoder snapshots that alignment and IA-SFT start from, and that IA-SFT's hot-swap
    (callbacks.EncoderHotSwap) swaps in, are exported by the CKA drift monitor
    (callbacks.CKADriftMonitor) of this run.
    """

    components = ("encoder", "ctc_head")
    default_trainable = ("encoder.*", "ctc_head.*")
    stage = "pretrain_ctc"

    def __init__(self, *, consistency_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if consistency_weight < 0:
            raise UserError(f"model.consistency_weight must be >= 0, got {consistency_weight}")
        self.consistency_weight = consistency_weight
        self.char_inventory = self.configs["ctc_head"].char_inventory() if self.configs["ctc_head"] else None
        self.val_rates = PhoneErrorRate() if self.char_inventory is None else CharCTCErrorRate()

    def ctc_targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) padded target ids and (B,) lengths: the batch's phones, or its characters for units 'chars'."""
        if self.char_inventory is None:
            return batch["phones"], batch["phone_lens"]
        ids = [self.char_inventory.ids(t) for t in batch["norm_text"]]
        lens = torch.tensor([len(x) for x in ids], dtype=torch.long, device=batch["phones"].device)
        targets = torch.zeros(len(ids), max(1, int(lens.max())), dtype=torch.long, device=lens.device)
        for i, x in enumerate(ids):
            targets[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        return targets, lens

    def model_step(self, batch: dict) -> torch.Tensor:
        feats, lens = batch["feats"], batch["feat_lens"]
        two_views = self.training and self.consistency_weight > 0
        if two_views:
            if "feats2" not in batch:
                raise UserError("model.consistency_weight > 0 needs two augmented views per utterance: "
                                "set data.augment.views: 2")
            feats = torch.cat([feats, batch["feats2"]])  # (2B, T, 80): one forward for both views
            lens = torch.cat([lens, lens])
        frames, frame_lens = self.net.encode(feats, lens)
        log_probs = self.net.ctc_log_probs(frames)
        targets, target_lens = self.ctc_targets(batch)
        if not two_views:
            return ctc_loss(log_probs, frame_lens, targets, target_lens)
        B = batch["feats"].shape[0]
        phones, phone_lens = torch.cat([targets] * 2), torch.cat([target_lens] * 2)
        ctc = ctc_loss(log_probs, frame_lens, phones, phone_lens) / 2  # sum over 2B / 2B = mean per view
        kl = symmetric_kl(log_probs[:B], log_probs[B:], frame_lens[:B])
        self.log("train/ctc", ctc.detach(), batch_size=B)
        self.log("train/consistency", kl.detach(), batch_size=B)
        return ctc + self.consistency_weight * kl

    def evaluate_batch(self, batch: dict, rates) -> None:
        frames, frame_lens = self.net.encode(batch["feats"], batch["feat_lens"])
        hyps = ctc_greedy(self.net.ctc_log_probs(frames), frame_lens)
        targets, target_lens = self.ctc_targets(batch)
        refs = [targets[i, : int(n)].tolist() for i, n in enumerate(target_lens)]
        rates.update(hyps, refs)
