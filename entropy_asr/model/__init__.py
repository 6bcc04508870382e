"""The plain-torch model: speech encoder, CTC head, adapter, LLM, prompt, and their composition."""

from entropy_asr.model.encoder import (
    ENCODERS,
    ConformerEncoder,
    EncoderConfig,
    build_encoder,
    chunk_attention_mask,
    paper_conformer,
    tiny_conformer,
)
from entropy_asr.model.heads import Adapter, CTCHead
from entropy_asr.model.llm import LLMConfig, build_llm, llm_embed
from entropy_asr.model.prompt import (
    SpeechPrompt,
    build_generation_inputs,
    build_train_inputs,
    generate,
    max_new_tokens_for,
    transcript_nll,
    transcript_scores,
)
from entropy_asr.model.tokenizer import (
    SPEECH_TOKEN,
    load_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "ENCODERS",
    "SPEECH_TOKEN",
    "Adapter",
    "CTCHead",
    "ConformerEncoder",
    "EncoderConfig",
    "LLMConfig",
    "SpeechPrompt",
    "build_encoder",
    "build_generation_inputs",
    "build_llm",
    "build_train_inputs",
    "chunk_attention_mask",
    "generate",
    "llm_embed",
    "load_tokenizer",
    "max_new_tokens_for",
    "paper_conformer",
    "tiny_conformer",
    "train_bpe_tokenizer",
    "transcript_nll",
    "transcript_scores",
]
