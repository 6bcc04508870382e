"""Stages 2-4, the LLM stages: alignment (adapter only), IA-SFT (adapter + LLM, frozen hot-swappable
encoder) and joint SFT (everything). They share one step: next-token loss on the transcript."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from entropy_asr.model.export import load_component
from lightning_modules.base import SpeechLLMModule


class SpeechSFT(SpeechLLMModule):
    """Encoder -> adapter -> LLM trained on the transcript tokens; validation decodes (val/cer_zh, val/wer_en)."""

    components = ("encoder", "adapter", "llm")

    def model_step(self, batch: dict) -> torch.Tensor:
        speech, speech_lens = self.net.speech_embeddings(batch["feats"], batch["feat_lens"])
        return self.net.lm_loss(speech, speech_lens, batch["text"])


class Align(SpeechSFT):
    """Stage 2, alignment: encoder and LLM frozen, only the adapter trains."""

    default_trainable = ("adapter.*",)
    stage = "align"


@dataclass
class Snapshot:
    """Swap this encoder export in when the run reaches global step `step`."""

    step: int
    path: str


class IASFT(SpeechSFT):
    """Stage 3, iterative asynchronous SFT: adapter + LLM train on a frozen encoder that is replaced
    by newer pretraining snapshots at step boundaries (`swap_encoder`).

    Args:
        encoder_snapshots: [{step, path}]: swap each in when global_step reaches `step` (the
            schedule until the CKA-triggered hot-swap callback drives `swap_encoder` itself).
    """

    default_trainable = ("adapter.*", "llm.*")
    stage = "ia_sft"

    def __init__(self, *, encoder_snapshots: list[Snapshot] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.snapshots = sorted(encoder_snapshots or [], key=lambda s: s.step)
        self.swaps: list[dict] = []  # [{step, path}] already applied (kept in checkpoints)

    def configure_model(self) -> None:
        super().configure_model()
        if any(p.requires_grad for p in self.net.encoder.parameters()):
            raise ValueError("ia_sft keeps the encoder frozen (it is swapped, not trained): drop encoder "
                             "patterns from model.trainable")

    def swap_encoder(self, source: str | Path | dict[str, torch.Tensor]) -> None:
        """Replace the encoder's weights (an export path or a state dict) at a step boundary; strict.

        Call between optimizer steps (e.g. from on_train_batch_start). The encoder stays frozen and
        in eval mode; the optimizer is untouched because it never held encoder parameters.
        """
        enc = self.net.encoder
        if isinstance(source, dict):
            own = enc.state_dict()
            bad = [k for k in own if k not in source or source[k].shape != own[k].shape] + \
                  [k for k in source if k not in own]
            if bad:
                raise ValueError(f"swap_encoder: state dict does not fit the encoder; mismatched keys {bad[:5]}")
            enc.load_state_dict(source, strict=True)
            label = "<state dict>"
        else:
            load_component(enc, source, "encoder")
            label = str(source)
        enc.requires_grad_(False)
        enc.eval()
        self.swaps.append({"step": int(self.global_step), "path": label})
        self.print(f"[{self.stage}] step {self.global_step}: encoder swapped <- {label}")

    def on_train_batch_start(self, batch, batch_idx) -> None:
        done = {s["path"] for s in self.swaps}
        for snap in self.snapshots:
            if snap.step <= self.global_step and snap.path not in done:
                self.swap_encoder(snap.path)
                done.add(snap.path)

    def exported_components(self) -> list[str]:
        """The adapter and LLM that trained, plus the encoder they were trained on last."""
        return ["encoder", *super().exported_components()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["entropy_asr"]["swaps"] = list(self.swaps)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.swaps = list(checkpoint.get("entropy_asr", {}).get("swaps", []))


class JointSFT(SpeechSFT):
    """Stage 4, late joint SFT: encoder + adapter + LLM end to end, small learning rate."""

    default_trainable = ("encoder.*", "adapter.*", "llm.*")
    stage = "joint_sft"
