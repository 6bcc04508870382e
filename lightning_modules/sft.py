"""Stages 2-4, the LLM stages: alignment (adapter only), IA-SFT (adapter + LLM, frozen hot-swappable
encoder) and joint SFT (everything). They share one step: next-token loss on the transcript."""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from entropy_asr.assets import check_if_asset
from entropy_asr.errors import UserError, UserFileNotFound
from entropy_asr.metrics.error_rate import TranscriptAndPhoneRates, ctc_greedy
from entropy_asr.model.export import load_component, read_component
from entropy_asr.model.heads import Adapter, CTCHead
from entropy_asr.model.losses import ctc_loss
from entropy_asr.model.masks import keep_frames, length_mask
from entropy_asr.model.pseudo_speech import (
    PhoneFrames,
    PhoneFramesConfig,
    aligned_layout,
)
from entropy_asr.text import PHONES
from lightning_modules.base import SpeechLLMModule
from lightning_modules.strategies import gathered


@dataclass
class DistillConfig:
    """Pull the adapter's tokens toward what the tiny LLM learned to read in its text step.

    The target of each LLM token is the text step's reader (its phone_frames + adapter exports)
    applied to the utterance's own transcript phones, laid out at their real timing by a CTC
    forced alignment with the stage's CTC head (model.ctc_head, frozen, e.g. from the same
    pretraining snapshot as the encoder). Loss: LM loss + weight * MSE / Var(target). Off by
    default (the paper configs align with the LM loss alone, as docs/method.md does); the tiny pipeline
    uses it because a from-scratch tiny LLM reads only what its text step showed it.

    `aligner` ({encoder: PATH, ctc_head: PATH}, phone CTC exports) times the phones with that
    fixed encoder and head instead, for an encoder without a phone head (the character-CTC
    ablation): it costs one more encoder forward per step.
    """

    phone_frames: str
    adapter: str
    weight: float = 1.0
    max_frames_per_phone: int = 5
    aligner: dict[str, str] | None = None

    def __post_init__(self):
        if self.weight < 0 or self.max_frames_per_phone < 1:
            raise UserError(f"distill.weight must be >= 0 and max_frames_per_phone >= 1, got {self.weight}, "
                            f"{self.max_frames_per_phone}")
        if self.aligner is not None and set(self.aligner) != {"encoder", "ctc_head"}:
            raise UserError(f"distill.aligner: give exactly {{encoder: PATH, ctc_head: PATH}} (phone CTC exports), "
                            f"got keys {sorted(self.aligner)}")


# Checkpoints written before the split held both frozen distill parts under one `teacher` ModuleDict.
_TEACHER_KEYS = {"teacher.phone_frames.": "distill_reader.phone_frames.", "teacher.adapter.": "distill_reader.adapter.",
                 "teacher.encoder.": "phone_aligner.encoder.", "teacher.ctc_head.": "phone_aligner.ctc_head."}


def rename_teacher_keys(state_dict: dict, prefix: str = "") -> dict:
    """Map an old checkpoint's `teacher.*` keys (under `prefix`) to `distill_reader.*` / `phone_aligner.*`, in place
    (key order kept); returns it."""
    olds = {prefix + o: prefix + n for o, n in _TEACHER_KEYS.items()}
    if not any(k.startswith(prefix + "teacher.") for k in state_dict):
        return state_dict
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        old = next((o for o in olds if k.startswith(o)), None)
        state_dict[olds[old] + k[len(old):] if old else k] = v
    return state_dict


def _rename_teacher_keys_hook(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: every load path (a resume under any strategy, FSDP's included, evaluate.py) sees
    the new names."""
    rename_teacher_keys(state_dict, prefix)


class SpeechSFT(SpeechLLMModule):
    """Encoder -> adapter -> LLM trained on the transcript tokens; validation decodes (val/cer_zh, val/wer_en).

    Args:
        distill: optional DistillConfig (needs model.ctc_head and init.ctc_head).
        ctc_weight: > 0 adds the phone CTC loss of the encoder through model.ctc_head (weight x CTC summed over each
            utterance's frames, averaged over the batch) to the LM loss, for a stage whose encoder trains (joint
            SFT): the encoder keeps learning its phones while it trains end to end, and the phones the adapter
            reads through that head stay phones. Off by default (the paper's joint SFT has the LM loss alone).
    """

    components = ("encoder", "adapter", "llm", "ctc_head", "phone_frames")
    optional_components = ("ctc_head", "phone_frames")  # phone_frames: with adapter.input phone_posteriors
    inference_overrides: ClassVar[dict[str, object]] = {"distill": None}  # the distillation only shapes training

    def __init__(self, *, distill: DistillConfig | None = None, ctc_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.register_load_state_dict_pre_hook(_rename_teacher_keys_hook)  # checkpoints from before the split
        if isinstance(ctc_weight, bool) or not isinstance(ctc_weight, (int, float)) or not ctc_weight >= 0:
            raise UserError(f"{self.stage}: model.ctc_weight must be a number >= 0, got {ctc_weight!r}")
        self.ctc_weight = float(ctc_weight)
        own_head = self.configs["ctc_head"] is not None and "ctc_head" in self.init_from
        if distill is not None and distill.aligner is None and not own_head:
            raise UserError(f"{self.stage}: model.distill aligns with a CTC head; set model.ctc_head and "
                            f"model.init.ctc_head (the pretraining export or snapshot that matches the encoder), "
                            f"or model.distill.aligner")
        if distill is not None and distill.aligner is None and self.configs["ctc_head"].units != "phones":
            raise UserError(f"{self.stage}: model.distill lays out phones, and model.ctc_head has units "
                            f"{self.configs['ctc_head'].units!r}; set model.distill.aligner to phone CTC exports")
        a = self.configs["adapter"]
        # (a CTC head that trains here, e.g. with a fresh encoder in single-stage training, may start fresh)
        head_trains = any(fnmatch.fnmatchcase("ctc_head.weight", p) for p in self.trainable_patterns)
        missing = [c for c in ("ctc_head", "phone_frames") if c not in self.init_from
                   and not (c == "ctc_head" and head_trains)]
        if a is not None and a.input == "phone_posteriors" and missing:
            raise UserError(f"{self.stage}: model.adapter.input 'phone_posteriors' reads through a trained CTC head "
                            f"and phone table; set model.init.{missing[0]} (ctc_head: the pretraining export or "
                            f"snapshot of this encoder; phone_frames: the tiny LLM's, "
                            f"${{asset:tiny_llm}}/phone_frames.safetensors)")
        if a is not None and a.max_silence and "ctc_head" in missing:
            raise UserError(f"{self.stage}: model.adapter.max_silence finds silence with a trained CTC head; set "
                            f"model.init.ctc_head (the pretraining export or snapshot of this encoder), or "
                            f"adapter.max_silence: null")
        phone_head = self.configs["ctc_head"] is not None and self.configs["ctc_head"].units == "phones" and (
            "ctc_head" in self.init_from or head_trains)  # a trained phone head (or one that trains here)
        if ctc_weight and not phone_head:
            raise UserError(f"{self.stage}: model.ctc_weight trains the encoder on phone CTC through a trained "
                            f"phone head; set model.ctc_head (units: phones) and model.init.ctc_head (the "
                            f"pretraining export or snapshot of this encoder), or model.ctc_weight: 0")
        if phone_head:  # its PER too: val/per, test/<set>/per beside the transcripts' rates
            self.val_rates = TranscriptAndPhoneRates()
        self.distill = distill
        # frozen, with model.distill only: the text step's reader (phone_frames + adapter) that makes the target,
        # and (with distill.aligner) the fixed phone aligner (encoder + ctc_head) that times the phones
        self.distill_reader: nn.ModuleDict | None = None
        self.phone_aligner: nn.ModuleDict | None = None

    def configure_model(self) -> None:
        super().configure_model()
        if self.ctc_weight and not any(p.requires_grad for p in self.net.encoder.parameters()):
            raise UserError(f"{self.stage}: model.ctc_weight trains the encoder, which is frozen in this stage "
                            f"(model.trainable {list(self.trainable_patterns)}); set model.ctc_weight: 0")
        if self.distill is None or self.distill_reader is not None:
            return
        a = self.configs["adapter"]
        width = self.net.encoder.output_dim  # the reader's frames are as wide as what the adapter reads
        if self.net.reads_posteriors:
            width = self.net.phone_frames.cfg.dim
        self.distill_reader = nn.ModuleDict({
            "phone_frames": PhoneFrames(PhoneFramesConfig(dim=width)),
            "adapter": Adapter(width, self.net.adapter.net[-1].out_features, a.k, a.hidden_dim, a.dropout),
        })
        for name in ("phone_frames", "adapter"):
            check_if_asset(getattr(self.distill, name))
            load_component(self.distill_reader[name], getattr(self.distill, name), name)
        self.distill_reader.requires_grad_(False).eval()
        if self.distill.aligner is not None:  # a fixed phone aligner of its own
            self.phone_aligner = nn.ModuleDict({
                "encoder": copy.deepcopy(self.net.encoder),
                "ctc_head": CTCHead(self.net.encoder.output_dim, len(PHONES)),
            })
            for name in ("encoder", "ctc_head"):
                load_component(self.phone_aligner[name], self.distill.aligner[name], name)
            self.phone_aligner.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.distill_reader, self.phone_aligner):
            if frozen is not None:
                frozen.eval()
        return self

    def model_step(self, batch: dict) -> torch.Tensor:
        frames, lens = self.net.encode(batch["feats"], batch["feat_lens"])  # (B, T', D)
        # the CTC head once (one dropout draw) for the silence cap and the posteriors the adapter may read
        logits = self.net.ctc_head(frames) if self.net.adapter_reads_ctc_head or self.ctc_weight else None  # (B, T', V)
        keep = self.net.silence_keep(frames, lens, logits)  # (B, T') with adapter.max_silence: the frames read
        speech, speech_lens = self.net.adapt(frames, lens, keep, logits)  # (B, N, H)
        # with data.context (context SFT), each utterance's hotword list goes into its prompt
        loss = self.net.lm_loss(speech.to(self.net.llm.dtype), speech_lens, batch["text"], batch.get("hotwords"))
        if self.distill is not None and self.training:
            mse = self.distill_loss(frames, lens, speech, speech_lens, batch, keep)
            self.log("train/distill_mse", mse.detach(), batch_size=self.batch_size(batch))
            loss = loss + self.distill.weight * mse
        if self.ctc_weight and self.training:
            ctc = ctc_loss(torch.log_softmax(logits.float(), -1), lens, batch["phones"], batch["phone_lens"])
            self.log("train/ctc", ctc.detach(), batch_size=self.batch_size(batch))
            loss = loss + self.ctc_weight * ctc
        return loss

    def evaluate_batch(self, batch: dict, rates) -> None:
        """The generated transcripts, and with a phone CTC head the PER of its greedy phones (the encoder's side of
        the error: what the LLM was handed), from the same encoder pass and head outputs the LLM reads."""
        if not (isinstance(rates, TranscriptAndPhoneRates) and "phones" in batch):
            return super().evaluate_batch(batch, rates)
        with torch.no_grad():
            frames, lens = self.net.encode(batch["feats"], batch["feat_lens"])  # (B, T', D)
            logits = self.net.ctc_head(frames)  # (B, T', V)
            speech, speech_lens = self.net.adapt(frames, lens, logits=logits)
        hyps = self.net.decode_speech(speech.to(self.net.llm.dtype), speech_lens, batch["durations"].tolist(),
                                      self.decode, batch.get("hotwords"))
        rates.update(hyps, batch["text"], batch["language"])
        phones = ctc_greedy(torch.log_softmax(logits.float(), -1), lens)
        rates.update_phones(phones, [p[:int(n)].tolist() for p, n in zip(batch["phones"], batch["phone_lens"])])

    def distill_loss(self, frames, lens, speech, speech_lens, batch, keep=None) -> torch.Tensor:
        """MSE between the adapter's tokens and the reader's tokens for the aligned transcript phones (on the
        frames `keep` says the adapter read, with adapter.max_silence)."""
        with torch.no_grad():
            if self.phone_aligner is not None:  # the fixed phone aligner: (B, T', V) from its own encoder
                log_probs = torch.log_softmax(self.phone_aligner["ctc_head"](self.phone_aligner["encoder"](
                    batch["feats"], batch["feat_lens"])[0]).float(), -1)
            else:
                log_probs = self.net.ctc_log_probs(frames)  # (B, T', V)
            ids = aligned_layout(log_probs, lens, batch["phones"], batch["phone_lens"],
                                 self.distill.max_frames_per_phone).to(frames.device)  # (B, T')
            if keep is not None:  # the layout over the frames the adapter read
                ids, lens = keep_frames(ids, keep)
            target, _ = self.distill_reader["adapter"](
                self.distill_reader["phone_frames"](ids, lens), lens)  # (B, N, H)
        valid = length_mask(speech_lens, speech.shape[1])  # (B, N)
        err = (speech.float() - target.float()).pow(2).mean(-1)  # (B, N)
        return err[valid].mean() / target.float()[valid].var().clamp_min(1e-8)


class Align(SpeechSFT):
    """Stage 2, alignment: encoder and LLM frozen, only the adapter trains."""

    default_trainable = ("adapter.*",)
    stage = "align"


class IASFT(SpeechSFT):
    """Stage 3, iterative asynchronous SFT: adapter + LLM train on a frozen encoder that is replaced
    by newer pretraining snapshots at step boundaries (`swap_encoder`), driven by the hot-swap callback
    (callbacks.EncoderHotSwap) that watches the CKA drift monitor's snapshot directory."""

    default_trainable = ("adapter.*", "llm.*")
    stage = "ia_sft"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.swaps: list[dict] = []  # [{step, path}] already applied (kept in checkpoints)

    def configure_model(self) -> None:
        super().configure_model()
        if any(p.requires_grad for p in self.net.encoder.parameters()):
            raise UserError("ia_sft keeps the encoder frozen (it is swapped, not trained): drop encoder "
                            "patterns from model.trainable")

    def swap_encoder(self, source: str | Path | dict[str, torch.Tensor]) -> None:
        """Replace the encoder's weights (an export path or a state dict) at a step boundary; strict.

        Call between optimizer steps (e.g. from on_train_batch_start). The encoder stays frozen and
        in eval mode; the optimizer is untouched because it never held encoder parameters.
        """
        enc, head = self.net.encoder, None
        if self.net.adapter_reads_ctc_head:  # checked before anything is loaded: never an encoder without its head
            if isinstance(source, dict):
                raise UserError("swap_encoder: with adapter.input phone_posteriors or adapter.max_silence, swap from "
                                "an export path, whose ctc_head-*.safetensors sibling is swapped in with it")
            head = Path(source).with_name(Path(source).name.replace("encoder", "ctc_head", 1))
            if not head.is_file():
                raise UserFileNotFound(f"swap_encoder: {head} (the CTC head of {Path(source).name}, which the adapter "
                                       f"reads through) is missing")
        with gathered(self._trainer, writeback=True):  # sharded (FSDP): every rank sees and loads the full weights
            if isinstance(source, dict):
                own = enc.state_dict()
                bad = [k for k in own if k not in source or source[k].shape != own[k].shape] + \
                      [k for k in source if k not in own]
                if bad:
                    raise UserError(f"swap_encoder: state dict does not fit the encoder; mismatched keys {bad[:5]}")
                tensors, label = source, "<state dict>"
            else:
                tensors, label = read_component(enc, source, "encoder"), str(source)
            # both checked before either is loaded: a snapshot that does not fit leaves the current encoder whole
            head_tensors = read_component(self.net.ctc_head, head, "ctc_head") if head is not None else None
            enc.load_state_dict(tensors, strict=True)
            if head_tensors is not None:  # the adapter reads this encoder's CTC head: the head comes with it
                self.net.ctc_head.load_state_dict(head_tensors, strict=True)
        if head_tensors is not None:
            self.net.ctc_head.requires_grad_(False)
            self.net.ctc_head.eval()
        enc.requires_grad_(False)
        enc.eval()
        self.swaps.append({"step": int(self.global_step), "path": label})
        self.print(f"[{self.stage}] step {self.global_step}: encoder swapped <- {label}")

    def exported_components(self) -> list[str]:
        """The adapter and LLM that trained, plus the encoder (and what the adapter reads through) they were
        trained on last."""
        return list(dict.fromkeys(["encoder", *super().exported_components()]))

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


class ContextSFT(SpeechSFT):
    """An optional stage after joint SFT, context SFT: adapter + LLM learn to use a hotword list in the prompt
    (context biasing).

    Each training utterance comes with a list (data.init_args.context: datamodules.SpeechDataModule samples it):
    words of its own transcript, rarest first, among phonetically similar words it does not contain, and a
    share of lists with those distractors only, so that the model writes a hotword when it hears one and
    never copies one it did not hear. The encoder stays as joint SFT left it: the phone CTC head that
    retrieves hotwords at inference (entropy_asr.inference.hotwords) keeps matching its posteriors.
    """

    default_trainable = ("adapter.*", "llm.*")
    stage = "context_sft"

    def on_fit_start(self) -> None:
        super().on_fit_start()
        dm = self._datamodule()
        if getattr(dm, "context", None) is None:
            raise UserError(f"{self.stage} trains with a hotword list in each prompt: set data.init_args.context "
                            f"(e.g. context: {{}} for the defaults of entropy_asr.data.context.ContextConfig)")
