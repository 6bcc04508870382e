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
# the shipped tiny LLM's adapter reads 144-wide frames: the shrunk encoder keeps the width, not the depth
ENC = {"d_model": 144, "num_layers": 1, "num_heads": 4, "ffn_dim": 64, "conv_kernel": 3, "subsampling_channels": 8}
SMALL_LLM = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 16, "intermediate_size": 64}


def stage_callbacks(stage: str) -> list[dict]:
    """The callbacks a tiny stage config lists (their paths still ${vars...}: a run resolves them)."""
    return yaml.safe_load((ROOT / "experiments" / "tiny" / f"{stage}.yaml").read_text())["trainer"].get("callbacks", [])


def shrunk_pipeline(corpus: Path, run_dir: Path) -> dict:
    """The real tiny pipeline config with 2-step stages, small models and the session's corpus.

    Pretraining still runs in the background: its drift monitor exports the reference at step 1
    (align waits for it) and, at threshold 1.0, a snapshot at every later check; IA-SFT waits at
    step 1 for the final one.
    """
    cfg = yaml.safe_load((ROOT / "experiments" / "tiny" / "pipeline.yaml").read_text())
    cfg["run_dir"] = str(run_dir)
    cfg["vars"] = {"first_snapshot": "step00000001"}  # the stage configs' first snapshot: the reference at step 1
    for stage in cfg["stages"]:
        o = stage.setdefault("overrides", {})
        if stage["name"] == "pretrain_lm":
            o.update({"model.init_args.llm.tiny": SMALL_LLM, "model.init_args.tokenizer_vocab_size": 400,
                      "data.init_args.extra_sentences": 100, "model.init_args.phone_frames": {"dim": ENC["d_model"]}})
        else:
            o["model.init_args.encoder"] = ENC
        if stage["name"] == "pretrain_ctc":
            o["trainer.callbacks"] = [{"class_path": "callbacks.CKADriftMonitor", "init_args": {
                "every_n_steps": 1, "warmup_steps": 1, "threshold": 1.0, "probe_batches": 1}}]
        if stage["name"] in ("ia_sft", "joint_sft"):
            o["trainer.callbacks"] = stage_callbacks(stage["name"])
        for cb in o.get("trainer.callbacks", []):
            if cb["class_path"].endswith("EncoderHotSwap"):  # wait at step 1 for the final snapshot (step 2)
                cb["init_args"].update(final_by_step=1, wait_for_final_s=600, wait_poll_s=0.5)
            if cb["class_path"].endswith("AccessibleInformationProbe"):
                cb["init_args"]["test_every"] = 2  # the 60-utterance corpus' dev split is a handful
        if "wait_for" in stage:
            stage["wait_for"] = stage["wait_for"].replace("-step00001200", "-step00000001")
    return cfg


def pipeline_command(tiny_corpus, tmp_path: Path, *extra: str) -> list[str]:
    syn = json.dumps({"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    return [sys.executable, str(ROOT / "experiments" / "pipeline.py"), "--config", str(tmp_path / "p.yaml"),
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--data.init_args.synthetic", syn,
            "--data.init_args.num_workers", "0", *extra]


def test_pipeline_runs_every_stage_and_writes_the_table(tiny_corpus, tmp_path):
    """From the shipped LLM asset (no text step): pretraining beside align and IA-SFT, then joint SFT."""
    cfg = shrunk_pipeline(tiny_corpus, tmp_path / "runs")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    cmd = pipeline_command(tiny_corpus, tmp_path)  # the progress bar on: in a log, LineProgress's plain lines
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| test set | CER zh | WER en | MER mix | PER (encoder) | non-speech emission |" in out.stdout
    summary = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert set(summary["stages"]) == {"pretrain_ctc", "align", "ia_sft", "joint_sft"}
    assert set(summary["table"]) == {"test", "test_unseen_voice", "nonspeech"}
    scored = summary["table"]["test"]  # the 60-utterance corpus' test split holds a few utterances
    # with the PER of the final model's CTC head beside the transcripts' rates; on non-speech, its phones per clip
    assert scored and {"per"} < set(scored) <= {"cer_zh", "wer_en", "mer_mix", "per"}
    assert all(v >= 0 for v in scored.values())
    assert set(summary["table"]["nonspeech"]) == {"nonempty_none", "phones_per_clip"}
    from entropy_asr.assets import ROOT as ASSETS

    align_cfg = yaml.safe_load((tmp_path / "runs" / "align" / "config.yaml").read_text())
    assert align_cfg["model"]["init_args"]["llm"]["name_or_path"] == str(ASSETS / "tiny_llm" / "llm")
    # the log says what matters: a line per stage and the background stage's end, no banners
    assert "== pretrain_ctc (background):" in out.stdout and "GPU available" not in out.stdout + out.stderr
    assert "Loading weights" not in out.stderr and "Epoch" not in out.stdout
    # pretraining ran beside align and IA-SFT: IA-SFT ended on its final snapshot (step 2), waited for at step 1
    swaps = summary["stages"]["ia_sft"]["encoder_swaps"]
    assert swaps and swaps[-1]["path"].endswith("encoder-step00000002.safetensors") and swaps[-1]["step"] <= 1
    swap_log = [json.loads(line) for line in (tmp_path / "runs" / "ia_sft" / "swaps.jsonl").read_text().splitlines()]
    assert swap_log[-1]["final"] and swap_log[-1]["snapshot_step"] == 2
    assert "[pretrain_ctc] [drift] step 1" in out.stdout  # the background stage's drift lines, echoed
    assert out.stdout.index("== ia_sft:") < out.stdout.index("== joint_sft:")
    assert (tmp_path / "runs" / "drift.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "pretrain_ctc" / "stdout.log").exists()
    # a second run finds every stage finished and skips it
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert again.returncode == 0 and again.stdout.count("finished before") == 4, again.stderr[-3000:]
    # a stage without results.json (interrupted) resumes from its last.ckpt instead of starting over
    (tmp_path / "runs" / "joint_sft" / "results.json").unlink()
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "--ckpt_path last" in resumed.stdout.split("== joint_sft:")[1]
    assert json.loads((tmp_path / "runs" / "joint_sft" / "results.json").read_text())["global_step"] == 2


def test_pipeline_retrains_the_llm_when_asked(tiny_corpus, tmp_path):
    """--retrain-llm runs the text step first, and the stages read its export instead of the asset."""
    cfg = shrunk_pipeline(tiny_corpus, tmp_path / "runs")
    cfg["stages"] = [s for s in cfg["stages"] if s["name"] in ("pretrain_lm", "pretrain_ctc", "align")]
    cfg.pop("drift_plot")
    cfg["table"] = {"stage": "align", "sets": ["test"]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    refused = subprocess.run(pipeline_command(tiny_corpus, tmp_path), capture_output=True, text=True, cwd=ROOT,
                             check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    # the tiny pipeline tests only its last stage: a table of align's test results is refused before anything runs
    assert refused.returncode == 2 and "table.stage 'align'" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "runs" / "pretrain_ctc").exists()
    next(s for s in cfg["stages"] if s["name"] == "align")["overrides"].pop("test")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(pipeline_command(tiny_corpus, tmp_path, "--retrain-llm", "--trainer.enable_progress_bar",
                                          "false"), capture_output=True, text=True, cwd=ROOT, check=False,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.index("== pretrain_lm:") < out.stdout.index("== align:")
    align_cfg = yaml.safe_load((tmp_path / "runs" / "align" / "config.yaml").read_text())
    assert align_cfg["model"]["init_args"]["llm"]["name_or_path"] == f"{tmp_path}/runs/pretrain_lm/export/llm"


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> dict:
    """The README's main command as is (about 20 minutes on 2 cores, the corpus build included); its results.json."""
    runs = tmp_path_factory.mktemp("tiny") / "runs"
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "pipeline.py"), "--config",
                          str(ROOT / "experiments" / "tiny" / "pipeline.yaml"), "--run_dir", str(runs),
                          "--trainer.enable_progress_bar", "false"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return {**json.loads((runs / "results.json").read_text()), "_runs": runs, "_stdout": out.stdout}


@pytest.mark.slow
def test_tiny_pipeline_runs_pretraining_and_ia_sft_side_by_side(tiny_pipeline):
    """IA-SFT swaps in snapshots while pretraining runs (at least 2), then the final one, then joint SFT."""
    runs, log = tiny_pipeline["_runs"], tiny_pipeline["_stdout"]
    swaps = [json.loads(line) for line in (runs / "ia_sft" / "swaps.jsonl").read_text().splitlines()]
    assert len([s for s in swaps if not s["final"]]) >= 2 and swaps[-1]["final"], swaps
    assert [s["snapshot_step"] for s in swaps] == sorted({s["snapshot_step"] for s in swaps})  # newer each time
    final = json.loads((runs / "pretrain_ctc" / "export" / "snapshots"
                        / f"snapshot-step{swaps[-1]['snapshot_step']:08d}.json").read_text())
    ia_cfg = yaml.safe_load((runs / "ia_sft" / "config.yaml").read_text())
    hot_swap = next(c for c in ia_cfg["trainer"]["callbacks"] if c["class_path"].endswith("EncoderHotSwap"))
    assert final["final"] and swaps[-1]["step"] <= hot_swap["init_args"]["final_by_step"]  # the last steps train on it
    first_swap = log.index(f"[hot-swap] step {swaps[0]['step']}: encoder <- {swaps[0]['marker']}")
    assert log.index("[pretrain_ctc] [drift]") < first_swap < log.index("== joint_sft:")  # concurrent, in order
    for png in ("drift.png", "ia_sft/entropy.png", "ia_sft/accessible_information.png", "joint_sft/entropy.png",
                "joint_sft/accessible_information.png"):
        assert (runs / png).stat().st_size > 1000, png
    for stage in ("ia_sft", "joint_sft"):  # every stage's probes make a curve; joint SFT's starts with "before"
        probes = [json.loads(line) for line in (runs / stage / "accessible_information.jsonl").read_text().splitlines()]
        assert len(probes) >= 2 and probes[0]["step"] == 0, stage
        assert len((runs / stage / "entropy.jsonl").read_text().splitlines()) >= 3, stage
    # (what the metric callbacks cost is reported, not asserted: results.json's callback_share_of_fit)
    assert {"CKADriftMonitor", "AccessibleInformationProbe"} <= set(tiny_pipeline["stages"]["pretrain_ctc"][
        "callback_seconds"])


@pytest.mark.slow
def test_the_tiny_model_transcribes_ten_minutes_as_well_as_each_utterance_alone(tiny_pipeline):
    """The README's model through `transcribe`'s long-form path: a 10-minute recording of test utterances (pauses,
    noise) loses nothing to segmentation: every utterance has a segment starting within 0.5 s of its speech, and the
    error rate is that of the same stretches decoded one by one (2026-12-02, a main-command model: 67.4% vs 66.9%,
    126 segments for 122 utterances, every start within 0.5 s; the added noise costs both about 11 points)."""
    from entropy_asr.data.synthetic import corpus_dir
    from tests.stage_helpers import long_form_report

    report = long_form_report(tiny_pipeline["_runs"] / "joint_sft" / "export", corpus_dir(utterances=6000) / "test")
    assert report["duration"] >= 600 and report["starts_within_0.5s"] == 1.0, report
    assert report["long_form"] <= report["alone"] + 0.03, report


@pytest.mark.slow
def test_the_tiny_models_phone_head_retrieves_hotwords_among_1000_distractors(tiny_pipeline):
    """Hotword retrieval (the Recognizer's --hotwords path, context biasing's first step) on the trained model: each
    test utterance's longer words among 1,000 distractors of the same kinds (2026-12-02, a main-command model, 100
    utterances, threshold -1: recall 82.7%, 0.73 false retrievals per utterance)."""
    from experiments.hotword_retrieval import main as retrieval

    result = retrieval(["--export", str(tiny_pipeline["_runs"] / "joint_sft" / "export"), "--utterances", "60",
                        "--distractors", "1000", "--thresholds", "-1"])
    (row,) = result["rows"]
    assert row["recall"] >= 0.6 and row["false_per_utterance"] <= 1.5, row


def _dev_rates(stage: dict) -> dict[str, float]:
    return {k: v for k, v in stage["val"].items() if k in ("val/cer_zh", "val/wer_en", "val/mer_mix")}


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the README's error targets (test CER/WER <= 20%, MER <= 25%) are not reached "
                   "on 2 CPU cores in 20 minutes: test CER/WER/MER 32.2-35.4 / 55.5-58.7 / 31.5-35.3% in five runs "
                   "(2026-12-02), 35.2-36.3 / 52.6-55.9 / 32.4-34.4% in three with the silence cap (2026-12-07), "
                   "32.9-36.1 / 56.7-59.3 / 31.9-36.1% in three with joint SFT keeping the phone CTC (2026-12-08), "
                   "34.2 / 55.2 / 34.0% with 4,000 pretraining steps (PER 23.0%, one run, 2026-12-08), "
                   "and joint SFT improves every dev rate in two runs of fifteen; the phone CTC encoder "
                   "(PER 23-26%) is the first limit, the tiny LLM's reading the second (true phones: 12.3 / 25.6 / "
                   "12.4%); 3x the steps reach 22.0 / 43.7 / 23.0% (README)")
def test_tiny_pipeline_reaches_issue_targets(tiny_pipeline):
    """The miniature's targets: a recognizer that works, says nothing on non-speech, holds on unseen voices, and
    gets better at every stage on dev (joint SFT included). The wall time (<= 20 minutes) is reported in
    results.json's wall_seconds, not asserted."""
    table = tiny_pipeline["table"]
    test, unseen = table["test"], table["test_unseen_voice"]
    assert test["cer_zh"] <= 0.20 and test["wer_en"] <= 0.20 and test["mer_mix"] <= 0.25, test
    for key in ("cer_zh", "wer_en", "mer_mix"):
        assert unseen[key] <= 1.5 * test[key], (key, unseen, test)
    assert table["nonspeech"]["nonempty_none"] <= 0.05, table["nonspeech"]
    stages = tiny_pipeline["stages"]
    for before, after in (("align", "ia_sft"), ("ia_sft", "joint_sft")):
        a, b = _dev_rates(stages[before]), _dev_rates(stages[after])
        assert a and set(a) == set(b) and all(b[k] < a[k] for k in a), (before, a, after, b)


def test_benchmark_prints_json_last(tiny_corpus):
    out = subprocess.run([sys.executable, "-m", "entropy_asr.data.benchmark", "--data", str(tiny_corpus / "train"),
                          "--seconds", "1"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["audio_sec_per_sec_per_worker"] > 0 and result["batches"] >= 1
    assert benchmark.measure(tiny_corpus / "train", seconds=0.5, augment=False)["augment"] is False


def test_a_stage_waiting_on_a_dead_or_missing_background_stage_fails_clearly(tmp_path):
    from entropy_asr.errors import UserError
    from experiments.pipeline import Background, wait_for

    marker = tmp_path / "snapshots" / "snapshot-step00000400.json"
    with pytest.raises(FileNotFoundError, match="no background stage is running"):
        wait_for(marker, 60, {}, "align")
    bad = Background("pretrain_ctc", ["--config", str(tmp_path / "missing.yaml"), "--run_dir", str(tmp_path / "r")],
                     tmp_path / "pretrain_ctc", threads=1)
    with pytest.raises(UserError, match=r"align waits for .*, but background stage pretrain_ctc: .*missing\.yaml.* "
                                        r"\(its log: "):  # bad input: the stage's own one line, exit code 2
        wait_for(marker, 120, {"pretrain_ctc": bad}, "align")
    assert (tmp_path / "pretrain_ctc" / "stdout.log").read_text()  # its output was kept
    assert (tmp_path / "pretrain_ctc" / "threads").read_text().strip() == "1"  # the thread budget it follows


def test_thread_share_applies_the_granted_thread_count(tmp_path):
    import torch

    from callbacks.thread_share import ThreadShare

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a known start, whatever earlier tests left
    share = ThreadShare(str(tmp_path / "threads"))
    try:
        assert share.apply() is None and torch.get_num_threads() == 2  # nothing granted yet: unchanged
        (tmp_path / "threads").write_text("1\n")
        assert share.apply() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
