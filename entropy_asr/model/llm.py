"""The LLM decoder: any Hugging Face causal LM (Qwen3-1.7B in the paper), or a tiny Qwen3 built from config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
)

from entropy_asr.errors import UserError

# The from-config model for CPU runs and tests: Qwen3's architecture at ~5M parameters.
TINY_QWEN3 = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 64, "intermediate_size": 768, "max_position_embeddings": 1024, "tie_word_embeddings": True}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Short names accepted in `lora` for readability in YAML, mapped to peft's LoraConfig names.
LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}


@dataclass
class LLMConfig:
    """Which LLM to build, in which precision, and how it fine-tunes (full or LoRA)."""

    name_or_path: str | None = None  # hub name or local dir ("Qwen/Qwen3-1.7B"); None = tiny Qwen3 from `tiny`
    tokenizer: str | None = None  # defaults to name_or_path
    tiny: dict = field(default_factory=lambda: dict(TINY_QWEN3))  # Qwen3Config fields; unset ones take TINY_QWEN3
    dtype: str = "float32"
    lora: dict | None = None  # peft LoraConfig kwargs ({r, alpha, dropout, target_modules}); None = full fine-tuning
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    loss_chunk_tokens: int = 4096  # label positions per output-layer chunk in the loss (entropy_asr.model.losses)
    vocab_rows: int | None = None  # the from-config LLM's embedding rows (>= the tokenizer's); 151936 = Qwen3's

    def __post_init__(self):
        if self.name_or_path is not None and not (isinstance(self.name_or_path, str) and self.name_or_path.strip()):
            raise UserError(f"llm.name_or_path must be a hub name or a local directory, or null for the tiny model; "
                            f"got {self.name_or_path!r}")
        if self.dtype not in DTYPES:
            raise UserError(f"llm.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.attn_implementation, str) or not self.attn_implementation:
            raise UserError(f"llm.attn_implementation must name an attention kernel such as 'sdpa' or 'eager', "
                            f"got {self.attn_implementation!r}")
        known = set(Qwen3Config().to_dict())
        unknown = sorted(set(self.tiny) - known)
        if unknown:
            raise UserError(f"llm.tiny has keys that are not Qwen3Config fields: {unknown}; fix their spelling "
                            f"(e.g. hidden_size, num_hidden_layers)")
        tiny = {**TINY_QWEN3, **self.tiny}
        if tiny["num_attention_heads"] % tiny["num_key_value_heads"]:
            raise UserError(f"llm.tiny: num_attention_heads={tiny['num_attention_heads']} must be a multiple of "
                            f"num_key_value_heads={tiny['num_key_value_heads']}")
        for name in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"):
            if name in self.tiny:
                raise UserError(f"llm.tiny.{name} is taken from the tokenizer; remove it from the config")
        if self.lora is not None:
            self._lora_kwargs()  # raises on unknown keys
        if self.loss_chunk_tokens < 1:
            raise UserError(f"llm.loss_chunk_tokens must be >= 1, got {self.loss_chunk_tokens}")
        if self.vocab_rows is not None and (self.vocab_rows < 1 or self.name_or_path is not None):
            raise UserError(f"llm.vocab_rows pads the from-config LLM's vocabulary (name_or_path null); got "
                            f"{self.vocab_rows} with name_or_path {self.name_or_path!r}")

    @property
    def tokenizer_name_or_path(self) -> str | None:
        """Where the tokenizer comes from: `tokenizer`, else the LLM's own `name_or_path`."""
        return self.tokenizer if self.tokenizer is not None else self.name_or_path

    def _lora_kwargs(self) -> dict:
        """The `lora` dict with short aliases expanded, checked against peft's LoraConfig fields."""
        # peft is imported only when LoRA is asked for: it is slow to import.
        from peft import LoraConfig

        kwargs = {LORA_ALIASES.get(k, k): v for k, v in (self.lora or {}).items()}
        fields = {f.name for f in dataclasses.fields(LoraConfig)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise UserError(f"llm.lora has keys that are not peft LoraConfig fields: {unknown}; use e.g. r, alpha "
                            f"(lora_alpha), dropout (lora_dropout), target_modules")
        if kwargs.get("r", 8) <= 0:
            raise UserError(f"llm.lora.r must be > 0, got {kwargs['r']}")
        return kwargs


def build_llm(config: LLMConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Build (or load) the LLM for `tokenizer`; wrap it with LoRA when `config.lora` is set."""
    dtype = DTYPES[config.dtype]
    if config.name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(config.name_or_path, dtype=dtype,
                                                     attn_implementation=config.attn_implementation)
    else:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        rows = max(len(tokenizer), config.vocab_rows or 0)  # padded rows, as Qwen3's checkpoints pad theirs
        qwen3 = Qwen3Config(vocab_size=rows, pad_token_id=tokenizer.pad_token_id, bos_token_id=bos,
                            eos_token_id=tokenizer.eos_token_id, **{**TINY_QWEN3, **config.tiny})
        model = AutoModelForCausalLM.from_config(qwen3, dtype=dtype, attn_implementation=config.attn_implementation)

    # load_tokenizer may have added <speech> past the checkpoint's rows (Qwen3 pads its rows, so usually not).
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))

    # A fresh generation config: hub defaults (Qwen3 samples at T=0.6, stops on two ids) are wrong
    # for ASR, which decodes greedily or with beams and stops at the end of the assistant turn.
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.config.pad_token_id = tokenizer.pad_token_id

    if config.gradient_checkpointing:
        # use_reentrant=False: gradients reach the (frozen-embedding) inputs_embeds without tricks.
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    if config.lora is not None:
        from peft import LoraConfig, get_peft_model

        # get_peft_model freezes every base weight; only the LoRA matrices train inside the LLM.
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **config._lora_kwargs()))
    return model


def llm_embed(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings (B, L) -> (B, L, H) from the LLM's input table (works on peft-wrapped models too)."""
    return model.get_input_embeddings()(input_ids)
