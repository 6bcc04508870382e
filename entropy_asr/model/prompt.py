"""The chat prompt around the speech embeddings: training inputs, generation inputs, decoding, scoring.

Each sample is laid out as (docs/method.md, "Prompt")

    [prefix ids][context ids][speech embeddings][suffix ids][transcript ids][<|im_end|>]

where prefix/suffix are the chat template rendered for [system, user] with the generation
prompt, split at the user's `<speech>` placeholder, and the context ids (context biasing, empty
without hotwords) are the sample's hotword list rendered with the prompt's context template, just
before the audio. Loss and scores cover only the transcript and its EOS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_asr.errors import UserError
from entropy_asr.model.tokenizer import IM_END, SPEECH_TOKEN, speech_token_id

DEFAULT_SYSTEM = "You are a Multilingual Speech Recognition Model."
DEFAULT_USER = f"Transcribe the speech into text {SPEECH_TOKEN}"
DEFAULT_CONTEXT = "Hotwords: {hotwords}\n"  # a sample's hotword list, rendered just before the speech
HOTWORD_SEPARATOR = ", "
IGNORE_INDEX = -100  # the label Hugging Face's causal-LM loss skips

Embed = Callable[[torch.Tensor], torch.Tensor]  # ids (..., L) -> embeddings (..., L, H)


class SpeechPrompt:
    """The rendered chat prompt, split into the token ids before and after `<speech>`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, system: str | None = DEFAULT_SYSTEM,
                 user: str = DEFAULT_USER, context: str = DEFAULT_CONTEXT):
        if context.count("{hotwords}") != 1:
            raise UserError(f"prompt.context must contain {{hotwords}} exactly once (where the hotword list goes), "
                            f"got {context!r}")
        self.tokenizer = tokenizer
        self.context = context
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        # enable_thinking=False: Qwen3's template then closes the assistant header with an empty
        # "<think>\n\n</think>\n\n" block, identical in training and decoding; other templates ignore it.
        self.text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=False)
        ids = tokenizer.encode(self.text, add_special_tokens=False)
        speech_id = speech_token_id(tokenizer)
        if ids.count(speech_id) != 1:
            raise UserError(f"SpeechPrompt: the rendered prompt must contain {SPEECH_TOKEN} exactly once, found it "
                            f"{ids.count(speech_id)} times in {self.text!r}; put one {SPEECH_TOKEN} in the user prompt")
        k = ids.index(speech_id)
        self.prefix_ids: list[int] = ids[:k]
        self.suffix_ids: list[int] = ids[k + 1:]  # through the assistant header
        # <|im_end|> closes the assistant turn in ChatML even where the tokenizer's eos is another token.
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        self.eos_id: int = im_end if im_end is not None and im_end != tokenizer.unk_token_id else tokenizer.eos_token_id
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._special_ids = set(tokenizer.all_special_ids) | {speech_id}  # no hotword may hold one

    def context_ids(self, hotwords: Sequence[str] | None) -> list[int]:
        """The ids of one sample's hotword list in the context template; [] without hotwords (the prompt is then
        exactly the one without a context section)."""
        if isinstance(hotwords, str):
            raise UserError(f"hotwords must be a list of phrases, not one string ({hotwords!r})")
        odd = [w for w in hotwords or () if not isinstance(w, str)]
        if odd:
            raise UserError(f"hotwords must be strings, got {odd[0]!r} ({type(odd[0]).__name__}) in {list(hotwords)!r}")
        words = [w.strip() for w in hotwords or () if w and w.strip()]
        if not words:
            return []
        text = self.context.replace("{hotwords}", HOTWORD_SEPARATOR.join(words))
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        special = self._special_ids
        # only a list whose text holds a special id can hold a word that does (the template may hold one itself)
        bad = [w for w in words if special & set(self.tokenizer.encode(w, add_special_tokens=False))] \
            if special.intersection(ids) else []
        if bad:
            raise UserError(f"hotword {bad[0]!r} contains a special token of the tokenizer (e.g. {SPEECH_TOKEN} or "
                            f"<|im_end|>); remove it from the hotword list")
        return ids

    def contexts_ids(self, hotwords: Sequence[Sequence[str] | None] | None, batch: int) -> list[list[int]] | None:
        """context_ids per sample of a batch of `batch` (None: no sample has a context)."""
        if hotwords is None:
            return None
        if len(hotwords) != batch:
            raise ValueError(f"got {len(hotwords)} hotword lists for a batch of {batch}")
        ids = [self.context_ids(h) for h in hotwords]
        return ids if any(ids) else None

    def transcript_ids(self, text: str) -> list[int]:
        """The target ids of one transcript: its tokens followed by the EOS."""
        return self.tokenizer.encode(text, add_special_tokens=False) + [self.eos_id]


def _splice(prompt: SpeechPrompt, embed: Embed, speech: torch.Tensor, speech_lens: torch.Tensor,
            targets: list[list[int]] | None, left_pad: bool, contexts: list[list[int]] | None = None) -> dict:
    """Lay out [prefix][context][speech][suffix][targets] per sample, padded on one side, with one embedding lookup.

    contexts: per sample, the context ids (SpeechPrompt.context_ids; [] for none); None: no sample has one.
    """
    if speech.dim() != 3:
        raise ValueError(f"speech must be (B, N, H), got {tuple(speech.shape)}")
    B, S = speech.shape[0], len(prompt.suffix_ids)
    device = speech.device
    if contexts is not None and len(contexts) != B:
        raise ValueError(f"got {len(contexts)} contexts for a batch of {B} speech sequences")
    rows = [prompt.prefix_ids + list(c) + prompt.suffix_ids for c in (contexts or [[]] * B)]
    width = max(len(r) for r in rows) if rows else len(prompt.prefix_ids) + S
    template = torch.full((B, max(1, width)), prompt.pad_id)  # (B, W): each sample's prefix + context + suffix
    for b, r in enumerate(rows):
        template[b, :len(r)] = torch.tensor(r, dtype=torch.long)
    template = template.to(device)
    P = torch.tensor([len(r) - S for r in rows], dtype=torch.long, device=device)[:, None]  # (B, 1): before speech
    n = torch.as_tensor(speech_lens).to(device=device, dtype=torch.long)  # (B,)
    if n.shape != (B,) or (n < 0).any() or (n > speech.shape[1]).any():
        raise ValueError(f"speech_lens must be (B={B},) with values in [0, N={speech.shape[1]}], got {n.tolist()}")
    if targets is not None and len(targets) != B:
        raise ValueError(f"got {len(targets)} transcripts for a batch of {B} speech sequences")
    targets = targets if targets is not None else [[] for _ in range(B)]
    T = torch.tensor([len(t) for t in targets], device=device)  # (B,)
    text = torch.full((B, max(1, int(T.max()))), prompt.pad_id)  # (B, Tmax), filled on the CPU, copied once
    for b, t in enumerate(targets):
        text[b, :len(t)] = torch.tensor(t, dtype=torch.long)
    text = text.to(device)

    total = P[:, 0] + n + S + T  # (B,) real tokens per sample
    L = int(total.max())
    pos = torch.arange(L, device=device)[None, :]  # (1, L)
    shift = (L - total)[:, None] if left_pad else torch.zeros(B, 1, dtype=torch.long, device=device)
    q = pos - shift  # (B, L): position within the sample's own sequence; < 0 on left padding
    speech_end = P + n[:, None]  # (B, 1)
    text_start = speech_end + S
    is_real = (q >= 0) & (q < total[:, None])
    is_speech = (q >= P) & (q < speech_end)
    is_text = is_real & (q >= text_start)
    is_template = is_real & ~is_speech & ~is_text

    # prefix + context, then the suffix past the speech
    template_idx = torch.where(q < P, q, q - n[:, None]).clamp(0, template.shape[1] - 1)
    ids = torch.where(is_template, template.gather(1, template_idx), prompt.pad_id)
    ids = torch.where(is_text, text.gather(1, (q - text_start).clamp(0, text.shape[1] - 1)), ids)  # (B, L)
    embeds = embed(ids)  # (B, L, H): one lookup for the whole batch; speech slots hold pad rows until replaced
    if speech.shape[1] > 0:  # N = 0: the audio removed, nothing to place
        if speech.shape[-1] != embeds.shape[-1]:
            raise UserError(f"speech has width {speech.shape[-1]} but the LLM embeddings have {embeds.shape[-1]}")
        speech_idx = (q - P).clamp(0, speech.shape[1] - 1)[..., None].expand(-1, -1, embeds.shape[-1])
        placed = speech.to(embeds.dtype).gather(1, speech_idx)  # (B, L, H): speech row q-P at each position
        embeds = torch.where(is_speech[..., None], placed, embeds)
    return {"inputs_embeds": embeds, "attention_mask": is_real.long(), "position_ids": torch.where(is_real, q, 0),
            "ids": ids, "is_text": is_text}


def build_train_inputs(prompt: SpeechPrompt, embed: Embed, speech: torch.Tensor, speech_lens: torch.Tensor,
                       transcripts: list[str], hotwords: Sequence[Sequence[str] | None] | None = None,
                       ) -> dict[str, torch.Tensor]:
    """Right-padded LLM inputs, labels on the transcript tokens + EOS only; keys fit the HF model's forward.

    speech (B, N, H) with speech_lens (B,) valid rows each; N = 0 gives the prompt without audio.
    hotwords: per sample, its hotword list (None or [] for none): the prompt's context section.
    """
    targets = [prompt.transcript_ids(t) for t in transcripts]
    out = _splice(prompt, embed, speech, speech_lens, targets, left_pad=False,
                  contexts=prompt.contexts_ids(hotwords, len(transcripts)))
    labels = torch.where(out.pop("is_text"), out.pop("ids"), IGNORE_INDEX)  # (B, L)
    return {**out, "labels": labels}


def build_generation_inputs(prompt: SpeechPrompt, embed: Embed, speech: torch.Tensor, speech_lens: torch.Tensor,
                            hotwords: Sequence[Sequence[str] | None] | None = None) -> dict[str, torch.Tensor]:
    """Left-padded prompt embeddings + attention mask, ready for `model.generate` (hotwords: as build_train_inputs)."""
    out = _splice(prompt, embed, speech, speech_lens, None, left_pad=True,
                  contexts=prompt.contexts_ids(hotwords, speech.shape[0]))
    # position_ids are left out: generate derives them from the attention mask (cumsum - 1),
    # which equals ours, and extends them itself for each new token.
    return {"inputs_embeds": out["inputs_embeds"], "attention_mask": out["attention_mask"]}


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: SpeechPrompt, speech: torch.Tensor,
             speech_lens: torch.Tensor, max_new_tokens: list[int] | int, num_beams: int = 1,
             hotwords: Sequence[Sequence[str] | None] | None = None, **kw) -> list[str]:
    """Decode transcripts for a batch of speech embeddings (greedy, or beam search if num_beams > 1).

    The caller puts the model in eval mode (dropout would make greedy decoding random).
    hotwords: per sample, a hotword list for the prompt's context section (a context-SFT model).
    `kw` goes to `model.generate` and may override the defaults below.
    """
    return [text for text, _ in generate_ended(model, tokenizer, prompt, speech, speech_lens, max_new_tokens,
                                               num_beams, hotwords=hotwords, **kw)]


def generate_ended(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: SpeechPrompt,
                   speech: torch.Tensor, speech_lens: torch.Tensor, max_new_tokens: list[int] | int,
                   num_beams: int = 1, hotwords: Sequence[Sequence[str] | None] | None = None,
                   **kw) -> list[tuple[str, bool]]:
    """As `generate`, with whether each transcript ended with the end-of-turn token (False: it was cut by its
    token limit or by a stopping criterion in `kw`)."""
    B = speech.shape[0]
    limits = [max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != B or min(limits) < 1:
        raise UserError(f"max_new_tokens must be a positive int or one per sample (B={B}), got {max_new_tokens}")
    inputs = build_generation_inputs(prompt, model.get_input_embeddings(), speech, speech_lens, hotwords)
    options = {"max_new_tokens": max(limits), "num_beams": num_beams, "do_sample": False,
               "eos_token_id": prompt.eos_id, "pad_token_id": prompt.pad_id}
    options.update(kw)
    # (B, <= max(limits)): given only inputs_embeds, generate returns just the new tokens
    out = model.generate(**inputs, **options)
    sequences = out.sequences if hasattr(out, "sequences") else out  # return_dict_in_generate=True in kw
    texts = []
    for row, limit in zip(sequences.tolist(), limits):
        row = row[:limit]
        ended = prompt.eos_id in row
        if ended:
            row = row[:row.index(prompt.eos_id)]
        texts.append((tokenizer.decode(row, skip_special_tokens=True).strip(), ended))
    return texts


def max_new_tokens_for(durations_s: list[float], tokens_per_second: float = 8.0, floor: int = 8) -> list[int]:
    """A per-utterance decoding budget proportional to the audio length.

    Fast read speech carries ~4-5 Chinese characters or ~3 English words per second; Qwen's BPE
    spends ~1 token per common character and ~1.3 per word, so a real transcript needs at most
    ~5 tokens/s. 8 tokens/s leaves room for rare words and for the smaller BPE trained here, while
    a hallucination loop is still cut at a length the audio can justify. `floor` covers very
    short clips, where one word may take several tokens.
    """
    return [max(floor, math.ceil(d * tokens_per_second)) for d in durations_s]


@torch.no_grad()
def transcript_scores(model: PreTrainedModel, prompt: SpeechPrompt, embed: Embed, speech: torch.Tensor | None,
                      speech_lens: torch.Tensor | None, transcripts: list[str]) -> dict[str, torch.Tensor]:
    """Per transcript (B,): summed NLL in nats of its tokens + EOS, summed predictive entropy in nats
    at those positions, and the number of scored tokens; speech None = the audio removed.

    For docs/method.md's LLM-side accessible information: H0 (speech None) and H1 (with speech), each
    divided by ln 2 and the characters of the transcript, give bits per character; I = H0 - H1.
    Logits are (B, L, V): score large vocabularies in modest batches.
    """
    if speech is None:
        weight = model.get_input_embeddings().weight
        speech = weight.new_zeros(len(transcripts), 0, weight.shape[1])  # (B, 0, H): zero speech positions
        speech_lens = torch.zeros(len(transcripts), dtype=torch.long, device=weight.device)
    batch = build_train_inputs(prompt, embed, speech, speech_lens, transcripts)
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits  # (B, L, V)
    targets = labels[:, 1:]  # (B, L-1): the token at t is predicted from position t-1
    scored = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1][scored].float(), dim=-1)  # (n, V): only the scored rows, in float32
    nll = -logp.gather(1, targets[scored][:, None])[:, 0]  # (n,)
    entropy = -(logp.exp() * logp).sum(-1)  # (n,): H of the next-token distribution

    def per_sample(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(targets.shape, dtype=v.dtype, device=v.device).masked_scatter(scored, v).sum(1)

    return {"nll": per_sample(nll), "entropy": per_sample(entropy), "tokens": scored.sum(1)}
