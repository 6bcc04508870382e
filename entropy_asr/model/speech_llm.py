"""The composed backbone: speech encoder -> (phone CTC head) and encoder -> adapter -> LLM.

Each training stage uses a subset of the components (pretraining: encoder + CTC head; the
LLM stages: encoder + adapter + LLM; the tiny LLM's text step: LLM, plus pseudo-speech phone frames
and an adapter when it also learns to read). Absent ones are None.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entropy_asr.errors import UserError
from entropy_asr.model.encoder import ConformerEncoder, EncoderConfig
from entropy_asr.model.heads import Adapter, CTCHead
from entropy_asr.model.llm import LLMConfig, build_llm, llm_embed
from entropy_asr.model.losses import chunked_lm_loss
from entropy_asr.model.masks import capped_silence, keep_frames, length_mask
from entropy_asr.model.prompt import (
    DEFAULT_CONTEXT,
    DEFAULT_SYSTEM,
    DEFAULT_USER,
    SpeechPrompt,
    build_train_inputs,
    generate,
    max_new_tokens_for,
)
from entropy_asr.model.pseudo_speech import PhoneFrames, PhoneFramesConfig, held_phones
from entropy_asr.model.tokenizer import load_tokenizer
from entropy_asr.text import PHONES


@dataclass
class CTCHeadConfig:
    """The CTC head: a 3-layer MLP over encoder frames, onto phones (the method) or characters.

    units: "phones" (the shared phone inventory) or "chars" (entropy_asr.text.chars; the
    character-level ablation), which needs `inventory`, the JSON that
    `python -m entropy_asr.text.chars TRAIN_DIR OUT` builds.
    """

    hidden_dim: int | None = None  # default: the encoder's width
    dropout: float = 0.1
    units: str = "phones"
    inventory: str | None = None

    def __post_init__(self):
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise UserError(f"ctc_head.hidden_dim must be positive or null, got {self.hidden_dim}")
        if self.units not in ("phones", "chars"):
            raise UserError(f"ctc_head.units must be 'phones' or 'chars', got {self.units!r}")
        if self.units == "chars" and not self.inventory:
            raise UserError("ctc_head.units 'chars' needs ctc_head.inventory: the JSON built by "
                            "`python -m entropy_asr.text.chars TRAIN_SHARD_DIR OUT.json`")

    def char_inventory(self):
        """The CharInventory for units 'chars', else None."""
        if self.units != "chars":
            return None
        from entropy_asr.text.chars import CharInventory

        return CharInventory.load(self.inventory)

    def vocab_size(self) -> int:
        inventory = self.char_inventory()
        return len(PHONES) if inventory is None else len(inventory)


@dataclass
class AdapterConfig:
    """The adapter: stack k encoder frames (25 Hz -> 25/k Hz), then a 2-layer MLP to the LLM width."""

    k: int = 4
    hidden_dim: int | None = None  # default: the LLM's width
    dropout: float = 0.0
    # what the adapter reads: "encoder" frames (the paper), or "phone_posteriors": the CTC head's phones through a
    # phone table (model.phone_frames), i.e. pseudo speech, which an LLM taught to read pseudo speech (the tiny text
    # step) reads from the first step (`hold` says how); the encoder still trains through it
    input: str = "encoder"
    # with input "phone_posteriors": 0 reads each frame's soft posteriors; n > 0 reads the greedy phone of each CTC
    # spike held over the blank frames after it, n frames in all (blank past that), which is how the tiny text step
    # lays out its pseudo speech (a phone held 1-5 frames): the layout the tiny LLM learned to read, instead of
    # CTC's one-frame spikes between blanks; the posteriors still carry the gradient (straight through)
    hold: int = 0
    # silence the LLM reads: runs of encoder frames the CTC head reads as blank, next to speech, are shortened to at
    # most this many frames before the adapter (a leading run keeps its last frames, a trailing run its first, a pause
    # inside speech half of each end; a clip with no phone at all is read whole). null reads every frame. An LLM that
    # has only seen short silence around speech ends its transcript early after a second or more of it (docs/method.md,
    # "Capping the silence the LLM reads": the tiny configs' 12 frames, measured)
    max_silence: int | None = None

    def __post_init__(self):
        if self.max_silence is not None and self.max_silence < 1:
            raise UserError(f"adapter.max_silence must be >= 1 frames or null (read all silence), got "
                            f"{self.max_silence}")
        if self.k < 1:
            raise UserError(f"adapter.k must be >= 1 (frames stacked per LLM token), got {self.k}")
        if self.input not in ("encoder", "phone_posteriors"):
            raise UserError(f"adapter.input must be 'encoder' or 'phone_posteriors', got {self.input!r}")
        if self.hold < 0 or (self.hold and self.input != "phone_posteriors"):
            raise UserError(f"adapter.hold must be 0, or >= 1 frames with adapter.input 'phone_posteriors' (it holds "
                            f"the CTC head's greedy phones), got hold={self.hold} with input {self.input!r}")


@dataclass
class PromptConfig:
    """Chat prompt around the speech: docs/method.md's system and user turns; `<speech>` marks the audio.

    system null or "" leaves the system turn out (the tiny configs do: on a CPU the prompt
    would otherwise cost more LLM compute than the transcript).
    """

    system: str | None = DEFAULT_SYSTEM
    user: str = DEFAULT_USER
    # context biasing: a sample's hotword list goes just before the speech in this form (joined by ", "); a
    # sample without hotwords gets the prompt above unchanged
    context: str = DEFAULT_CONTEXT


@dataclass
class DecodeConfig:
    """Generation: greedy (num_beams=1) or beam search, output length tied to the audio length."""

    num_beams: int = 1
    tokens_per_second: float = 8.0  # max new tokens per second of audio (see prompt.max_new_tokens_for)
    max_new_tokens_floor: int = 8  # the limit never goes below this, for very short clips
    # a static KV cache, whose decoding step Transformers compiles: RTFx 558 -> 1,621 at batch 64 on an
    # H200 (docs/benchmarks.md); each new batch shape compiles once, so it pays on GPUs with fixed batches
    static_cache: bool = False

    def __post_init__(self):
        if self.num_beams < 1:
            raise UserError(f"decode.num_beams must be >= 1, got {self.num_beams}")
        if self.tokens_per_second <= 0:
            raise UserError(f"decode.tokens_per_second must be > 0, got {self.tokens_per_second}")


class SpeechLLM(nn.Module):
    """Encoder, CTC head, adapter and LLM with the prompt and tokenizer that go with them."""

    def __init__(self, encoder: EncoderConfig | None = None, ctc_head: CTCHeadConfig | None = None,
                 adapter: AdapterConfig | None = None, llm: LLMConfig | None = None,
                 prompt: PromptConfig | None = None, phone_frames: PhoneFramesConfig | None = None):
        super().__init__()
        if ctc_head and encoder is None:
            raise UserError("a CTC head needs an encoder: set model.encoder")
        if adapter and encoder is None and phone_frames is None:
            raise UserError("an adapter reads encoder frames: set model.encoder (or model.phone_frames in the "
                            "text step)")
        if adapter is not None and llm is None:
            raise UserError("the adapter maps into an LLM: set model.llm")
        self.encoder = ConformerEncoder(encoder) if encoder is not None else None
        self.phone_frames = PhoneFrames(phone_frames) if phone_frames is not None else None
        self.ctc_head = self.adapter = self.llm = self.tokenizer = self.prompt = None
        self.loss_chunk = llm.loss_chunk_tokens if llm is not None else 4096
        if ctc_head is not None:
            self.ctc_head = CTCHead(self.encoder.output_dim, ctc_head.vocab_size(), ctc_head.hidden_dim,
                                    ctc_head.dropout)
        if llm is not None:
            source = llm.tokenizer_name_or_path
            if source is None:
                raise UserError("model.llm: set name_or_path (a hub name or an exported LLM dir) or tokenizer "
                                "(a tokenizer dir) for the tiny from-config LLM")
            self.tokenizer = load_tokenizer(source)
            self.llm = build_llm(llm, self.tokenizer)
            p = prompt or PromptConfig()
            self.prompt = SpeechPrompt(self.tokenizer, system=p.system, user=p.user, context=p.context)
        self.reads_posteriors = adapter is not None and adapter.input == "phone_posteriors"
        self.adapter_hold = adapter.hold if adapter is not None else 0
        self.max_silence = adapter.max_silence if adapter is not None else None
        if self.max_silence is not None and ctc_head is None:
            raise UserError(f"adapter.max_silence ({self.max_silence}) finds silence with the CTC head: set "
                            f"model.ctc_head (and init it from the pretraining export), or adapter.max_silence: null")
        if self.reads_posteriors and (ctc_head is None or ctc_head.units != "phones" or phone_frames is None):
            raise UserError("adapter.input 'phone_posteriors' reads a phone CTC head's posteriors through a phone "
                            "table: set model.ctc_head (units: phones) and model.phone_frames, and init both")
        if adapter is not None:
            width = self.llm.get_input_embeddings().embedding_dim
            in_dim = phone_frames.dim if self.encoder is None or self.reads_posteriors else self.encoder.output_dim
            self.adapter = Adapter(in_dim, width, adapter.k, adapter.hidden_dim, adapter.dropout)

    def compile_blocks(self, **options) -> None:
        """torch.compile each Conformer block and each LLM decoder layer in place (state-dict keys unchanged);
        `options` go to torch.compile (e.g. backend="aot_eager" to look for graph breaks without Inductor). Shapes
        are torch.compile's automatic dynamic ones: the second batch length recompiles once with the length
        symbolic, and later lengths reuse it (tested: tests/test_encoder.py)."""
        blocks = list(self.encoder.layers) if self.encoder is not None else []
        if self.llm is not None:
            blocks += list(self.llm.get_decoder().layers)
        for block in blocks:
            block.compile(**options)

    def encode(self, feats: Tensor, feat_lens: Tensor, **chunk) -> tuple[Tensor, Tensor]:
        """(B, T, 80) features at 100 Hz -> (B, T', D) encoder frames at 25 Hz and their lengths."""
        return self.encoder(feats, feat_lens, **chunk)

    def ctc_log_probs(self, frames: Tensor) -> Tensor:
        """(B, T', D) -> (B, T', V) CTC (phone or character) log-posteriors, float32 for a stable CTC loss."""
        return F.log_softmax(self.ctc_head(frames).float(), dim=-1)

    @property
    def adapter_reads_ctc_head(self) -> bool:
        """Whether what the adapter reads depends on the CTC head (its phones, or where it hears silence): the head is
        then swapped and exported with the encoder and adapter."""
        return self.reads_posteriors or bool(self.max_silence)

    def silence_keep(self, frames: Tensor, lens: Tensor, logits: Tensor | None = None) -> Tensor | None:
        """(B, T') bool: the encoder frames the adapter reads under adapter.max_silence (runs of frames the CTC head
        reads as blank, next to speech, shortened: entropy_asr.model.masks.capped_silence); None without it.
        logits: the CTC head's (B, T', V) on these frames, if already computed."""
        if not self.max_silence:
            return None
        logits = self.ctc_head(frames) if logits is None else logits
        return capped_silence(logits.argmax(-1) == 0, lens, self.max_silence)  # CTC's blank is id 0

    def adapt(self, frames: Tensor, lens: Tensor, keep: Tensor | None = None,
              logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, T', D) encoder frames -> (B, N, H) speech tokens through the adapter (adapter.input decides
        what it reads: the frames, or the CTC head's phones through the phone table as pseudo speech: its soft
        posteriors, or with adapter.hold its greedy phones held as the text step lays them out). With
        adapter.max_silence, long runs of blank frames are dropped first. A caller that needs the same frames or
        head outputs elsewhere passes them: `keep` (silence_keep's mask), `logits` (the CTC head's on `frames`)."""
        if logits is None and (self.reads_posteriors or (self.max_silence and keep is None)):
            logits = self.ctc_head(frames)  # (B, T', V)
        if self.max_silence:
            keep = self.silence_keep(frames, lens, logits) if keep is None else keep
            frames, lens = keep_frames(frames, keep)
            if self.reads_posteriors:
                logits, _ = keep_frames(logits, keep)
        if self.reads_posteriors:
            posteriors = F.softmax(logits.float(), dim=-1)  # (B, T', phones)
            if self.adapter_hold:
                posteriors = held_phones(posteriors, self.adapter_hold)
            frames = (posteriors @ self.phone_frames.table.weight.float()).to(frames.dtype)  # (B, T', dim)
            frames = frames * length_mask(lens, frames.shape[1])[..., None]
        return self.adapter(frames, lens)

    def speech_embeddings(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, 80) -> (B, N, H) LLM-width speech tokens at 25/k Hz, and their counts."""
        frames, lens = self.encode(feats, feat_lens)
        speech, speech_lens = self.adapt(frames, lens)
        return speech.to(self.llm.dtype), speech_lens

    def _no_speech(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Zero speech tokens: the prompt with the audio removed (text-only LM step, H0)."""
        width = self.llm.get_input_embeddings().embedding_dim
        device = self.llm.get_input_embeddings().weight.device
        return (torch.zeros(batch_size, 0, width, device=device, dtype=self.llm.dtype),
                torch.zeros(batch_size, dtype=torch.long, device=device))

    def lm_loss(self, speech: Tensor | None, speech_lens: Tensor | None, texts: list[str],
                hotwords: list[list[str]] | None = None) -> Tensor:
        """Mean next-token cross-entropy over the transcript tokens and EOS (the prompt is masked).

        hotwords: per sample, a hotword list for the prompt's context section (context SFT).
        The output layer sees only the label positions, `loss_chunk` at a time (entropy_asr.model.losses).
        """
        if speech is None:
            speech, speech_lens = self._no_speech(len(texts))
        inputs = build_train_inputs(self.prompt, lambda ids: llm_embed(self.llm, ids), speech, speech_lens, texts,
                                    hotwords)
        labels = inputs.pop("labels")
        hidden = self.llm.get_decoder()(**inputs).last_hidden_state  # (B, L, H): no (B, L, V) logits
        head = self.llm.get_output_embeddings()
        return chunked_lm_loss(hidden, head.weight, labels, head.bias, self.loss_chunk)

    @torch.no_grad()
    def transcribe(self, feats: Tensor, feat_lens: Tensor, durations: list[float], decode: DecodeConfig,
                   hotwords: list[list[str]] | None = None) -> list[str]:
        """Batched generation: transcripts (text) of a batch of features (hotwords: as lm_loss)."""
        speech, speech_lens = self.speech_embeddings(feats, feat_lens)
        return self.decode_speech(speech, speech_lens, durations, decode, hotwords)

    @torch.no_grad()
    def decode_speech(self, speech: Tensor, speech_lens: Tensor, durations: list[float],
                      decode: DecodeConfig, hotwords: list[list[str]] | None = None) -> list[str]:
        """Batched generation from LLM-width speech tokens (B, N, H), length limits from `durations` (s)."""
        limits = max_new_tokens_for(durations, decode.tokens_per_second, decode.max_new_tokens_floor)
        extra = {"cache_implementation": "static"} if decode.static_cache else {}
        return generate(self.llm, self.tokenizer, self.prompt, speech, speech_lens, limits, num_beams=decode.num_beams,
                        hotwords=hotwords, **extra)
