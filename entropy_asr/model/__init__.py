"""The plain-torch model: speech encoder, CTC head, adapter, LLM, prompt, and their composition."""

from entropy_asr.model.encoder import (
    ConformerEncoder,
    EncoderConfig,
    chunk_attention_mask,
)
from entropy_asr.model.heads import Adapter, CTCHead
from entropy_asr.model.llm import LLMConfig, build_llm, llm_embed
from entropy_asr.model.prompt import (
    SpeechPrompt,
    build_generation_inputs,
    build_train_inputs,
    generate,
    max_new_tokens_for,
    transcript_scores,
)
from entropy_asr.model.tokenizer import (
    SPEECH_TOKEN,
    load_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "SPEECH_TOKEN",
    "Adapter",
    "CTCHead",
    "ConformerEncoder",
    "EncoderConfig",
    "LLMConfig",
    "SpeechPrompt",
    "build_generation_inputs",
    "build_llm",
    "build_train_inputs",
    "chunk_attention_mask",
    "generate",
    "llm_embed",
    "load_tokenizer",
    "max_new_tokens_for",
    "train_bpe_tokenizer",
    "transcript_scores",
]
