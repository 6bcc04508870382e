"""Text tokenizers for the LLM: a tiny byte-level BPE trained here (Qwen-style), or any hub tokenizer.

Both come out as ordinary Hugging Face tokenizers with a ChatML chat template and the
`<speech>` placeholder as one special token, so the prompt code (prompt.py) never needs to
know which kind it got.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from entropy_asr.errors import UserError, UserFileNotFound
from entropy_asr.io import atomic_write_dir

SPEECH_TOKEN = "<speech>"  # replaced by the adapter's speech embeddings (docs/method.md: the prompt)
PAD_TOKEN = "<|endoftext|>"  # Qwen's document separator doubles as padding
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # ends every chat turn, so it is the EOS of the transcript
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END, SPEECH_TOKEN]  # ids 0..3 in a tokenizer trained here

# Qwen's ChatML layout, without Qwen3's tool/thinking branches (no trained tokenizer needs them).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path,
                        min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`, save it to `out_dir` (loadable by AutoTokenizer) and return it.

    Byte level: every UTF-8 byte is in the initial alphabet, so any text (Mandarin included)
    encodes without an unknown token and decodes back exactly.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UserError(f"train_bpe_tokenizer: vocab_size={vocab_size} cannot hold the 256 byte tokens and "
                        f"{len(SPECIAL_TOKENS)} special tokens; use vocab_size >= {256 + len(SPECIAL_TOKENS)}")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: the transcript follows "assistant\n", and a leading space would
    # be a token the model must learn to emit and the decoder must strip.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)

    # bos_token=None as in Qwen's tokenizers: the chat template starts every prompt itself.
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token=IM_END, pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, SPEECH_TOKEN], chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False)
    _save_atomically(wrapped, Path(out_dir))
    return wrapped


def _save_atomically(tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    # A crash mid-save must never leave a half-written tokenizer that a later run loads; the dir gets mode 755
    # (the tokenizer is a shared artefact).
    atomic_write_dir(out_dir, tokenizer.save_pretrained)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer (local dir or hub name); add `<speech>`, a pad token and a ChatML template if missing.

    If `<speech>` had to be added, its id is len(tokenizer) - 1 and may lie past the LLM's
    embedding rows: build_llm resizes the embeddings whenever len(tokenizer) exceeds them
    (Qwen3's hub embeddings are padded well past its vocabulary, so there no resize happens).
    """
    path = Path(name_or_path).expanduser()
    # A hub id is "org/name"; anything else that does not exist is a missing local path, and
    # must not be sent to the hub (no network at run time).
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if looks_local and not path.is_dir():
        raise UserFileNotFound(f"load_tokenizer: no tokenizer directory at {name_or_path!r}; "
                               "train one with train_bpe_tokenizer or fix the path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name_or_path)
    except (OSError, ValueError) as e:
        raise UserFileNotFound(f"load_tokenizer: cannot load a tokenizer from {name_or_path!r} (not a local "
                               f"tokenizer directory, nor a hub model in the local cache): {e}") from e

    if len(tokenizer.encode(SPEECH_TOKEN, add_special_tokens=False)) != 1 or SPEECH_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(SPEECH_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        # Base (non-chat) checkpoints ship without a template; the prompt needs one.
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def speech_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of the `<speech>` placeholder (raises if the tokenizer lacks it)."""
    ids = tokenizer.encode(SPEECH_TOKEN, add_special_tokens=False)
    if len(ids) != 1:
        raise UserError(f"tokenizer encodes {SPEECH_TOKEN!r} as {ids}, not one token; load it with load_tokenizer")
    return ids[0]
