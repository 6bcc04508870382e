"""The README's main command (experiments/pipeline.py), shrunk, and the data benchmark, on the tiny corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from entropy_asr.data import benchmark

ROOT = Path(__file__).resolve().parents[1]
ENC = {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 3, "subsampling_channels": 8}
SMALL_LLM = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 16, "intermediate_size": 64}


def shrunk_pipeline(corpus: Path, run_dir: Path) -> dict:
    """The real tiny pipeline config with 2-step stages, small models and the session's corpus."""
    cfg = yaml.safe_load((ROOT / "experiments" / "tiny" / "pipeline.yaml").read_text())
    cfg["run_dir"] = str(run_dir)
    for stage in cfg["stages"]:
        o = stage.setdefault("overrides", {})
        if stage["name"] == "pretrain_lm":
            o.update({"model.init_args.llm.tiny": SMALL_LLM, "model.init_args.tokenizer_vocab_size": 400,
                      "data.init_args.extra_sentences": 100, "model.init_args.phone_frames": {"dim": ENC["d_model"]}})
        else:
            o["model.init_args.encoder"] = ENC
        if stage["name"] == "pretrain_ctc":
            o["model.init_args.snapshot_steps"] = [1, 2]
        for key, value in list(o.items()):  # the 2-step run's snapshots stand in for the real schedule
            if isinstance(value, str):
                o[key] = value.replace("-step00000400", "-step00000001")
            if key.endswith("encoder_snapshots"):
                o[key] = [{"step": 0, "path": "{run_dir}/pretrain_ctc/export/snapshots/encoder-step00000002.safetensors"},
                          {"step": 1, "path": "{run_dir}/pretrain_ctc/export/encoder.safetensors"}]
    return cfg


def test_pipeline_runs_every_stage_and_writes_the_table(tiny_corpus, tmp_path):
    cfg = shrunk_pipeline(tiny_corpus, tmp_path / "runs")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    syn = json.dumps({"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    cmd = [sys.executable, str(ROOT / "experiments" / "pipeline.py"), "--config", str(tmp_path / "p.yaml"),
           "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--data.init_args.synthetic", syn,
           "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| test set | CER zh | WER en | MER mix |" in out.stdout
    summary = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert set(summary["stages"]) == {"pretrain_lm", "pretrain_ctc", "align", "ia_sft", "joint_sft"}
    assert set(summary["table"]) == {"test", "test_unseen_voice"}
    scored = summary["table"]["test"]  # the 60-utterance corpus' test split holds a few utterances
    assert scored and set(scored) <= {"cer_zh", "wer_en", "mer_mix"} and all(v >= 0 for v in scored.values())
    assert [s["step"] for s in summary["stages"]["ia_sft"]["encoder_swaps"]] == [0, 1]  # both snapshots swapped in
    # a second run finds every stage finished and skips it
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert again.returncode == 0 and again.stdout.count("finished before") == 5
    # a stage without results.json (interrupted) resumes from its last.ckpt instead of starting over
    (tmp_path / "runs" / "joint_sft" / "results.json").unlink()
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "--ckpt_path last" in resumed.stdout.split("== joint_sft:")[1]
    assert json.loads((tmp_path / "runs" / "joint_sft" / "results.json").read_text())["global_step"] == 2


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> dict:
    """The README's main command as is (about 14 minutes on 2 cores); its results.json."""
    runs = tmp_path_factory.mktemp("tiny") / "runs"
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "pipeline.py"), "--config",
                          str(ROOT / "experiments" / "tiny" / "pipeline.yaml"), "--run_dir", str(runs),
                          "--trainer.enable_progress_bar", "false"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((runs / "results.json").read_text())


@pytest.mark.slow
def test_tiny_pipeline_learns(tiny_pipeline):
    """Every stage learns: the encoder's phones, the text step's reading, and speech-to-text on `test`.

    Measured on 2 cores (issue 3's note): PER 0.16, reading CER/WER 0.48/0.43, test CER/WER
    0.67/0.68; an LLM that ignores the audio scores ~1.0 or more. The bounds leave room for noise.
    """
    stages = tiny_pipeline["stages"]
    assert stages["pretrain_ctc"]["test"]["test"]["per"] <= 0.25
    assert stages["pretrain_lm"]["val"]["val/cer_zh"] <= 0.7 and stages["pretrain_lm"]["val"]["val/wer_en"] <= 0.6
    table = tiny_pipeline["table"]["test"]
    assert table["cer_zh"] <= 0.85 and table["wer_en"] <= 0.8, table


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 3's targets are not reached on 2 cores in 20 minutes yet (see the "
                                       "issue's note: the tiny LLM's reading and the CTC encoder are the limits)")
def test_tiny_pipeline_reaches_issue_targets(tiny_pipeline):
    table = tiny_pipeline["table"]["test"]
    assert table["cer_zh"] <= 0.25 and table["wer_en"] <= 0.30, table


def test_benchmark_prints_json_last(tiny_corpus):
    out = subprocess.run([sys.executable, "-m", "entropy_asr.data.benchmark", "--data", str(tiny_corpus / "train"),
                          "--seconds", "1"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["audio_sec_per_sec_per_worker"] > 0 and result["batches"] >= 1
    assert benchmark.measure(tiny_corpus / "train", seconds=0.5, augment=False)["augment"] is False
