"""GRPO's two passes over the LLM: sampling groups of hypotheses, and the log-probs of given hypotheses.

Sampling goes through the decoding code path (`prompt.build_generation_inputs` + Hugging Face `generate` with
its KV cache), so a rollout sees the prompt that evaluation decodes with. Scoring lays each hypothesis out the
way training does (`prompt._splice`, right-padded, as `build_train_inputs`) and reads the log-prob of exactly
the sampled token ids (never re-tokenized text: a decode/encode round trip can change the ids), with the
output layer applied only at those positions.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_asr.errors import UserError
from entropy_asr.model.grpo import token_logprobs
from entropy_asr.model.prompt import Embed, SpeechPrompt, _splice, build_generation_inputs


@torch.no_grad()
def sample_hypotheses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: SpeechPrompt,
                      speech: Tensor, speech_lens: Tensor, max_new_tokens: list[int], group_size: int,
                      temperature: float, hotwords: list[list[str] | None] | None = None,
                      **kw) -> list[list[list[int]]]:
    """G = group_size token-id sequences sampled for each of B utterances: [b][g] -> ids.

    Plain sampling from softmax(logits / temperature) (no top-k / top-p), KV cache on. Each sequence is cut at
    its utterance's limit (max_new_tokens[b]) and ends with the EOS id if it ended (the update then also learns
    to stop), without padding. hotwords: per utterance, a hotword list for its prompt (as prompt.generate). The
    caller puts the model in eval mode. `kw` goes to `model.generate` (e.g.
    synced_gpus under FSDP). `tokenizer` is taken as `prompt.generate` takes it; the ids are returned undecoded
    (hypothesis_texts decodes them).
    """
    B = speech.shape[0]
    limits = list(max_new_tokens)
    if len(limits) != B or min(limits, default=1) < 1:
        raise UserError(f"max_new_tokens must be one positive int per utterance (B={B}), got {max_new_tokens}")
    if group_size < 1 or not temperature > 0:
        raise UserError(f"sampling needs group_size >= 1 and temperature > 0, got {group_size} and {temperature}")
    inputs = build_generation_inputs(prompt=prompt, embed=model.get_input_embeddings(), speech=speech,
                                     speech_lens=speech_lens, hotwords=hotwords)
    options = {"max_new_tokens": max(limits), "do_sample": True, "temperature": float(temperature), "top_k": 0,
               "top_p": 1.0, "num_beams": 1, "num_return_sequences": group_size, "use_cache": True,
               "eos_token_id": prompt.eos_id, "pad_token_id": prompt.pad_id}
    options.update(kw)
    out = model.generate(**inputs, **options)  # (B*G, <= max(limits)): rows b*G .. b*G+G-1 are utterance b's
    rows = (out.sequences if hasattr(out, "sequences") else out).tolist()
    groups = []
    for b, limit in enumerate(limits):
        group = []
        for row in rows[b * group_size:(b + 1) * group_size]:
            row = row[:limit]
            if prompt.eos_id in row:  # through the first EOS; what follows is padding
                row = row[:row.index(prompt.eos_id) + 1]
            group.append(row)
        groups.append(group)
    return groups


def hypothesis_texts(tokenizer: PreTrainedTokenizerBase, prompt: SpeechPrompt,
                     groups: list[list[list[int]]]) -> list[list[str]]:
    """The transcripts of sampled id sequences, decoded as `prompt.generate_ended` decodes (EOS dropped)."""
    def text(ids: list[int]) -> str:
        ids = ids[:-1] if ids and ids[-1] == prompt.eos_id else ids
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    return [[text(ids) for ids in group] for group in groups]


def _chunk_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, tokens: Tensor,
                    temperature: float) -> Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias)  # (n, V): the only logits alive
    return token_logprobs(logits, tokens, temperature)


def sequence_logprobs(model: PreTrainedModel, prompt: SpeechPrompt, embed: Embed, speech: Tensor,
                      speech_lens: Tensor, token_ids: list[list[int]], temperature: float,
                      chunk: int = 4096, hotwords: list[list[str] | None] | None = None) -> tuple[Tensor, Tensor]:
    """Teacher-forced log pi(token) of N given id sequences after their speech: (logp (N, L), mask (N, L)).

    logp (float32) holds sequence i's token log-probs in its first len(token_ids[i]) columns and 0 after
    them, where mask is False; L is the longest sequence. speech (B, S, H) with N = B * G rows repeated G times
    each (sequences grouped per utterance, as sample_hypotheses returns them flattened), or already N rows;
    hotwords, if given, one list per speech row (repeated with it): the prompts the sequences were sampled after.
    Differentiable when grad is enabled. The output layer sees only the scored positions, `chunk` at a time
    (each chunk recomputed in the backward, as entropy_asr.model.losses does): (chunk, V) logits at most,
    not (N, L_prompt + L, V).
    """
    N, B = len(token_ids), speech.shape[0]
    if N == 0 or N % B:
        raise ValueError(f"got {N} sequences for {B} speech rows; give B * G sequences, grouped per utterance")
    if min(len(t) for t in token_ids) < 1:
        raise ValueError("every sequence needs at least one token (a sampled one holds at least its EOS)")
    if hotwords is not None and len(hotwords) != B:
        raise ValueError(f"got {len(hotwords)} hotword lists for {B} speech rows")
    if N != B:
        speech = speech.repeat_interleave(N // B, dim=0)  # (N, S, H)
        speech_lens = torch.as_tensor(speech_lens).repeat_interleave(N // B)
        hotwords = [h for h in hotwords for _ in range(N // B)] if hotwords is not None else None
    out = _splice(prompt=prompt, embed=embed, speech=speech, speech_lens=speech_lens, targets=token_ids,
                  left_pad=False, contexts=prompt.contexts_ids(hotwords, N))
    is_text, ids = out.pop("is_text"), out.pop("ids")
    hidden = model.get_decoder()(**out).last_hidden_state  # (N, P, H): no (N, P, V) logits
    scored = is_text[:, 1:]  # (N, P-1): the token at t is predicted from position t-1
    h, y = hidden[:, :-1][scored], ids[:, 1:][scored]  # (n, H), (n,): row by row, each row's tokens in order
    head = model.get_output_embeddings()
    parts = []
    for i in range(0, y.numel(), chunk):
        args = (h[i:i + chunk], head.weight, head.bias, y[i:i + chunk], temperature)
        parts.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False) if torch.is_grad_enabled()
                     else _chunk_logprobs(*args))
    lens = torch.tensor([len(t) for t in token_ids], device=hidden.device)  # (N,)
    mask = torch.arange(int(lens.max()), device=hidden.device)[None, :] < lens[:, None]  # (N, L)
    logp = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device).masked_scatter(mask, torch.cat(parts))
    return logp, mask
