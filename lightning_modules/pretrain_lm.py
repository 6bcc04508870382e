"""The tiny pipeline's text step: train a BPE tokenizer and the tiny LLM on text (a stand-in for
the pretrained LLM a real run starts from). The LLM learns to answer the transcription prompt
with a transcript when the speech is absent, so it is in the "instruction" format the speech
stages use."""

from __future__ import annotations

from pathlib import Path

import torch

from entropy_asr.model.tokenizer import SPEECH_TOKEN, train_bpe_tokenizer
from lightning_modules.base import SpeechLLMModule


class PretrainLM(SpeechLLMModule):
    """LLM only, text batches {"text", "language"}; validation reports val/loss (nats per token).

    Args:
        tokenizer_vocab_size: with the tiny from-config LLM (llm.name_or_path null and
            llm.tokenizer null), train a byte-level BPE of this size on the training text into
            <run dir>/tokenizer first (kept on resume).
    """

    components = ("llm",)
    default_trainable = ("llm.*",)
    stage = "pretrain_lm"

    def __init__(self, *, tokenizer_vocab_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer_vocab_size = tokenizer_vocab_size

    def prepare_data(self) -> None:
        """Train the tokenizer (rank zero; once) when the config asks for one."""
        llm = self.configs["llm"]
        if llm.name_or_path is None and llm.tokenizer is None:
            if not self.tokenizer_vocab_size:
                raise ValueError("pretrain_lm with the tiny LLM: set model.tokenizer_vocab_size (a tokenizer is "
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

    def model_step(self, batch: dict) -> torch.Tensor:
        return self.net.lm_loss(None, None, batch["text"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.model_step(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["text"]), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        pass
