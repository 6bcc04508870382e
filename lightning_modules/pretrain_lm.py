"""The tiny pipeline's text step: train a BPE tokenizer and the tiny LLM on text (a stand-in for
the pretrained LLM a real run starts from), in the chat format the speech stages use.

With `phone_frames` and `adapter` set it also learns to read (entropy_asr/model/pseudo_speech.py):
a share of the sentences come with their phones as pseudo encoder frames in the `<speech>` slot,
so the LLM answers the transcription prompt by reading what the adapter gives it, as a real
pretrained LLM can be made to. Validation then also decodes the dev sentences from clean pseudo
speech: val/cer_zh, val/wer_en, val/mer_mix say how well the LLM reads before it hears anything.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from entropy_asr.errors import UserError
from entropy_asr.model.tokenizer import SPEECH_TOKEN, train_bpe_tokenizer
from lightning_modules.base import SpeechLLMModule

SECONDS_PER_FRAME = 0.04  # pseudo frames are 25 Hz encoder frames


def _reading(phones: list[int], language: str) -> list[int] | None:
    """What the reader sees of one item: its phones, or a silence-only layout (None) for a non-speech clip."""
    return None if language == "none" else phones


class PretrainLM(SpeechLLMModule):
    """LLM (+ phone_frames + adapter) on text batches {"text", "language", "phones"}.

    Validation reports val/loss (nats per token, text only) or, when reading, val/read_loss (nats
    per transcript token given the pseudo speech: the number to watch), the error rates of
    transcripts decoded from clean pseudo speech, and val/text_loss (without the speech, which
    rises as the LLM learns to rely on it).

    Args:
        tokenizer_vocab_size: with the tiny from-config LLM (llm.name_or_path null and
            llm.tokenizer null), train a byte-level BPE of this size on the training text into
            <run dir>/tokenizer first (kept on resume).
        read_share: share of training sentences given their pseudo speech (with phone_frames).
        seed: seeds the pseudo-speech layouts (per step and rank, so a resumed run repeats them).
    """

    components = ("llm", "adapter", "phone_frames")
    optional_components = ("adapter", "phone_frames")
    default_trainable = ("llm.*",)
    stage = "pretrain_lm"

    def __init__(self, *, tokenizer_vocab_size: int | None = None, read_share: float = 1.0, seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        reading = [c for c in ("adapter", "phone_frames") if self.configs[c] is not None]
        if len(reading) == 1:
            other = {"adapter", "phone_frames"} - set(reading)
            raise UserError(f"pretrain_lm: model.{reading[0]} is set but model.{other.pop()} is not; reading pseudo "
                            f"speech needs both (or neither, for a text-only LLM)")
        self.reading = bool(reading)
        if self.reading and kwargs.get("trainable") is None:
            self.trainable_patterns += ["adapter.*", "phone_frames.*"]
        if not 0 <= read_share <= 1:
            raise UserError(f"model.read_share must be in [0, 1], got {read_share}")
        self.tokenizer_vocab_size, self.read_share, self.seed = tokenizer_vocab_size, read_share, seed

    def prepare_data(self) -> None:
        """Train the tokenizer (rank zero; once) when the config asks for one."""
        llm = self.configs["llm"]
        if llm.name_or_path is None and llm.tokenizer is None:
            if not self.tokenizer_vocab_size:
                raise UserError("pretrain_lm with the tiny LLM: set model.tokenizer_vocab_size (a tokenizer is "
                                "trained on the text) or model.llm.tokenizer (an existing tokenizer dir)")
            path = self.tokenizer_dir
            if not (path / "tokenizer.json").exists():
                p = self.configs["prompt"]
                # The prompt's words, often enough to become whole tokens, as in a real LLM's vocabulary
                prompt_words = [p.system or "", p.user.replace(SPEECH_TOKEN, ""), "system user assistant"] * 500
                train_bpe_tokenizer(self.trainer.datamodule.texts() + prompt_words, self.tokenizer_vocab_size, path)

    @property
    def tokenizer_dir(self) -> Path:
        return Path(self.trainer.default_root_dir) / "tokenizer"

    def configure_model(self) -> None:
        llm = self.configs["llm"]
        if self.net is None and llm.name_or_path is None and llm.tokenizer is None:
            llm.tokenizer = str(self.tokenizer_dir)
        super().configure_model()

    def pseudo_speech(self, phones: list[list[int]], rng: random.Random, train: bool):
        """(B, N, H) speech tokens and (B,) counts from phone-id lists (empty list: no speech)."""
        frame_ids, lens = self.net.phone_frames.layout(phones, rng, train)
        frames = self.net.phone_frames(frame_ids.to(self.device), lens.to(self.device), noise=train)  # (B, T, D)
        speech, speech_lens = self.net.adapter(frames, lens.to(self.device))  # (B, T/k, H)
        return speech.to(self.net.llm.dtype), speech_lens, lens

    def model_step(self, batch: dict) -> torch.Tensor:
        if not self.reading:
            return self.net.lm_loss(None, None, batch["text"])
        rng = random.Random(f"pretrain_lm/{self.seed}/{self.global_step}/{self.global_rank}")
        phones = [_reading(p, lang) if rng.random() < self.read_share else []
                  for p, lang in zip(batch["phones"], batch["language"])]
        speech, speech_lens, _ = self.pseudo_speech(phones, rng, train=True)
        return self.net.lm_loss(speech, speech_lens, batch["text"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        bs = len(batch["text"])
        # Without reading, the text-only loss is the LM's number. With it, watch val/read_loss and
        # the reading error rates instead: val/text_loss (the transcript with the speech slot left
        # out) rises while the LLM learns to take the transcript from the speech rather than guess it.
        text_loss = self.net.lm_loss(None, None, batch["text"])
        self.log("val/text_loss" if self.reading else "val/loss", text_loss, prog_bar=not self.reading,
                 batch_size=bs, sync_dist=True)
        if not self.reading:
            return
        rng = random.Random(f"pretrain_lm-val/{self.seed}/{batch_idx}")  # the same layouts at every validation
        phones = [_reading(p, lang) for p, lang in zip(batch["phones"], batch["language"])]
        speech, speech_lens, frames = self.pseudo_speech(phones, rng, train=False)
        self.log("val/read_loss", self.net.lm_loss(speech, speech_lens, batch["text"]), prog_bar=True,
                 batch_size=bs, sync_dist=True)
        durations = (frames * SECONDS_PER_FRAME).tolist()
        hyps = self.net.decode_speech(speech, speech_lens, durations, self.decode)
        self.val_rates.update(hyps, batch["text"], batch["language"])
