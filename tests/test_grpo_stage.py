"""The GRPO stage on a tiny model: rollouts through the decoding path, teacher-forced log-probs against a manual
forward, the step's wiring (rewards -> advantages, KL 0 at the start, what a step changes), resume and export."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import LogitsProcessorList

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from entropy_asr.errors import UserError, user_error_of
from entropy_asr.inference.recognizer import Recognizer
from entropy_asr.metrics.error_rate import score_units
from entropy_asr.model.encoder import EncoderConfig
from entropy_asr.model.grpo import GRPOConfig, RewardConfig
from entropy_asr.model.llm import LLMConfig, llm_embed
from entropy_asr.model.prompt import generate
from entropy_asr.model.rollout import hypothesis_texts, sample_hypotheses, sequence_logprobs
from entropy_asr.model.speech_llm import AdapterConfig
from experiments import evaluate
from experiments.run import build_cli, run
from lightning_modules.base import OptimConfig
from lightning_modules.grpo import GRPO
from lightning_modules.sft import DistillConfig
from tests.stage_helpers import ENC, TINY, common, utterances


def build(exports, **kw) -> GRPO:
    args = {"encoder": EncoderConfig(**ENC), "adapter": AdapterConfig(), "grpo": GRPOConfig(group_size=4),
            "llm": LLMConfig(name_or_path=str(exports["llm"])), **kw}
    m = GRPO(**args)
    m.configure_model()
    return m


def stub_trainer(**kw) -> SimpleNamespace:
    """What the module reads from its trainer outside a fit."""
    return SimpleNamespace(**{"world_size": 1, "global_rank": 0, "global_step": 0, "is_global_zero": True,
                              "max_steps": 10, "estimated_stepping_batches": 10, "strategy": None, **kw})


def speech_of(m: GRPO, B: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = m.net.llm.get_input_embeddings().embedding_dim
    return torch.randn(B, 6, width, generator=g), torch.tensor([6, 4, 1][:B])


# ---- (a) sampling ----

def test_sample_hypotheses_groups_limits_eos_and_greedy_at_low_temperature(exports):
    m = build(exports)
    llm, prompt, eos = m.net.llm.eval(), m.net.prompt, m.net.prompt.eos_id
    speech, lens = speech_of(m, 3)
    limits = [4, 9, 30]
    def more_eos(input_ids, scores):  # (kw reach generate) EOS made likelier: many sequences end, padded after it
        return scores + 3.0 * (torch.arange(scores.shape[-1]) == eos)

    torch.manual_seed(0)
    groups = sample_hypotheses(llm, m.net.tokenizer, prompt, speech, lens, limits, group_size=5, temperature=1.0,
                               logits_processor=LogitsProcessorList([more_eos]))
    assert [len(g) for g in groups] == [5, 5, 5]
    for group, limit in zip(groups, limits):
        for ids in group:
            assert 1 <= len(ids) <= limit
            assert eos not in ids[:-1]  # EOS only at the end, nothing (no padding) after it
            assert ids[-1] == eos or len(ids) == limit  # without EOS only when cut at the limit
    ended = [ids[-1] == eos for group in groups for ids in group]
    assert any(ended) and not all(ended)  # (the seed makes both cases occur)
    assert len({len(ids) for ids in groups[2]}) > 1  # each sequence cut at its own EOS
    assert len({tuple(ids) for ids in groups[2]}) > 1  # sampled: the group differs
    # a vanishing temperature samples the argmax: greedy decoding, the same for the whole group
    torch.manual_seed(1)
    cold = sample_hypotheses(llm, m.net.tokenizer, prompt, speech, lens, limits, group_size=3, temperature=1e-5)
    greedy = generate(llm, m.net.tokenizer, prompt, speech, lens, limits)
    assert hypothesis_texts(m.net.tokenizer, prompt, cold) == [[text] * 3 for text in greedy]
    assert all(len({tuple(ids) for ids in group}) == 1 for group in cold)


# ---- (b) teacher-forced log-probs ----

def test_sequence_logprobs_equal_a_manual_forward(exports):
    m = build(exports)
    llm, prompt, eos = m.net.llm.eval(), m.net.prompt, m.net.prompt.eos_id
    speech, lens = speech_of(m, 2)
    seqs = [[5, 9, eos], [7], [11, 12, 13, 14], [eos]]  # two per utterance, grouped per utterance
    T = 0.7
    embed = lambda ids: llm_embed(llm, ids)
    with torch.no_grad():
        logp, mask = sequence_logprobs(llm, prompt, embed, speech, lens, seqs, T, chunk=3)  # chunks split rows
    assert logp.shape == mask.shape == (4, 4)
    assert mask.tolist() == [[True] * 3 + [False], [True] + [False] * 3, [True] * 4, [True] + [False] * 3]
    assert (logp[~mask] == 0).all()
    for i, seq in enumerate(seqs):  # one unpadded sequence at a time: [prefix][speech][suffix][seq]
        b = i // 2
        x = torch.cat([embed(torch.tensor(prompt.prefix_ids)), speech[b, :lens[b]],
                       embed(torch.tensor(prompt.suffix_ids)), embed(torch.tensor(seq))])[None]  # (1, L, H)
        with torch.no_grad():
            logits = llm(inputs_embeds=x).logits[0]  # (L, V)
        start = x.shape[1] - len(seq)  # the first target's position; logits at t - 1 predict it
        expected = torch.log_softmax(logits[start - 1:-1].float() / T, -1)[torch.arange(len(seq)), seq]
        torch.testing.assert_close(logp[i, :len(seq)], expected, rtol=1e-4, atol=1e-5)
    # with grad: the same values, and a gradient for the LLM
    grad_logp, _ = sequence_logprobs(llm, prompt, embed, speech, lens, seqs, T, chunk=3)
    torch.testing.assert_close(grad_logp, logp, rtol=1e-5, atol=1e-6)
    grad_logp.sum().backward()
    assert llm.get_input_embeddings().weight.grad.abs().sum() > 0


# ---- (c, d) the step ----

def _batch(B: int = 2) -> dict:
    g = torch.Generator().manual_seed(3)
    return {"feats": torch.randn(B, 200, 80, generator=g), "feat_lens": torch.tensor([200, 150][:B]),
            "durations": torch.tensor([2.0, 1.5][:B]), "text": ["你好", "hello"][:B], "language": ["zh", "en"][:B]}


def _pick(texts: list[str]) -> int:
    """A hypothesis whose text is scorable and unique in its group."""
    return next(g for g, t in enumerate(texts) if score_units(t, "mix") and texts.count(t) == 1)


def test_the_reference_a_batch_names_gets_the_highest_advantage_and_a_step_trains_the_llm_only(exports):
    m = build(exports, optim=OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=0.0))
    m.trainer = stub_trainer()
    logged = {}
    m.log = lambda key, value, **kw: logged.__setitem__(key, float(value))
    m.train()
    batch = _batch()
    with torch.no_grad():
        speech, lens = m.net.speech_embeddings(batch["feats"], batch["feat_lens"])
    torch.manual_seed(0)
    first = m.rollout(batch, speech, lens)
    # (d) the references become one sampled hypothesis each: the same draws (same seed) score it 1, the best
    picked = [_pick(texts) for texts in first.texts]
    batch = {**batch, "text": [texts[g] for texts, g in zip(first.texts, picked)], "language": ["mix", "mix"]}
    torch.manual_seed(0)
    again = m.rollout(batch, speech, lens)
    assert again.ids == first.ids
    for b, g in enumerate(picked):
        assert again.rewards[b, g] == 1.0 and (again.rewards[b] < 1.0).sum() >= 1
        others = torch.cat([again.advantages[b, :g], again.advantages[b, g + 1:]])
        assert again.advantages[b, g] > others.max()

    # hotword lists in the batch reach the context term: a word of each picked hypothesis, named present
    m.reward = RewardConfig(context_weight=1.0)
    present = [[score_units(text, "mix")[0]] for text in batch["text"]]
    torch.manual_seed(0)
    hot = m.rollout({**batch, "hotwords_present": present, "hotwords_absent": [[], []]}, speech, lens)
    assert hot.ids == first.ids and hot.means["context"] > 0 and again.means["context"] == 0
    m.reward = RewardConfig()

    # (c) the step from the same draws: at the start the policy is the reference (KL 0), the loss is ~0
    assert m.reference is None  # (a fit makes it in configure_model; outside one, the first step does)
    torch.manual_seed(0)
    loss = m.model_step(batch)
    assert m.reference is not None and not m.reference.training
    start = {n: p.detach().clone() for n, p in m.named_parameters()}
    assert logged["grpo/kl"] < 1e-6 and abs(loss.item()) < 1e-5  # advantages average to 0 in each group
    assert logged["grpo/reward"] == pytest.approx(again.means["total"])
    assert logged["grpo/temperature"] == 1.0 and logged["grpo/clip_fraction"] == 0.0
    assert {"grpo/reward_accuracy", "grpo/hyp_len", "grpo/flat_groups"} <= set(logged)
    opt = m.configure_optimizers()["optimizer"]
    loss.backward()
    opt.step()
    changed = {n.split(".")[0] + "." + n.split(".")[1] for n, p in m.named_parameters()
               if not torch.equal(p.detach(), start[n])}
    assert changed == {"net.llm"}  # not the encoder, the adapter or the reference
    assert all(p.grad is None for p in m.reference.parameters())
    torch.manual_seed(0)
    m.model_step(batch)
    assert logged["grpo/kl"] > 0  # the policy moved away from the reference


def test_validation_decodes_and_never_samples(exports, monkeypatch):
    m = build(exports)
    m.log = lambda *a, **kw: None
    m.eval()
    calls = []
    monkeypatch.setattr("lightning_modules.grpo.sample_hypotheses", lambda *a, **kw: calls.append(1))
    with torch.no_grad():
        m.validation_step(_batch(), 0)
    assert not calls and m.val_rates.update_called


# ---- (e) fit, resume, export ----

def _grpo_args(exports, tiny_corpus, run_dir) -> list[str]:
    init = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"]),
            "phone_frames": exports["reader"]["phone_frames"]}  # (a fresh adapter)
    return ["--config", str(TINY / "grpo.yaml"), "--run_dir", str(run_dir),
            "--model.init_args.llm.name_or_path", str(exports["llm"]), "--model.init_args.init", json.dumps(init),
            "--model.init_args.encoder", json.dumps(ENC), "--model.init_args.phone_frames",
            json.dumps({"dim": ENC["d_model"]}), "--model.init_args.grpo.group_size", "2",
            # weight decay: the policy moves every step even when every group's rewards tie (no gradient)
            "--model.init_args.optim.lr", "1e-3", "--model.init_args.optim.weight_decay", "0.1",
            "--data.init_args.batch.max_batch_size", "2",
            "--trainer.limit_val_batches", "1", "--checkpoint.every_n_train_steps", "1", "--test", "false",
            *common(tiny_corpus)]


def test_fit_resume_keeps_the_starting_reference_and_the_export_decodes(exports, tiny_corpus, tmp_path):
    run_dir = tmp_path / "grpo"
    args = _grpo_args(exports, tiny_corpus, run_dir)
    assert run([*args, "--trainer.max_steps", "2"])["global_step"] == 2
    start = load_file(exports["llm"] / "model.safetensors")
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    def check(state: dict) -> dict:
        for k, v in start.items():  # the reference is the starting LLM, whatever the policy did
            assert torch.equal(state[f"reference.{k}"], v), k
        assert any(not torch.equal(state[f"net.llm.{k}"], v) for k, v in start.items())  # the policy trained
        return {k: state[f"net.llm.{k}"] for k in start}

    policy2 = check(torch.load(ckpt, weights_only=True)["state_dict"])
    out = run([*args, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    assert out["global_step"] == 4 and out["skipped_batches"] == 0
    policy4 = check(torch.load(ckpt, weights_only=True)["state_dict"])
    assert any(not torch.equal(policy4[k], policy2[k]) for k in start)  # resumed and trained on
    written = sorted(p.name for p in (run_dir / "export").iterdir())
    assert written == ["adapter.safetensors", "cmvn.json", "ctc_head.safetensors", "encoder.safetensors", "llm",
                       "model.json", "phone_frames.safetensors"]  # a whole model
    # the export decodes alone, and so does the checkpoint (its reference is skipped by a decoding build)
    data = ["--data", str(tiny_corpus / "test")]
    metrics = evaluate.main(["--checkpoint", str(run_dir / "export"), *data, "--out", str(tmp_path / "e1")])
    from_ckpt = evaluate.main(["--checkpoint", str(ckpt), *data, "--out", str(tmp_path / "e2")])
    n = json.loads((tiny_corpus / "test" / "index.json").read_text())["utterances"]
    assert metrics["sets"]["test"]["overall"]["utterances"] == from_ckpt["sets"]["test"]["overall"]["utterances"] == n
    hyps = [[json.loads(x)["hyp"] for x in (tmp_path / e / "hyps.jsonl").read_text().splitlines()]
            for e in ("e1", "e2")]
    assert hyps[0] == hyps[1]
    # and the Recognizer reads it as any speech stage's export: the same transcript
    (utt,) = utterances(tiny_corpus / "test")[:1]
    lines = (tmp_path / "e1" / "hyps.jsonl").read_text().splitlines()
    rows = {json.loads(x)["id"]: json.loads(x)["hyp"] for x in lines}
    asr = Recognizer.from_pretrained(run_dir / "export")
    assert asr.decode_audio([utt["audio"]], timestamps=False, guards=False)[0].text == rows[utt["key"]]


# ---- (f) bad configs ----

def test_bad_configs_are_user_errors(exports, tiny_corpus, tmp_path):
    with pytest.raises(UserError, match="grpo trains the LLM only.*adapter"):
        build(exports, trainable=["adapter.*", "llm.*"])
    with pytest.raises(UserError, match="model.distill"):
        build(exports, distill=DistillConfig(**exports["reader"]))
    m = build(exports)
    m.trainer = stub_trainer(max_steps=-1)
    with pytest.raises(UserError, match="trainer.max_steps"):
        m.temperature()
    with pytest.raises(Exception) as e:  # through the CLI: the config error, found in the parser's chain
        build_cli([*_grpo_args(exports, tiny_corpus, tmp_path), "--model.init_args.grpo.group_size", "1"])
    assert "grpo.group_size" in str(user_error_of(e.value))


def test_a_batchs_hotword_lists_reach_the_rollout_and_both_logprob_passes_in_order(exports, monkeypatch):
    """With data.context, each utterance's list goes into its samples' prompts: the rollout gets the B lists, the
    policy and reference passes the same lists repeated G times, in the order of the sampled sequences."""
    import lightning_modules.grpo as grpo_module

    m = build(exports)
    m.trainer = stub_trainer()
    m.log = lambda *a, **kw: None
    m.train()
    batch = {**_batch(), "hotwords": [["北京", "school"], []]}
    seen = {"sample": [], "logprobs": []}
    real_sample, real_logprobs = grpo_module.sample_hypotheses, grpo_module.sequence_logprobs

    def sample(*args, hotwords=None, **kw):
        seen["sample"].append(hotwords)
        return real_sample(*args, hotwords=hotwords, **kw)

    def logprobs(*args, **kw):
        seen["logprobs"].append(args[8] if len(args) > 8 else kw.get("hotwords"))
        return real_logprobs(*args, **kw)

    monkeypatch.setattr(grpo_module, "sample_hypotheses", sample)
    monkeypatch.setattr(grpo_module, "sequence_logprobs", logprobs)
    torch.manual_seed(0)
    m.model_step(batch)
    G = m.grpo.group_size
    assert seen["sample"] == [batch["hotwords"]]
    assert seen["logprobs"] == [[["北京", "school"]] * G + [[]] * G] * 2  # the policy's pass, then the reference's
