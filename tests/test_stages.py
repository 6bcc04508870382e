"""The training stages: configs through experiments/run.py, trainable sets, hand-offs, resume, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from callbacks.spectral_logger import representation_spectra
from entropy_asr.errors import UserError
from entropy_asr.metrics.error_rate import ErrorRates, PhoneErrorRate, TranscriptAndPhoneRates, ctc_greedy
from entropy_asr.model.encoder import EncoderConfig
from entropy_asr.model.export import load_component, save_component
from entropy_asr.model.llm import LLMConfig
from entropy_asr.model.losses import ctc_loss
from entropy_asr.model.pseudo_speech import PhoneFramesConfig
from entropy_asr.model.speech_llm import AdapterConfig, CTCHeadConfig, DecodeConfig
from experiments.run import build_cli, run
from lightning_modules import (
    IASFT,
    Align,
    DistillConfig,
    JointSFT,
    PretrainCTC,
    PretrainLM,
)
from lightning_modules.base import OptimConfig, warmup_cosine
from lightning_modules.pretrain_ctc import symmetric_kl
from tests.stage_helpers import (
    ENC,
    ROOT,
    TINY,
    common,
    llm_stage_args,
    small_models,
)


def test_first_stages_export_components(exports):
    assert (exports["llm"] / "config.json").exists() and (exports["llm"] / "tokenizer.json").exists()
    assert all(Path(p).exists() for p in exports["reader"].values())  # the text step's reader
    assert exports["encoder"].exists() and exports["snapshot"].exists() and exports["ctc_snapshot"].exists()
    assert (exports["root"] / "pretrain_ctc" / "export" / "ctc_head.safetensors").exists()
    lm = exports["outs"]["pretrain_lm"]["val"]
    # the text step validates reading: dev sentences decoded from clean pseudo speech, scored
    assert {"val/text_loss", "val/read_loss"} <= set(lm) and {"val/cer_zh", "val/wer_en", "val/mer_mix"} & set(lm)


@pytest.mark.parametrize("stage", ["align", "ia_sft", "joint_sft", "context_sft"])
def test_fast_dev_run_llm_stage(stage, exports, tiny_corpus, tmp_path):
    out = run([*llm_stage_args(stage, exports, tmp_path / stage), "--trainer.fast_dev_run", "true",
               *common(tiny_corpus), *small_models(stage)])
    assert out["global_step"] == 1 and out["skipped_batches"] == 0
    assert math.isfinite(out["val"]["val/loss"])
    assert {"val/cer_zh", "val/wer_en", "val/mer_mix"} & set(out["val"])  # validation decoded text and scored it
    assert 0 <= out["val"]["val/per"] <= 2  # and the phones of its (trained) CTC head: what the encoder hears
    written = sorted(p.name for p in (tmp_path / stage / "export").iterdir())
    # what trained, plus what the adapter reads through (the CTC head and phone table): a whole model
    through = ["ctc_head.safetensors", "phone_frames.safetensors"]
    expected = {"align": ["adapter.safetensors"], "ia_sft": ["adapter.safetensors", "encoder.safetensors", "llm"],
                "joint_sft": ["adapter.safetensors", "encoder.safetensors", "llm"],
                "context_sft": ["adapter.safetensors", "llm"]}[stage]
    described = ["cmvn.json", "model.json"]  # what decoding needs besides the weights: the export decodes alone
    assert written == sorted(expected + through + described)
    # a context-SFT model says so: the Recognizer then puts the hotwords it retrieves into the prompt
    described = json.loads((tmp_path / stage / "export" / "model.json").read_text())
    assert described["hotword_prompts"] is (stage == "context_sft")
    if stage == "ia_sft":  # the hot-swap took the drift monitor's step-1 snapshot in before the first step
        swaps = [json.loads(line) for line in (tmp_path / stage / "swaps.jsonl").read_text().splitlines()]
        assert [(s["step"], s["snapshot_step"]) for s in swaps] == [(0, 1)]


def test_resume_from_last_ckpt_continues_step_and_optimizer(tiny_corpus, tmp_path):
    base = ["--config", str(TINY / "pretrain_ctc.yaml"), "--run_dir", str(tmp_path), "--test", "false",
            "--checkpoint.every_n_train_steps", "2", "--data.init_args.batches_per_epoch", "2",
            "--trainer.limit_val_batches", "1", *common(tiny_corpus), *small_models("pretrain_ctc")]
    first = run([*base, "--trainer.max_steps", "2"])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)  # our checkpoints hold no pickled objects
    assert first["global_step"] == 2 and saved["global_step"] == 2
    adam_steps = {float(s["step"]) for s in saved["optimizer_states"][0]["state"].values()}
    assert adam_steps == {2.0}
    second = run([*base, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    resumed = torch.load(ckpt, weights_only=True)  # our checkpoints hold no pickled objects
    assert second["global_step"] == 4
    # Adam's per-parameter step counts went on from 2: the optimizer state was restored, not rebuilt
    assert {float(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()} == {4.0}


def test_unknown_config_key_is_an_error_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_cli(["--config", str(TINY / "align.yaml"), "--run_dir", str(tmp_path), "--model.init_args.lr_peak", "1"])
    assert "lr_peak" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["pretrain_ctc", "align", "ia_sft", "joint_sft", "context_sft", "grpo"])
def test_paper_configs_without_data_name_the_key(name, tmp_path):
    with pytest.raises(ValueError, match=r"data\.(init_args\.)?train_dir"):
        run(["--config", str(ROOT / "experiments" / f"{name}.yaml"), "--run_dir", str(tmp_path),
             "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32"])


# ---- modules built directly -----------------------------------------------------------------

def stub_trainer(**kw) -> SimpleNamespace:
    """What the module reads from its trainer outside a fit: enough for steps, exports and optimizers."""
    return SimpleNamespace(**{"world_size": 1, "global_rank": 0, "global_step": 0, "is_global_zero": True,
                              "progress_bar_callback": None,
                              "estimated_stepping_batches": 10, **kw})


def build(cls, exports, **kw):
    enc = EncoderConfig(**ENC)
    args = {"encoder": enc, **kw}
    if cls is not PretrainCTC:
        args.setdefault("adapter", AdapterConfig())
        args.update(llm=LLMConfig(name_or_path=str(exports["llm"])))
    else:
        args.setdefault("ctc_head", CTCHeadConfig())
    m = cls(**args)
    m.configure_model()
    return m


def trainable_tops(m) -> set[str]:
    return {n.split(".")[0] for n, p in m.net.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("cls,expected", [(PretrainCTC, {"encoder", "ctc_head"}), (Align, {"adapter"}),
                                          (IASFT, {"adapter", "llm"}), (JointSFT, {"encoder", "adapter", "llm"})])
def test_trainable_sets_per_stage(cls, expected, exports):
    m = build(cls, exports)
    assert trainable_tops(m) == expected
    for name in expected:  # whole components train, not just parts
        assert all(p.requires_grad for p in getattr(m.net, name).parameters())
    m.train()
    for name in {"encoder", "ctc_head", "adapter", "llm"} - expected:
        module = getattr(m.net, name)
        if module is not None:
            assert not module.training  # frozen components stay in eval mode
    m.trainer = stub_trainer()
    opt = m.configure_optimizers()["optimizer"]
    given = [p for g in opt.param_groups for p in g["params"]]
    assert given and all(p.requires_grad for p in given)
    assert len(given) == sum(p.requires_grad for p in m.net.parameters())


def test_lr_scale_gives_each_component_its_learning_rate(exports):
    m = build(JointSFT, exports, optim=OptimConfig(lr=1e-4, lr_scale={"encoder": 10.0}))
    m.trainer = stub_trainer()
    opt = m.configure_optimizers()["optimizer"]
    # (initial_lr: what the schedule scales; lr is already its first warm-up step)
    lr_of = {id(p): (g["initial_lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    for name, p in m.net.named_parameters():
        if p.requires_grad:
            lr, wd = lr_of.pop(id(p))  # every trainable parameter once
            assert lr == pytest.approx(1e-3 if name.startswith("encoder.") else 1e-4), name
            assert wd == (m.optim.weight_decay if p.ndim >= 2 else 0.0), name
    assert not lr_of
    # the schedule scales each group from its own learning rate: the ratio holds at every step
    sched = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(3):
        lrs = sorted({g["lr"] for g in sched.optimizer.param_groups})
        assert len(lrs) == 2 and lrs[1] == pytest.approx(10 * lrs[0])
        sched.optimizer.step()
        sched.step()


def test_joint_sft_ctc_weight_adds_the_phone_ctc_of_the_encoder(exports):
    init = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"])}
    torch.manual_seed(0)
    batch = {"feats": torch.randn(2, 200, 80), "feat_lens": torch.tensor([200, 160]), "text": ["你好", "hello"],
             "phones": torch.tensor([[40, 50, 60], [70, 80, 0]]), "phone_lens": torch.tensor([3, 2])}
    losses, logged = {}, {}
    for weight in (0.0, 0.5):
        m = build(JointSFT, exports, ctc_head=CTCHeadConfig(dropout=0.0), init=init, ctc_weight=weight)
        m.log = lambda key, value, weight=weight, **kw: logged.setdefault((weight, key), float(value))
        m.train()  # a training step (the CTC term is a training loss), with dropout off for exact comparisons
        m.net.eval()
        losses[weight] = m.model_step(batch)
    frames, lens = m.net.encode(batch["feats"], batch["feat_lens"])
    want = ctc_loss(m.net.ctc_log_probs(frames), lens, batch["phones"], batch["phone_lens"])
    want = want.item()
    assert want > 0 and logged[(0.5, "train/ctc")] == pytest.approx(want, rel=1e-4)
    assert (0.0, "train/ctc") not in logged
    assert (losses[0.5] - losses[0.0]).item() == pytest.approx(0.5 * want, rel=1e-4)
    # the CTC term reaches the encoder through the (frozen) head
    m.zero_grad()
    (losses[0.5] - losses[0.0].detach()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.net.encoder.parameters())
    assert all(p.grad is None for p in m.net.ctc_head.parameters())
    # scoring: one encoder pass gives the same transcripts as transcribe() and the head's PER beside them
    m.eval()
    batch["durations"] = torch.tensor([2.0, 1.6])
    batch["language"] = ["zh", "en"]
    assert isinstance(m.val_rates, TranscriptAndPhoneRates)
    both, text_only = TranscriptAndPhoneRates(), ErrorRates()
    m.evaluate_batch(batch, both)
    text_only.update(m.net.transcribe(batch["feats"], batch["feat_lens"], [2.0, 1.6], m.decode), batch["text"],
                     batch["language"])
    scored = {k: float(v) for k, v in both.compute().items()}
    assert {k: scored[k] for k in ("cer_zh", "wer_en")} == {k: float(v) for k, v in text_only.compute().items()}
    greedy = ctc_greedy(m.net.ctc_log_probs(frames), lens)
    per = PhoneErrorRate()
    per.update(greedy, [[40, 50, 60], [70, 80]])
    assert scored["per"] == pytest.approx(float(per.compute()["per"]))
    # a head that trains here (single-stage training from scratch) is a phone head too
    fresh = build(JointSFT, exports, ctc_head=CTCHeadConfig(), ctc_weight=0.5,
                  trainable=["encoder.*", "ctc_head.*", "adapter.*", "llm.*"])
    assert fresh.ctc_weight == 0.5 and all(p.requires_grad for p in fresh.net.ctc_head.parameters())
    # refused where it cannot work: no trained phone head, or a stage whose encoder is frozen
    with pytest.raises(ValueError, match="model.ctc_weight trains the encoder on phone CTC through a trained"):
        build(JointSFT, exports, ctc_weight=0.5, init={"encoder": str(exports["snapshot"])})
    with pytest.raises(ValueError, match="model.ctc_weight trains the encoder, which is frozen in this stage"):
        build(IASFT, exports, ctc_head=CTCHeadConfig(), init=init, ctc_weight=0.5)
    with pytest.raises(ValueError, match="model.ctc_weight must be a number >= 0"):
        build(JointSFT, exports, ctc_head=CTCHeadConfig(), init=init, ctc_weight=-1.0)


def test_trainable_pattern_matching_nothing_is_an_error(exports):
    with pytest.raises(ValueError, match=r"adaptor\.\*.*match no parameter"):
        build(Align, exports, trainable=["adaptor.*"])


def test_stage_rejects_components_it_does_not_use(exports):
    with pytest.raises(ValueError, match="does not use model.llm"):
        PretrainCTC(encoder=EncoderConfig(**ENC), ctc_head=CTCHeadConfig(), llm=LLMConfig())
    with pytest.raises(ValueError, match="needs model.adapter"):
        Align(encoder=EncoderConfig(**ENC), llm=LLMConfig(name_or_path=str(exports["llm"])))


def test_align_distill_adds_the_reader_mse_and_trains_only_the_adapter(exports):
    init = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"])}
    with pytest.raises(ValueError, match="distill aligns with a CTC head; set model.ctc_head"):
        build(Align, exports, init={"encoder": str(exports["snapshot"])}, distill=DistillConfig(**exports["reader"]))
    m = build(Align, exports, ctc_head=CTCHeadConfig(), init=init, distill=DistillConfig(**exports["reader"]))
    assert m.phone_aligner is None  # the stage's own CTC head times the phones
    assert trainable_tops(m) == {"adapter"} and not any(p.requires_grad for p in m.distill_reader.parameters())
    logged = {}
    m.log = lambda key, value, **kw: logged.setdefault(key, value)
    m.train()
    assert not m.distill_reader.training and not m.net.ctc_head.training
    batch = {"feats": torch.randn(2, 200, 80), "feat_lens": torch.tensor([200, 160]), "text": ["你好", "hello"],
             "phones": torch.tensor([[40, 50, 60], [70, 80, 0]]), "phone_lens": torch.tensor([3, 2])}
    torch.manual_seed(0)
    loss = m.model_step(batch)
    mse = logged["train/distill_mse"]
    assert mse > 0
    loss.backward()
    assert all(p.grad is not None for p in m.net.adapter.parameters())
    assert all(p.grad is None for n in ("encoder", "ctc_head", "llm") for p in getattr(m.net, n).parameters())
    m.eval()  # validation: the LM loss alone (no transcript-driven target at test time)
    with torch.no_grad():
        assert m.model_step(batch).item() == pytest.approx(loss.item() - mse.item(), rel=1e-4)


def test_pretrain_lm_reads_with_both_reader_parts_or_neither(exports):
    with pytest.raises(ValueError, match="model.phone_frames is set but model.adapter is not"):
        PretrainLM(llm=LLMConfig(name_or_path=str(exports["llm"])), phone_frames=PhoneFramesConfig(dim=32))
    m = PretrainLM(llm=LLMConfig(name_or_path=str(exports["llm"])), phone_frames=PhoneFramesConfig(dim=32),
                   adapter=AdapterConfig())
    m.configure_model()
    assert trainable_tops(m) == {"llm", "adapter", "phone_frames"}
    m.trainer = stub_trainer()
    m.train()
    batch = {"text": ["你好世界", "hello world"], "language": ["zh", "en"], "phones": [[40, 50, 60, 70], [80, 90]]}
    loss = m.model_step(batch)
    loss.backward()
    assert torch.isfinite(loss) and m.net.phone_frames.table.weight.grad.abs().sum() > 0  # the speech slot is read
    text_only = PretrainLM(llm=LLMConfig(name_or_path=str(exports["llm"])))
    text_only.configure_model()
    assert trainable_tops(text_only) == {"llm"} and text_only.net.adapter is None


def test_handoff_is_strict_and_names_component_and_shapes(exports, tmp_path):
    m = build(Align, exports, init={"encoder": str(exports["encoder"])})
    ref = build(PretrainCTC, exports, init={"encoder": str(exports["encoder"])})
    for a, b in zip(m.net.encoder.state_dict().values(), ref.net.encoder.state_dict().values()):
        assert torch.equal(a, b)  # both stages start from the same exported weights
    wider = PretrainCTC(encoder=EncoderConfig(**{**ENC, "d_model": 48}), ctc_head=CTCHeadConfig(),
                        init={"encoder": str(exports["encoder"])})
    with pytest.raises(ValueError, match=r"encoder: .*shape mismatch.*file \(32,\) vs model \(48,\)"):
        wider.configure_model()
    with pytest.raises(FileNotFoundError, match="encoder: export .*nope.safetensors not found"):
        load_component(m.net.encoder, tmp_path / "nope.safetensors", "encoder")
    save_component(m.net.adapter, tmp_path / "adapter.safetensors", "adapter")
    with pytest.raises(ValueError, match="holds component 'adapter', not 'encoder'"):
        load_component(m.net.encoder, tmp_path / "adapter.safetensors", "encoder")


def test_ia_sft_swap_encoder_keeps_it_frozen_and_optimizer_untouched(exports):
    m = build(IASFT, exports, init={"encoder": str(exports["snapshot"])})
    m.trainer = stub_trainer()
    opt = m.configure_optimizers()["optimizer"]
    before = {id(p) for g in opt.param_groups for p in g["params"]}
    new = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in m.net.encoder.state_dict().items()}
    m.swap_encoder(new)
    assert all(torch.equal(v, new[k]) for k, v in m.net.encoder.state_dict().items())
    assert not any(p.requires_grad for p in m.net.encoder.parameters()) and not m.net.encoder.training
    assert before == {id(p) for g in opt.param_groups for p in g["params"]}
    assert m.swaps[-1]["path"] == "<state dict>"
    with pytest.raises(ValueError, match="does not fit the encoder"):
        m.swap_encoder({k: v[:1] for k, v in new.items()})


def test_spectral_logger_measures_encoder_adapter_and_llm_speech_positions(exports):
    m = build(Align, exports)
    m.eval()
    probe = [(torch.randn(3, 160, 80), torch.tensor([160, 120, 90]))]
    spectra = representation_spectra(m.net, probe, torch.device("cpu"))
    assert set(spectra) == {"encoder", "adapter", "llm"}
    assert all(0 < s["nse"] <= 1 and s["effective_rank"] >= 1 for s in spectra.values())
    _, lens = m.net.encode(*probe[0])
    assert spectra["encoder"]["frames"] == int(lens.sum())
    # the LLM rows are exactly its speech positions: one per adapter token, padding excluded
    assert spectra["llm"]["frames"] == spectra["adapter"]["frames"] == int(((lens + 3) // 4).sum())
    ctc = build(PretrainCTC, exports)
    assert set(representation_spectra(ctc.net, probe, torch.device("cpu"))) == {"encoder"}


def test_generation_returns_text_per_utterance(exports):
    m = build(Align, exports)
    m.eval()
    feats, lens = torch.randn(3, 120, 80), torch.tensor([120, 90, 60])
    out = m.net.transcribe(feats, lens, [1.2, 0.9, 0.6], DecodeConfig(num_beams=1))
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(t, str) for t in out)
    assert len(m.net.transcribe(feats, lens, [1.2, 0.9, 0.6], DecodeConfig(num_beams=2))) == 3


def test_nan_losses_are_skipped_then_stop_training(exports):
    m = build(PretrainCTC, exports, max_bad_steps=3)
    m.model_step = lambda batch: torch.tensor(float("nan"))
    m.trainer = stub_trainer()
    batch = {"text": ["a"]}
    assert m.training_step(batch, 0) is None and m.training_step(batch, 1) is None
    assert m.bad_total == 2
    with pytest.raises(RuntimeError, match="3 consecutive batches had a NaN/inf loss"):
        m.training_step(batch, 2)


def test_consistency_ctc_needs_two_views_and_adds_kl(exports):
    m = build(PretrainCTC, exports, consistency_weight=0.5)
    m.train()
    feats, lens = torch.randn(2, 100, 80), torch.tensor([100, 80])
    batch = {"feats": feats, "feat_lens": lens, "phones": torch.tensor([[5, 6, 7], [8, 9, 0]]),
             "phone_lens": torch.tensor([3, 2])}
    with pytest.raises(ValueError, match="data.augment.views: 2"):
        m.model_step(batch)
    m.log = lambda *a, **k: None
    loss = m.model_step({**batch, "feats2": feats + 0.5 * torch.randn_like(feats)})
    assert torch.isfinite(loss) and loss.requires_grad
    lp = torch.randn(2, 5, 7).log_softmax(-1)
    assert symmetric_kl(lp, lp, torch.tensor([5, 3])).item() == pytest.approx(0.0, abs=1e-6)
    assert symmetric_kl(lp, torch.randn(2, 5, 7).log_softmax(-1), torch.tensor([5, 3])).item() > 0


# ---- pure functions ---------------------------------------------------------------------------

def test_error_rates_known_answers():
    r = ErrorRates()
    r.update(["你好世间", "the cat sat", "", "嗯"], ["你好世界", "The cat sat down.", "", ""],
             ["zh", "en", "none", "none"])
    out = {k: float(v) for k, v in r.compute().items()}
    assert out["cer_zh"] == pytest.approx(1 / 4) and out["wer_en"] == pytest.approx(1 / 4)
    assert out["nonempty_none"] == pytest.approx(1 / 2)  # one of two non-speech clips got text
    per = PhoneErrorRate()
    per.update([[1, 2, 3]], [[1, 2, 4, 5]])
    assert float(per.compute()["per"]) == pytest.approx(2 / 4)
    assert set(per.compute()) == {"per"}  # no clip without phones: no phones_per_clip
    silent = PhoneErrorRate()
    silent.update([[7, 8], []], [[], []])
    assert {k: float(v) for k, v in silent.compute().items()} == {"phones_per_clip": pytest.approx(1.0)}
    mixed = PhoneErrorRate()  # non-speech clips in the batch are counted apart: the PER does not move
    mixed.update([[1, 2, 3], [7, 8, 9], [], [4]], [[1, 2, 4, 5], [], [], []])
    out = {k: float(v) for k, v in mixed.compute().items()}
    assert out == {"per": pytest.approx(2 / 4), "phones_per_clip": pytest.approx(4 / 3)}
    lp = torch.full((1, 6, 4), -10.0)
    for t, k in enumerate([0, 2, 2, 0, 2, 3]):
        lp[0, t, k] = 0.0
    assert ctc_greedy(lp, torch.tensor([6])) == [[2, 2, 3]]
    assert ctc_greedy(lp, torch.tensor([3])) == [[2]]
    both = TranscriptAndPhoneRates()  # an LLM stage with a phone head: the transcripts' rates and the PER, merged
    assert not both.update_called and both.compute() == {}
    both.update_phones([[1, 2, 3], []], [[1, 2, 4, 5], []])
    assert {k: float(v) for k, v in both.compute().items()} == {"per": pytest.approx(2 / 4),
                                                                "phones_per_clip": pytest.approx(0.0)}
    both.update(["你好世间"], ["你好世界"], ["zh"])
    assert set(both.compute()) == {"cer_zh", "per", "phones_per_clip"}
    both.reset()
    assert not both.update_called


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_every_tiny_config_names_its_command():
    for path in TINY.glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# python experiments/") and path.name in first, path
    for path in (ROOT / "experiments").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())  # parses


def test_lora_trains_only_adapters_and_exports_adapter_and_merged_llm(exports, tmp_path):
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    m = IASFT(encoder=EncoderConfig(**ENC), adapter=AdapterConfig(),
              llm=LLMConfig(name_or_path=str(exports["llm"]), lora=lora))
    m.configure_model()
    llm_trainable = {n for n, p in m.net.llm.named_parameters() if p.requires_grad}
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    m.trainer = stub_trainer(default_root_dir=str(tmp_path))
    written = m.export(tmp_path / "export", final=True)
    assert (tmp_path / "export" / "llm_lora" / "adapter_config.json").exists()
    merged = LLMConfig(name_or_path=written["llm"])  # the merged LLM loads like any Hugging Face dir
    again = Align(encoder=EncoderConfig(**ENC), adapter=AdapterConfig(), llm=merged)
    again.configure_model()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(again.net.llm(ids).logits, m.net.llm(ids).logits, atol=1e-5)


def test_accessible_information_probe_in_ia_sft_with_a_fixed_aligner(exports, tiny_corpus, tmp_path):
    aligner = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"])}
    probe = {"class_path": "callbacks.AccessibleInformationProbe",
             "init_args": {"every_n_steps": 1, "probe_batches": 2, "test_every": 2, "aligner": aligner}}
    run([*llm_stage_args("ia_sft", exports, tmp_path), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
         "--test", "false", "--trainer.callbacks", json.dumps([probe]), *common(tiny_corpus), *small_models("ia_sft")])
    checks = [json.loads(line) for line in (tmp_path / "accessible_information.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == [0, 1, 2]  # before the first step, every step; the end is step 2 again
    for c in checks:
        assert c["h_phone_bits"] > 0 and math.isfinite(c["pai_bits"]) and math.isfinite(c["csai_bits"])
        assert 0 < c["nse_encoder"] <= 1 and c["erank_encoder"] >= 1
        assert c["h0_bits_per_char"] > 0 and c["info_bits_per_char"] == pytest.approx(
            c["h0_bits_per_char"] - c["h1_bits_per_char"], abs=1e-9)
        assert "csai_skipped_utterances" not in c  # the corpus' phones are the front end's units, joined
    logged = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"ai/pai_bits", "ai/csai_bits", "ai/h1_bits_per_char"} <= set(logged)


def test_accessible_information_probe_needs_a_ctc_head_or_an_aligner(exports):
    from callbacks import AccessibleInformationProbe

    with pytest.raises(ValueError, match="no CTC head to label frames with; set aligner"):
        AccessibleInformationProbe().on_fit_start(None, build(IASFT, exports))
    with pytest.raises(ValueError, match="exactly"):
        AccessibleInformationProbe(aligner={"encoder": "x"})
    few = AccessibleInformationProbe(test_every=4)
    few._probe = [(None, None, None, None, ["a", "b", "c"], ["en"] * 3)]  # a probe set of 3 utterances
    with pytest.raises(ValueError, match="has 3 utterance.*raise probe_batches or lower test_every"):
        few.on_fit_start(None, build(PretrainCTC, exports))  # before training, not after it


def _hyps(out: Path) -> list[str]:
    return [json.loads(x)["hyp"] for x in (out / "hyps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluated_align(exports, tiny_corpus, tmp_path_factory) -> dict:
    """A one-step align run, and evaluate.py's transcripts of two sets from its run dir (config.yaml + export/)."""
    from experiments import evaluate

    root = tmp_path_factory.mktemp("evaluated")
    run_dir = root / "align"
    run([*llm_stage_args("align", exports, run_dir), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
         "--test", "false", *common(tiny_corpus), *small_models("align")])
    sets = [tiny_corpus / "test", tiny_corpus / "nonspeech"]
    data = [a for d in sets for a in ("--data", str(d))]
    metrics = evaluate.main(["--checkpoint", str(run_dir), *data, "--out", str(root / "eval"), "--beam", "1"])
    hyps = [json.loads(x) for x in (root / "eval" / "hyps.jsonl").read_text().splitlines()]
    return {"run_dir": run_dir, "sets": sets, "data": data, "metrics": metrics, "hyps": hyps}


def test_evaluate_decodes_a_trained_stage_from_its_run_dir_or_its_checkpoint(evaluated_align, tiny_corpus, tmp_path):
    from experiments import evaluate

    run_dir, sets, data = evaluated_align["run_dir"], evaluated_align["sets"], evaluated_align["data"]
    metrics, hyps = evaluated_align["metrics"], evaluated_align["hyps"]
    assert set(metrics["sets"]) == {"test", "nonspeech"}
    for name, d in zip(("test", "nonspeech"), sets, strict=True):
        overall = metrics["sets"][name]["overall"]
        assert overall["utterances"] == json.loads((d / "index.json").read_text())["utterances"]
        assert overall["rtfx"] > 0
    assert "nonspeech_emission_rate" in metrics["sets"]["nonspeech"]["none"]
    # what decoded is written down: the beam asked for and the config's adapter.max_silence (the tiny configs cap
    # silence), which --max-silence overrides (0: read all of it) and refuses below 0
    cap = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init_args"]["adapter"]["max_silence"]
    assert isinstance(cap, int) and cap >= 1 and metrics["decode"] == {"num_beams": 1, "max_silence": cap}
    uncapped = evaluate.main(["--checkpoint", str(run_dir), "--data", str(sets[0]), "--out", str(tmp_path / "all"),
                              "--beam", "1", "--max-silence", "0"])
    assert uncapped["decode"] == {"num_beams": 1, "max_silence": None}
    with pytest.raises(ValueError, match="--max-silence -1: give frames >= 1"):
        evaluate.main(["--checkpoint", str(run_dir), "--data", str(sets[0]), "--out", str(tmp_path / "neg"),
                       "--max-silence", "-1"])
    # the Lightning checkpoint holds the same weights: the same transcripts
    again = evaluate.main(["--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), *data,
                           "--out", str(tmp_path / "eval2"), "--beam", "1"])
    assert again["sets"]["test"]["overall"]["utterances"] == metrics["sets"]["test"]["overall"]["utterances"]
    assert [json.loads(x)["hyp"] for x in (tmp_path / "eval2" / "hyps.jsonl").read_text().splitlines()] == \
        [h["hyp"] for h in hyps]
    with pytest.raises(SystemExit):  # --checkpoint without --data is a usage error
        evaluate.main(["--checkpoint", str(run_dir), "--out", str(tmp_path / "eval3")])
    assert metrics["sets"]["test"]["overall"]["complete"] and again["sets"]["test"]["overall"]["complete"]
    # a run dir whose stage never finished has no trained weights: refused, not scored with its starting weights
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    with pytest.raises(FileNotFoundError, match="no export/ there"):
        evaluate.main(["--checkpoint", str(unfinished), *data, "--out", str(tmp_path / "eval4")])
    # a set whose index lists more than its shards hold is scored and marked incomplete
    short = tmp_path / "short"
    shutil.copytree(tiny_corpus / "test", short)
    index = json.loads((short / "index.json").read_text())
    index["utterances"] += 5
    (short / "index.json").write_text(json.dumps(index))
    part = evaluate.main(["--checkpoint", str(run_dir), "--data", str(short), "--out", str(tmp_path / "eval5")])
    overall = part["sets"]["short"]["overall"]
    assert not overall["complete"] and overall["expected_utterances"] == overall["scored_utterances"] + 5


def test_evaluate_decodes_an_export_or_a_checkpoint_away_from_its_run(evaluated_align, tiny_corpus, tmp_path,
                                                                      monkeypatch):
    """An export dir (model.json + cmvn.json) or a .ckpt away from its run decodes: no config.yaml next to it, no
    data cache and (the .ckpt) none of the files the run started from, with the transcripts of the run dir."""
    from entropy_asr.errors import UserError
    from experiments import evaluate

    run_dir, data = evaluated_align["run_dir"], evaluated_align["data"]
    expected = [h["hyp"] for h in evaluated_align["hyps"]]
    (tmp_path / "empty_cache").mkdir()
    monkeypatch.setenv("ENTROPY_ASR_CACHE", str(tmp_path / "empty_cache"))
    export = tmp_path / "elsewhere" / "export"
    shutil.copytree(run_dir / "export", export)
    desc = json.loads((export / "model.json").read_text())
    assert desc["class_path"] == "lightning_modules.sft.Align" and desc["stage"] == "align"
    assert sorted(desc["exported"]) == ["adapter", "ctc_head", "phone_frames"]
    assert desc["init_args"]["init"]["adapter"] == "adapter.safetensors"  # inside the export: relative to it
    assert Path(desc["init_args"]["init"]["encoder"]).is_absolute()  # a starting point elsewhere: absolute
    assert desc["init_args"]["encoder"]["d_model"] == ENC["d_model"] and desc["data"]["num_workers"] == 0
    assert (export / "cmvn.json").read_bytes() == (tiny_corpus / "train" / "cmvn.json").read_bytes()
    evaluate.main(["--checkpoint", str(export), *data, "--out", str(tmp_path / "from_export"), "--beam", "1"])
    assert _hyps(tmp_path / "from_export") == expected
    lone = tmp_path / "lone" / "checkpoints" / "last.ckpt"  # no config.yaml 2 dirs up: the checkpoint describes itself
    lone.parent.mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", lone)
    evaluate.main(["--checkpoint", str(lone), *data, "--out", str(tmp_path / "from_ckpt"), "--beam", "1"])
    assert _hyps(tmp_path / "from_ckpt") == expected
    # on another machine the files the run started from are gone: the checkpoint's own weights stand in for them
    held = torch.load(lone, map_location="cpu", weights_only=True)
    started = held["entropy_asr"]["model"]["init_args"]["init"]
    assert {"encoder", "adapter"} <= set(started)
    held["entropy_asr"]["model"]["init_args"]["init"] = {c: str(tmp_path / "gone" / f"{c}.st") for c in started}
    away = tmp_path / "away" / "checkpoints" / "last.ckpt"
    away.parent.mkdir(parents=True)
    torch.save(held, away)
    evaluate.main(["--checkpoint", str(away), *data, "--out", str(tmp_path / "from_away"), "--beam", "1"])
    assert _hyps(tmp_path / "from_away") == expected
    # a run dir whose data config's statistics are gone (another cache or machine): the export's copy, else --cmvn
    moved = tmp_path / "moved"
    shutil.copytree(run_dir / "export", moved / "export")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["init_args"]["synthetic"]["root"] = str(tmp_path / "gone")
    config["model"]["init_args"]["encoder_snapshots"] = None  # a key an older version saved: dropped
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    evaluate.main(["--checkpoint", str(moved), *data, "--out", str(tmp_path / "from_moved"), "--beam", "1"])
    assert _hyps(tmp_path / "from_moved") == expected
    (moved / "export" / "cmvn.json").unlink()
    with pytest.raises(FileNotFoundError, match="gone/train/cmvn.json, are not there .*pass --cmvn PATH"):
        evaluate.main(["--checkpoint", str(moved), *data, "--out", str(tmp_path / "x")])
    # --cmvn names its flag when it is wrong; a damaged or missing model.json is one line naming the file and the fix
    with pytest.raises(FileNotFoundError, match="--cmvn .*: no such file"):
        evaluate.main(["--checkpoint", str(export), *data, "--out", str(tmp_path / "x"),
                       "--cmvn", str(tmp_path / "no")])
    for text, match in (('{"class_path": "lightning_modules.Align", "init_args": ', "not valid JSON"),
                        (json.dumps({"init_args": {}}), "no class_path"),
                        (json.dumps({"class_path": "os.path", "init_args": {}}), "not a stage's LightningModule")):
        (export / "model.json").write_text(text)
        with pytest.raises(UserError, match=match) as e:
            evaluate.main(["--checkpoint", str(export), *data, "--out", str(tmp_path / "x")])
        assert "model.json" in str(e.value) and "\n" not in str(e.value)
    (export / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.yaml and no model.json") as e:
        evaluate.main(["--checkpoint", str(export), *data, "--out", str(tmp_path / "x")])
    assert "\n" not in str(e.value)


def test_decoding_overrides_are_the_ones_the_stage_takes():
    """evaluate.py turns off what only training reads, asking each stage's class which of its args those are."""
    assert (Align.decoding_overrides() == IASFT.decoding_overrides() == JointSFT.decoding_overrides()
            == {"distill": None})
    assert PretrainCTC.decoding_overrides() == {} and "distill" not in PretrainCTC.init_arg_names()
    assert {"encoder", "adapter", "llm", "distill"} <= Align.init_arg_names()


def test_align_distill_with_a_fixed_phone_aligner_equals_the_own_head_path(exports):
    snap = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"])}
    own = build(Align, exports, ctc_head=CTCHeadConfig(), init=snap, distill=DistillConfig(**exports["reader"]))
    # the encoder without a phone head (e.g. character-CTC pretrained) borrows the same snapshot as its aligner
    fixed = build(Align, exports, init={"encoder": snap["encoder"]},
                  distill=DistillConfig(**exports["reader"], aligner=snap))
    fixed.net.adapter.load_state_dict(own.net.adapter.state_dict())
    assert fixed.net.ctc_head is None
    assert not any(p.requires_grad for part in (fixed.distill_reader, fixed.phone_aligner) for p in part.parameters())
    fixed.train()
    assert not fixed.distill_reader.training and not fixed.phone_aligner.training
    batch = {"feats": torch.randn(2, 200, 80), "feat_lens": torch.tensor([200, 160]), "text": ["你好", "hello"],
             "phones": torch.tensor([[40, 50, 60], [70, 80, 0]]), "phone_lens": torch.tensor([3, 2])}
    losses = []
    for m in (own, fixed):
        m.log = lambda *a, **k: None
        m.train()
        torch.manual_seed(0)
        losses.append(float(m.model_step(batch)))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # same weights align the same: same target
    with pytest.raises(ValueError, match=r"exactly \{encoder: PATH, ctc_head: PATH\}"):
        DistillConfig(**exports["reader"], aligner={"encoder": snap["encoder"]})


def test_checkpoint_from_before_the_teacher_split_still_resumes(exports):
    """Checkpoints written before the split hold the distill reader and the phone aligner as `teacher.*`."""
    snap = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"])}

    def make():
        return build(Align, exports, init={"encoder": snap["encoder"]},
                     distill=DistillConfig(**exports["reader"], aligner=snap))

    def old_key(k: str) -> str:
        return next(("teacher." + k[len(p):] for p in ("distill_reader.", "phone_aligner.") if k.startswith(p)), k)

    # an old checkpoint: teacher.{phone_frames,adapter,encoder,ctc_head}.*, weights moved off what make() loads
    old = {old_key(k): v + 1.0 if v.is_floating_point() else v for k, v in make().state_dict().items()}
    assert {k.split(".")[1] for k in old if k.startswith("teacher.")} == {"phone_frames", "adapter", "encoder",
                                                                          "ctc_head"}
    resumed = make()
    resumed.load_state_dict(dict(old), strict=True)  # every load path (any strategy's resume, evaluate) goes here
    assert all(torch.equal(v, old[old_key(k)]) for k, v in resumed.state_dict().items())
    wrapped = torch.nn.ModuleDict({"stage": make()})  # and under a prefix, as a wrapper loads it
    wrapped.load_state_dict({f"stage.{k}": v for k, v in old.items()}, strict=True)
    assert all(torch.equal(v, old[old_key(k)]) for k, v in wrapped["stage"].state_dict().items())


def test_pretrain_ctc_on_characters(exports, tiny_corpus, tmp_path):
    from entropy_asr.text.chars import build_char_inventory

    inv = build_char_inventory(tiny_corpus / "train", tmp_path / "chars.json")
    head = json.dumps({"dropout": 0.0, "units": "chars", "inventory": str(tmp_path / "chars.json")})
    out = run(["--config", str(TINY / "pretrain_ctc.yaml"), "--run_dir", str(tmp_path / "run"), "--trainer.max_steps",
               "2", "--trainer.limit_val_batches", "1", "--trainer.callbacks", "[]", "--test", "false",
               "--data.init_args.batches_per_epoch", "2",
               "--model.init_args.ctc_head", head, *common(tiny_corpus), "--model.init_args.encoder", json.dumps(ENC)])
    assert "val/char_er" in out["val"] and "val/per" not in out["val"]
    weights = load_file(str(tmp_path / "run" / "export" / "ctc_head.safetensors"))
    assert max(w.shape[0] for w in weights.values()) == len(inv)  # the output layer has the inventory's rows
    m = build(PretrainCTC, exports, ctc_head=CTCHeadConfig(units="chars", inventory=str(tmp_path / "chars.json")))
    targets, lens = m.ctc_targets({"norm_text": ["ab 好", ""], "phones": torch.zeros(2, 1, dtype=torch.long)})
    assert lens.tolist() == [4, 0] and targets[0].tolist() == inv.ids("ab 好")
    phones = build(PretrainCTC, exports)  # phones: the batch's own phone ids
    assert phones.ctc_targets({"phones": torch.ones(1, 3), "phone_lens": torch.tensor([3])})[1].tolist() == [3]


def test_adapter_reading_phone_posteriors_sees_pseudo_speech(exports):
    """adapter.input phone_posteriors: a CTC head certain of phone p on a frame hands the adapter exactly
    the phone table's row p, so the adapter reads what the text step taught it to read."""
    from entropy_asr.model.pseudo_speech import SILENCE_ID

    reader = exports["reader"]
    m = build(Align, exports, ctc_head=CTCHeadConfig(dropout=0.0), adapter=AdapterConfig(input="phone_posteriors"),
              phone_frames=PhoneFramesConfig(dim=ENC["d_model"]),
              init={"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"]),
                    "phone_frames": reader["phone_frames"], "adapter": reader["adapter"]})
    net = m.net.eval()
    ids = torch.tensor([[5, 5, SILENCE_ID, 9, 12, 12, 12, 3], [7, 7, 8, 8, SILENCE_ID, 0, 0, 0]])
    lens = torch.tensor([8, 5])
    phones = net.phone_frames.table.num_embeddings
    net.ctc_head.forward = lambda frames: 1e4 * torch.nn.functional.one_hot(ids, phones).float()  # certain posteriors
    speech, speech_lens = net.adapt(torch.zeros(2, 8, ENC["d_model"]), lens)
    want, want_lens = net.adapter(net.phone_frames(ids, lens), lens)
    assert torch.equal(speech_lens, want_lens)
    assert net.reads_posteriors and torch.allclose(speech, want, atol=1e-5)
    with pytest.raises(ValueError, match=r"model.init.phone_frames"):
        Align(encoder=EncoderConfig(**ENC), ctc_head=CTCHeadConfig(), adapter=AdapterConfig(input="phone_posteriors"),
              llm=LLMConfig(name_or_path=str(exports["llm"])), phone_frames=PhoneFramesConfig(dim=ENC["d_model"]),
              init={"ctc_head": str(exports["ctc_snapshot"])})
    with pytest.raises(ValueError, match="adapter.input must be"):
        AdapterConfig(input="posteriors")
    # hold: CTC's one-frame spikes between blanks become the held layout the reader learned
    held_m = build(Align, exports, ctc_head=CTCHeadConfig(dropout=0.0),
                   adapter=AdapterConfig(input="phone_posteriors", hold=3),
                   phone_frames=PhoneFramesConfig(dim=ENC["d_model"]),
                   init={"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"]),
                         "phone_frames": reader["phone_frames"], "adapter": reader["adapter"]})
    assert held_m.describe()["init_args"]["adapter"]["hold"] == 3  # an export's model.json rebuilds it as trained
    spikes = torch.tensor([[5, SILENCE_ID, SILENCE_ID, SILENCE_ID, 9, SILENCE_ID, 12, SILENCE_ID],
                           [7, SILENCE_ID, 8, 8, SILENCE_ID, 0, 0, 0]])
    hnet = held_m.net.eval()
    hnet.ctc_head.forward = lambda frames: 1e4 * torch.nn.functional.one_hot(spikes, phones).float()
    speech, _ = hnet.adapt(torch.zeros(2, 8, ENC["d_model"]), lens)
    held = torch.tensor([[5, 5, 5, SILENCE_ID, 9, 9, 12, 12], [7, 7, 8, 8, 8, 0, 0, 0]])
    assert torch.allclose(speech, hnet.adapter(hnet.phone_frames(held, lens), lens)[0], atol=1e-5)
    assert not torch.allclose(speech, hnet.adapter(hnet.phone_frames(spikes, lens), lens)[0], atol=1e-3)
    with pytest.raises(ValueError, match="adapter.hold"):
        AdapterConfig(hold=3)  # input "encoder": nothing to hold
    with pytest.raises(ValueError, match="adapter.hold"):
        AdapterConfig(input="phone_posteriors", hold=-1)


def test_ia_sft_swaps_the_ctc_head_with_the_encoder_when_the_adapter_reads_it(exports):
    reader = exports["reader"]
    m = build(IASFT, exports, ctc_head=CTCHeadConfig(dropout=0.0), adapter=AdapterConfig(input="phone_posteriors"),
              phone_frames=PhoneFramesConfig(dim=ENC["d_model"]),
              init={"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"]),
                    "phone_frames": reader["phone_frames"]})
    m.trainer = stub_trainer()
    final = exports["root"] / "pretrain_ctc" / "export"
    m.swap_encoder(final / "encoder.safetensors")  # its sibling ctc_head.safetensors comes with it
    want = load_file(str(final / "ctc_head.safetensors"))
    assert all(torch.equal(v, want[k]) for k, v in m.net.ctc_head.state_dict().items())
    assert not any(p.requires_grad for p in m.net.ctc_head.parameters()) and not m.net.ctc_head.training
    before = {k: v.clone() for k, v in m.net.encoder.state_dict().items()}
    with pytest.raises(ValueError, match="swap from an export path"):
        m.swap_encoder({k: torch.zeros_like(v) for k, v in before.items()})
    lone = exports["root"] / "lone"
    lone.mkdir(exist_ok=True)
    (lone / "encoder.safetensors").write_bytes((final / "encoder.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="ctc_head.safetensors .* is missing"):
        m.swap_encoder(lone / "encoder.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in m.net.encoder.state_dict().items())  # nothing half-swapped
    assert set(m.exported_components()) == {"encoder", "ctc_head", "adapter", "llm", "phone_frames"}


def test_paper_pretraining_config_trains_two_views_with_dynamic_chunks(tiny_corpus, tmp_path):
    # experiments/pretrain_ctc.yaml as it is (CR-CTC: augment.views 2, consistency 0.2; dynamic chunks), shrunk to a
    # CPU: the second view comes through the data pipeline and the consistency term is trained and logged
    enc = {**ENC, "dynamic_chunk": True, "max_chunk": 4, "full_context_prob": 0.5, "dropout": 0.0}
    out = run(["--config", str(ROOT / "experiments" / "pretrain_ctc.yaml"), "--run_dir", str(tmp_path),
               "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
               "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "3",
               "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]", "--test", "false",
               "--wandb", "disabled", "--model.init_args.encoder", json.dumps(enc),
               "--model.init_args.ctc_head", json.dumps({"dropout": 0.0}),
               "--data.init_args.train_dir", str(tiny_corpus / "train"),
               "--data.init_args.val_dir", str(tiny_corpus / "dev"),
               "--data.init_args.num_workers", "0", "--data.init_args.shuffle_buffer", "10",
               "--data.init_args.batches_per_epoch", "3", "--trainer.enable_progress_bar", "false",
               "--data.init_args.batch", json.dumps({"max_batch_seconds": 30.0, "max_batch_size": 8,
                                                     "max_duration": 30.0})])
    assert out["global_step"] == 3
    rows = [r for r in __import__("csv").DictReader((tmp_path / "metrics.csv").open()) if r.get("train/consistency")]
    assert len(rows) == 3
    # dropout is off: a positive consistency term means the two views differ (independent SpecAugment masks)
    assert all(float(r["train/consistency"]) > 0 and float(r["train/ctc"]) > 0 for r in rows)


def test_context_sft_without_hotword_lists_names_the_key(exports, tiny_corpus, tmp_path):
    with pytest.raises(UserError, match="data.init_args.context"):
        run([*llm_stage_args("context_sft", exports, tmp_path / "ctx"), "--trainer.fast_dev_run", "true",
             *common(tiny_corpus), *small_models("context_sft"), "--data.init_args.context", "null"])


def test_a_stage_from_a_context_sft_llm_says_it_was_trained_with_hotword_prompts(exports, tiny_corpus, tmp_path):
    """model.json's hotword_prompts is inherited: a later stage started from a context-SFT export's LLM (its
    model.json beside llm/ says so) describes itself the same, and the Recognizer then biases by default."""
    start = tmp_path / "context_sft_export"
    start.mkdir()
    (start / "llm").symlink_to(exports["llm"], target_is_directory=True)
    (start / "model.json").write_text(json.dumps({"stage": "context_sft", "hotword_prompts": True}))
    args = llm_stage_args("joint_sft", exports, tmp_path / "joint")
    args[args.index("--model.init_args.llm.name_or_path") + 1] = str(start / "llm")
    run([*args, "--trainer.fast_dev_run", "true", *common(tiny_corpus), *small_models("joint_sft")])
    assert json.loads((tmp_path / "joint" / "export" / "model.json").read_text())["hotword_prompts"] is True


def test_adapter_max_silence_reads_long_silence_as_the_short_one(exports):
    """adapter.max_silence: runs of blank frames next to speech are shortened before the adapter, so a clip with
    seconds of silence around and inside its speech gives the LLM what the same speech with short silence gives."""
    from entropy_asr.model.pseudo_speech import SILENCE_ID as S

    reader = exports["reader"]
    init = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"]),
            "phone_frames": reader["phone_frames"], "adapter": reader["adapter"]}
    m = build(Align, exports, ctc_head=CTCHeadConfig(dropout=0.0), phone_frames=PhoneFramesConfig(dim=ENC["d_model"]),
              adapter=AdapterConfig(input="phone_posteriors", hold=3, max_silence=2), init=init)
    assert m.describe()["init_args"]["adapter"]["max_silence"] == 2  # an export's model.json rebuilds it
    net, phones = m.net.eval(), m.net.phone_frames.table.num_embeddings
    long = [S] * 30 + [5, S, 9] + [S] * 25 + [12] + [S] * 40  # 99 frames
    short = [S, S, 5, S, 9, S, S, 12, S, S]  # edges 2 frames, the long pause 2 (1 + 1), the 1-frame one as it was
    padded = torch.tensor([long, short + [S] * (len(long) - len(short))])

    def speech(ids: torch.Tensor, lens: torch.Tensor, cap):
        net.max_silence = cap
        net.ctc_head.forward = lambda frames: 1e4 * torch.nn.functional.one_hot(ids, phones).float()
        return net.adapt(torch.zeros(*ids.shape, ENC["d_model"]), lens)

    got, got_lens = speech(padded, torch.tensor([len(long), len(short)]), 2)
    want, want_lens = speech(torch.tensor([short]), torch.tensor([len(short)]), None)
    assert got_lens.tolist() == [int(want_lens), int(want_lens)]
    assert torch.allclose(got[0, :int(want_lens)], want[0], atol=1e-5)
    assert torch.allclose(got[1, :int(want_lens)], want[0], atol=1e-5)  # a row already short: unchanged
    _, uncapped_lens = speech(padded, torch.tensor([len(long), len(short)]), None)
    assert int(uncapped_lens[0]) > 3 * int(want_lens)
    # no CTC head, or an untrained one: nothing finds the silence, so the config is refused, not ignored
    with pytest.raises(ValueError, match="adapter.max_silence"):
        build(Align, exports, adapter=AdapterConfig(max_silence=2), init={"encoder": str(exports["snapshot"])})
    with pytest.raises(ValueError, match="adapter.max_silence finds silence with a trained CTC head"):
        build(Align, exports, ctc_head=CTCHeadConfig(), adapter=AdapterConfig(max_silence=2),
              init={"encoder": str(exports["snapshot"])})
    # reading encoder frames, the frozen head that decides the silence is exported with the adapter (a whole model)
    pair = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"])}
    frames_m = build(Align, exports, ctc_head=CTCHeadConfig(), adapter=AdapterConfig(max_silence=2), init=pair)
    assert frames_m.net.adapter_reads_ctc_head and frames_m.exported_components() == ["ctc_head", "adapter"]
    assert build(Align, exports, ctc_head=CTCHeadConfig(), init=pair).exported_components() == ["adapter"]
    with pytest.raises(ValueError, match="adapter.max_silence must be >= 1"):
        AdapterConfig(max_silence=0)


def test_align_distill_reads_the_same_frames_as_the_adapter_under_max_silence(exports):
    """With adapter.max_silence the distill target is laid over the frames the adapter read: a batch whose CTC head
    hears long silence at both edges trains with the shortened frames, shapes agree and the MSE is finite."""
    init = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"])}
    torch.manual_seed(0)
    batch = {"feats": torch.randn(2, 400, 80), "feat_lens": torch.tensor([400, 330]), "text": ["你好", "hello"],
             "phones": torch.tensor([[40, 50, 60], [70, 80, 0]]), "phone_lens": torch.tensor([3, 2])}
    for cap in (None, 2):
        m = build(Align, exports, ctc_head=CTCHeadConfig(dropout=0.0), init=init,
                  adapter=AdapterConfig(max_silence=cap), distill=DistillConfig(**exports["reader"]))
        head = m.net.ctc_head.forward

        def edges_blank(frames, head=head):  # blank certain outside frames 40-64, phone 40 certain at frame 50
            logits = head(frames)
            t = torch.arange(frames.shape[1])
            sure = torch.where(t == 50, 40, 0)
            forced = ((t < 40) | (t >= 65) | (t == 50))[None, :, None]
            return torch.where(forced, torch.nn.functional.one_hot(sure, logits.shape[-1]) * 1e4, logits)

        m.net.ctc_head.forward = edges_blank
        logged: dict = {}
        m.log = lambda key, value, logged=logged, **kw: logged.setdefault(key, value)
        m.train()
        frames, lens = m.net.encode(batch["feats"], batch["feat_lens"])
        keep = m.net.silence_keep(frames, lens)
        if cap is None:
            assert keep is None
        else:  # each row: 25 frames of speech (some may read blank too) and at most 2 frames of each edge
            assert (lens > 80).all() and (keep.sum(1) <= 25 + 2 * 2).all()
        m.model_step(batch).backward()
        mse = float(logged["train/distill_mse"])
        assert math.isfinite(mse) and mse > 0
        assert all(p.grad is not None for p in m.net.adapter.parameters())
