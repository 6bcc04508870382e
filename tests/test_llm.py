"""LLM side: the trained BPE tokenizer, the tiny Qwen3, the speech prompt layout, generation and scoring."""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub

from transformers import AutoTokenizer

from entropy_asr.model.llm import LLMConfig, build_llm, llm_embed
from entropy_asr.model.prompt import (
    IGNORE_INDEX,
    SpeechPrompt,
    build_generation_inputs,
    build_train_inputs,
    generate,
    max_new_tokens_for,
    transcript_scores,
)
from entropy_asr.model.tokenizer import (
    IM_END,
    PAD_TOKEN,
    SPEECH_TOKEN,
    load_tokenizer,
    train_bpe_tokenizer,
)

ZH = ["今天", "天气", "很好", "我们", "一起", "去", "北京", "学习", "语音", "识别", "模型", "你好", "世界", "中文"]
EN = ["hello", "world", "speech", "model", "the", "cat", "sat", "on", "mat", "we", "go", "to", "school", "today"]
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 32, "intermediate_size": 128, "max_position_embeddings": 256}


def sentences(n: int, seed: int = 0) -> list[str]:
    """Short mixed Chinese/English sentences."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        zh = "".join(rng.choices(ZH, k=rng.randint(1, 3)))
        en = " ".join(rng.choices(EN, k=rng.randint(1, 3)))
        out.append(f"{zh} {en}" if rng.random() < 0.5 else f"{en} {zh}")
    return out


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llm") / "tokenizer"
    train_bpe_tokenizer(sentences(200), vocab_size=400, out_dir=path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    return load_tokenizer(str(tok_dir))


@pytest.fixture(scope="module")
def prompt(tokenizer):
    return SpeechPrompt(tokenizer)


def tiny_llm(tokenizer, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_llm(LLMConfig(tiny=dict(TINY), **overrides), tokenizer).eval()


def transcript_nll(model, prompt, embed, speech, speech_lens, transcripts) -> torch.Tensor:
    """(B,) summed NLL in nats of each transcript + EOS under the LLM (transcript_scores' "nll")."""
    return transcript_scores(model, prompt, embed, speech, speech_lens, transcripts)["nll"]


# ---- tokenizer -------------------------------------------------------------------------------------------------

def test_tokenizer_round_trips_through_auto_tokenizer(tok_dir, tokenizer):
    auto = AutoTokenizer.from_pretrained(tok_dir)
    assert auto.get_vocab() == tokenizer.get_vocab()
    assert (auto.eos_token, auto.pad_token) == (IM_END, PAD_TOKEN)
    assert len(auto) <= 400
    assert not any(p.name.startswith(".") for p in tok_dir.parent.iterdir())  # no temp dirs left behind
    text = "今天 hello world 北京"
    assert auto.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)


def test_speech_token_is_one_special_id(tokenizer):
    ids = tokenizer.encode(f"abc{SPEECH_TOKEN}def {SPEECH_TOKEN}", add_special_tokens=False)
    sid = tokenizer.convert_tokens_to_ids(SPEECH_TOKEN)
    assert ids.count(sid) == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == "abcdef "


@pytest.mark.parametrize("text", ["今天天气很好 hello world", "我们去 Beijing 学习语音识别!",
                                  "生僻字：龘靐 emoji 🙂 tab\tend"])
def test_byte_level_bpe_decodes_mixed_text_exactly(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_load_tokenizer_adds_speech_pad_and_template_to_a_plain_tokenizer(tmp_path):
    # Stands in for a hub tokenizer: no <speech>, no pad token, no chat template.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer, raw.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    raw.train_from_iterator(sentences(50), trainers.BpeTrainer(
        vocab_size=300, special_tokens=[PAD_TOKEN, IM_END], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=IM_END).save_pretrained(tmp_path / "plain")
    before = len(AutoTokenizer.from_pretrained(tmp_path / "plain"))
    tok = load_tokenizer(str(tmp_path / "plain"))
    assert len(tok) == before + 1  # the caller's cue to resize the embeddings (build_llm does)
    assert len(tok.encode(f"a{SPEECH_TOKEN}b", add_special_tokens=False)) == 3
    assert tok.pad_token == IM_END and tok.chat_template is not None
    p = SpeechPrompt(tok)
    assert p.prefix_ids and p.suffix_ids and p.eos_id == tok.convert_tokens_to_ids(IM_END)


def test_load_tokenizer_missing_path_names_it(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        load_tokenizer(str(missing))


# ---- prompt layout ---------------------------------------------------------------------------------------------

def test_prompt_splits_at_speech(tokenizer, prompt):
    prefix = tokenizer.decode(prompt.prefix_ids)
    suffix = tokenizer.decode(prompt.suffix_ids)
    assert prefix.startswith("<|im_start|>system\nYou are a Multilingual Speech Recognition Model.<|im_end|>")
    assert prefix.endswith("<|im_start|>user\nTranscribe the speech into text ")
    assert suffix == "<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="exactly once.*no placeholder"):
        SpeechPrompt(tokenizer, user="no placeholder")


def test_prompt_passes_enable_thinking_false(tokenizer):
    # Qwen3's template adds an empty think block when enable_thinking is false; a look-alike template checks it.
    qwen3_like = tokenizer.chat_template + "{%- if add_generation_prompt and enable_thinking is defined " \
                                           "and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}" \
                                          "{%- endif %}"
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = qwen3_like
        p = SpeechPrompt(tokenizer)
    finally:
        tokenizer.chat_template = original
    assert tokenizer.decode(p.suffix_ids).endswith("assistant\n<think>\n\n</think>\n\n")


def speech_batch(lens: list[int], width: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(lens), max(lens), width, generator=g), torch.tensor(lens)


def test_train_inputs_layout(tokenizer, prompt):
    embed = torch.nn.Embedding(len(tokenizer), 16)
    speech, lens = speech_batch([3, 5, 1], 16)
    texts = ["今天 hello", "world 北京学习", "go"]
    with torch.no_grad():
        out = build_train_inputs(prompt, embed, speech, lens, texts)
        x, mask, pos, labels = out["inputs_embeds"], out["attention_mask"], out["position_ids"], out["labels"]
        P, S = len(prompt.prefix_ids), len(prompt.suffix_ids)
        for b, text in enumerate(texts):
            n = int(lens[b])
            target = prompt.transcript_ids(text)
            real = P + n + S + len(target)
            assert torch.equal(x[b, :P], embed(torch.tensor(prompt.prefix_ids)))
            assert torch.equal(x[b, P:P + n], speech[b, :n])
            assert torch.equal(x[b, P + n:P + n + S], embed(torch.tensor(prompt.suffix_ids)))
            assert torch.equal(x[b, P + n + S:real], embed(torch.tensor(target)))
            assert mask[b].tolist() == [1] * real + [0] * (x.shape[1] - real)
            assert pos[b, :real].tolist() == list(range(real))
            kept = labels[b][labels[b] != IGNORE_INDEX].tolist()
            assert kept == target and kept[-1] == prompt.eos_id
            assert tokenizer.decode(kept, skip_special_tokens=True) == text
            assert (labels[b, real:] == IGNORE_INDEX).all() and (labels[b, :P + n + S] == IGNORE_INDEX).all()


def test_generation_inputs_are_left_padded(tokenizer, prompt):
    embed = torch.nn.Embedding(len(tokenizer), 16)
    speech, lens = speech_batch([4, 2], 16)
    with torch.no_grad():
        out = build_generation_inputs(prompt, embed, speech, lens)
        x, mask = out["inputs_embeds"], out["attention_mask"]
        P, S = len(prompt.prefix_ids), len(prompt.suffix_ids)
        assert x.shape[1] == P + 4 + S and mask[0].all()
        assert mask[1].tolist() == [0, 0] + [1] * (P + 2 + S)
        assert torch.equal(x[1, 2:2 + P], embed(torch.tensor(prompt.prefix_ids)))
        assert torch.equal(x[1, 2 + P:4 + P], speech[1, :2])
        assert torch.equal(x[:, -S:], embed(torch.tensor(prompt.suffix_ids)).expand(2, -1, -1))


def test_context_section_goes_before_the_speech_and_only_where_given(tokenizer, prompt):
    """Context biasing: a sample's hotword list, rendered with the context template, sits between the prefix and
    the speech; samples without one (None or []) are laid out exactly as without any context."""
    embed = torch.nn.Embedding(len(tokenizer), 16)
    speech, lens = speech_batch([3, 5, 2], 16)
    texts = ["今天 hello", "world 北京学习", "go"]
    hotwords = [["北京", "school"], None, []]
    ctx = prompt.context_ids(hotwords[0])
    assert tokenizer.decode(ctx) == "Hotwords: 北京, school\n"
    assert prompt.context_ids(None) == prompt.context_ids([]) == prompt.context_ids(["  ", ""]) == []
    with torch.no_grad():
        plain = build_train_inputs(prompt, embed, speech, lens, texts)
        assert all(torch.equal(plain[k], build_train_inputs(prompt, embed, speech, lens, texts, [None, [], []])[k])
                   for k in plain)  # no hotwords anywhere: unchanged
        out = build_train_inputs(prompt, embed, speech, lens, texts, hotwords)
        P, S, C = len(prompt.prefix_ids), len(prompt.suffix_ids), len(ctx)
        x, labels = out["inputs_embeds"], out["labels"]
        n = int(lens[0])
        assert torch.equal(x[0, :P + C], embed(torch.tensor(prompt.prefix_ids + ctx)))
        assert torch.equal(x[0, P + C:P + C + n], speech[0, :n])
        assert torch.equal(x[0, P + C + n:P + C + n + S], embed(torch.tensor(prompt.suffix_ids)))
        assert labels[0][labels[0] != IGNORE_INDEX].tolist() == prompt.transcript_ids(texts[0])
        assert (labels[0, :P + C + n + S] == IGNORE_INDEX).all()  # the hotwords are never a target
        for b in (1, 2):  # the others: as laid out without any context (up to the wider batch's padding)
            real = int(plain["attention_mask"][b].sum())
            assert torch.equal(x[b, :real], plain["inputs_embeds"][b, :real])
            assert torch.equal(labels[b, :real], plain["labels"][b, :real])
        gen = build_generation_inputs(prompt, embed, speech, lens, hotwords)
        width = gen["inputs_embeds"].shape[1]
        assert width == max(P + C + n + S, P + 5 + S)  # the longest sample, context included
        pad = width - (P + C + n + S)
        assert gen["attention_mask"][0].tolist() == [0] * pad + [1] * (P + C + n + S)
        assert torch.equal(gen["inputs_embeds"][0, pad:pad + P + C], embed(torch.tensor(prompt.prefix_ids + ctx)))
        assert gen["attention_mask"][1].tolist() == [0] * (width - P - 5 - S) + [1] * (P + 5 + S)


def test_generation_with_hotwords_batched_matches_alone(tokenizer, prompt):
    model = tiny_llm(tokenizer, seed=2)
    speech, lens = speech_batch([4, 2, 3], model.config.hidden_size, seed=5)
    hotwords = [["北京", "school"], None, ["hello world"]]
    options = {"min_new_tokens": 5}  # EOS suppressed: the comparison is never trivially empty
    batched = generate(model, tokenizer, prompt, speech, lens, max_new_tokens=5, hotwords=hotwords, **options)
    for b in range(3):
        alone = generate(model, tokenizer, prompt, speech[b:b + 1, :lens[b]], lens[b:b + 1], max_new_tokens=5,
                         hotwords=[hotwords[b]], **options)
        assert batched[b] == alone[0]
    # the context reaches the model: a sample decoded with and without its list differs in its logits
    embed = model.get_input_embeddings()
    with torch.no_grad():
        a = build_generation_inputs(prompt, embed, speech[:1], lens[:1], [hotwords[0]])
        b = build_generation_inputs(prompt, embed, speech[:1], lens[:1])
        assert not torch.allclose(model(**a).logits[0, -1], model(**b).logits[0, -1])


def test_context_errors_name_the_fix(tokenizer, prompt):
    with pytest.raises(Exception, match=r"prompt.context must contain \{hotwords\}"):
        SpeechPrompt(tokenizer, context="Hotwords: ")
    with pytest.raises(Exception, match="not one string"):
        prompt.context_ids("北京")
    with pytest.raises(Exception, match="special token"):
        prompt.context_ids([f"a{SPEECH_TOKEN}b"])
    with pytest.raises(Exception, match="hotwords must be strings, got 7"):
        prompt.context_ids(["北京", 7])
    embed = torch.nn.Embedding(len(tokenizer), 16)
    speech, lens = speech_batch([2, 2], 16)
    with pytest.raises(ValueError, match="2 hotword lists|1 hotword lists"):
        build_train_inputs(prompt, embed, speech, lens, ["a", "b"], [["x"]])


# ---- model, generation, scoring --------------------------------------------------------------------------------

def test_generate_batched_matches_single_and_beam_runs(tokenizer, prompt):
    model = tiny_llm(tokenizer, seed=1)
    H = model.config.hidden_size
    speech, lens = speech_batch([6, 2, 4], H, seed=3)
    embed = model.get_input_embeddings()

    def ids(s, n):  # 6 new tokens, EOS suppressed so the comparison is never trivially empty
        gen = build_generation_inputs(prompt, embed, s, n)
        return model.generate(**gen, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                              eos_token_id=prompt.eos_id, pad_token_id=prompt.pad_id)

    batched = ids(speech, lens)
    assert batched.shape == (3, 6)  # only the new tokens come back
    for b in range(3):
        alone = ids(speech[b:b + 1, :lens[b]], lens[b:b + 1])
        assert batched[b].tolist() == alone[0].tolist()

    greedy = generate(model, tokenizer, prompt, speech, lens, max_new_tokens=[5, 3, 8])
    assert isinstance(greedy, list) and len(greedy) == 3 and all(isinstance(t, str) for t in greedy)
    beam = generate(model, tokenizer, prompt, speech, lens, max_new_tokens=5, num_beams=3)
    assert len(beam) == 3 and all(isinstance(t, str) for t in beam)
    # the static KV cache (DecodeConfig.static_cache, the fast GPU path) decodes the same tokens
    static = generate(model, tokenizer, prompt, speech, lens, max_new_tokens=[5, 3, 8], cache_implementation="static")
    assert static == greedy


def test_training_on_one_sample_reproduces_it(tokenizer, prompt):
    """Proves the label alignment end to end: learn one (speech, transcript) pair, then decode it."""
    model = tiny_llm(tokenizer, seed=0).train()
    H = model.config.hidden_size
    speech, lens = speech_batch([5], H, seed=5)
    text = "今天天气很好 hello world"
    nll_before = transcript_nll(model, prompt, model.get_input_embeddings(), speech, lens, [text])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(20):  # 5 suffice at this lr; 20 leave a margin
        batch = build_train_inputs(prompt, lambda i: llm_embed(model, i), speech, lens, [text])
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert generate(model, tokenizer, prompt, speech, lens, max_new_tokens=32) == [text]
    nll_with = transcript_nll(model, prompt, model.get_input_embeddings(), speech, lens, [text])
    nll_without = transcript_nll(model, prompt, model.get_input_embeddings(), None, None, [text])
    assert nll_with.shape == (1,) and float(nll_with) < 0.5 * float(nll_before)
    assert torch.isfinite(nll_without).all() and float(nll_without) != float(nll_with)  # the audio is used


def test_transcript_nll_equals_hf_loss(tokenizer, prompt):
    model = tiny_llm(tokenizer, seed=2)
    speech, lens = speech_batch([3, 5], model.config.hidden_size)
    texts = ["hello 北京", "we go to school"]
    nll = transcript_nll(model, prompt, model.get_input_embeddings(), speech, lens, texts)
    with torch.no_grad():
        for b in range(2):
            batch = build_train_inputs(prompt, model.get_input_embeddings(), speech[b:b + 1], lens[b:b + 1],
                                       texts[b:b + 1])
            mean = model(**batch).loss  # HF's mean over the scored tokens of one sample
            assert float(nll[b]) == pytest.approx(float(mean) * len(prompt.transcript_ids(texts[b])), rel=1e-4)
        # speech None = zero speech positions: the same as an empty (B, 0, H) speech tensor
        no_audio = transcript_nll(model, prompt, model.get_input_embeddings(), None, None, texts)
        empty = transcript_nll(model, prompt, model.get_input_embeddings(), speech[:, :0], torch.zeros(2), texts)
        assert torch.allclose(no_audio, empty) and not torch.allclose(no_audio, nll)


def test_transcript_scores_entropy_and_token_counts(tokenizer, prompt):
    model = tiny_llm(tokenizer, seed=3)
    speech, lens = speech_batch([3, 5], model.config.hidden_size)
    texts = ["hello 北京", "we go to school"]
    out = transcript_scores(model, prompt, model.get_input_embeddings(), speech, lens, texts)
    assert out["tokens"].tolist() == [len(prompt.transcript_ids(t)) for t in texts]  # tokens + EOS
    vocab = model.get_output_embeddings().weight.shape[0]
    # each scored position's entropy lies in [0, ln V]
    assert bool((out["entropy"] > 0).all()) and bool((out["entropy"] <= out["tokens"] * math.log(vocab) + 1e-3).all())


def test_lora_trains_only_lora_weights(tokenizer):
    model = tiny_llm(tokenizer, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert llm_embed(model, torch.tensor([[1, 2]])).shape == (1, 2, TINY["hidden_size"])
    speech, lens = speech_batch([3, 2], TINY["hidden_size"])
    assert len(generate(model, tokenizer, SpeechPrompt(tokenizer), speech, lens, max_new_tokens=3)) == 2


def test_tiny_model_sizes_follow_tokenizer(tokenizer):
    model = tiny_llm(tokenizer, gradient_checkpointing=True)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), TINY["hidden_size"])
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(IM_END)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("kwargs, field", [
    ({"dtype": "float64"}, "llm.dtype"),
    ({"tiny": {"hidden_sise": 64}}, "llm.tiny"),
    ({"tiny": {"num_attention_heads": 3, "num_key_value_heads": 2}}, "llm.tiny"),
    ({"tiny": {"vocab_size": 10}}, "llm.tiny.vocab_size"),
    ({"lora": {"rank": 4}}, "llm.lora"),
    ({"name_or_path": ""}, "llm.name_or_path"),
    ({"loss_chunk_tokens": 0}, "llm.loss_chunk_tokens"),
    ({"vocab_rows": 1000, "name_or_path": "Qwen/Qwen3-1.7B"}, "llm.vocab_rows"),
])
def test_llm_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        LLMConfig(**kwargs)


def test_max_new_tokens_follow_duration():
    assert max_new_tokens_for([0.2, 2.0, 10.0]) == [8, 16, 80]
    assert max_new_tokens_for([3.0], tokens_per_second=5.0, floor=4) == [15]


@pytest.mark.parametrize("chunk", [1, 3, 4096])
@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}])
def test_chunked_loss_equals_hf_loss_with_the_same_gradients(tokenizer, prompt, chunk, lora):
    from entropy_asr.model.losses import chunked_lm_loss

    model = tiny_llm(tokenizer, seed=4, lora=lora).train()
    speech, lens = speech_batch([3, 5], TINY["hidden_size"])
    texts = ["hello 北京", "we go to school"]
    batch = build_train_inputs(prompt, lambda ids: llm_embed(model, ids), speech, lens, texts)
    params = [p for p in model.parameters() if p.requires_grad]
    reference = model(**batch).loss  # full (B, L, V) logits
    want = torch.autograd.grad(reference, params)
    batch = build_train_inputs(prompt, lambda ids: llm_embed(model, ids), speech, lens, texts)  # a fresh graph
    labels = batch.pop("labels")
    hidden = model.get_decoder()(**batch).last_hidden_state
    head = model.get_output_embeddings()
    loss = chunked_lm_loss(hidden, head.weight, labels, head.bias, chunk=chunk)
    got = torch.autograd.grad(loss, params)
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)
    assert all(torch.allclose(g, w, atol=1e-6, rtol=1e-4) for g, w in zip(got, want, strict=True))
    none = torch.full_like(labels, -100)  # no label at all: zero, and the graph survives
    assert float(chunked_lm_loss(hidden, head.weight, none)) == 0.0
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_lm_loss(hidden, head.weight, labels, chunk=0)


def test_vocab_rows_pads_the_from_config_llm(tokenizer):
    model = tiny_llm(tokenizer, vocab_rows=len(tokenizer) + 100)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 100
    assert tiny_llm(tokenizer, vocab_rows=10).get_input_embeddings().weight.shape[0] == len(tokenizer)  # never fewer
