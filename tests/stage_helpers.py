"""Shared by the stage and transcription tests: tiny configs shrunk further; utterances and recordings made of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from entropy_asr.data.audio import SAMPLE_RATE
from entropy_asr.data.shards import read_utterances

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny"
ENC = {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 3, "subsampling_channels": 8}
SMALL_LLM = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 16, "intermediate_size": 64}
# the tiny pretraining config's probe, holding out every 2nd of the few dev utterances here
PROBE = {"class_path": "callbacks.AccessibleInformationProbe",
         "init_args": {"every_n_steps": 400, "probe_batches": 8, "at_start": False, "test_every": 2}}


def common(corpus: Path) -> list[str]:
    """Overrides that point a tiny config at the session's corpus and keep it quick."""
    syn = json.dumps({"root": str(corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    return ["--data.init_args.synthetic", syn, "--data.init_args.num_workers", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def small_models(stage: str) -> list[str]:
    """Shrink the tiny configs' models further (the configs' own sizes run in the slow pipeline test)."""
    args = []
    if stage != "pretrain_lm":
        args += ["--model.init_args.encoder", json.dumps(ENC)]
    if stage == "pretrain_ctc":
        args += ["--trainer.callbacks", json.dumps([PROBE])]
    if stage in ("align", "ia_sft", "joint_sft", "context_sft"):  # the adapter reads phone posteriors through the table
        args += ["--model.init_args.phone_frames", json.dumps({"dim": ENC["d_model"]})]
    if stage == "pretrain_lm":
        args += ["--model.init_args.llm.tiny", json.dumps(SMALL_LLM), "--model.init_args.tokenizer_vocab_size", "400",
                 "--data.init_args.extra_sentences", "100", "--model.init_args.phone_frames",
                 json.dumps({"dim": ENC["d_model"]})]
    return args


def llm_stage_args(stage: str, exports: dict, run_dir: Path) -> list[str]:
    init = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"]),  # a fresh adapter
            "phone_frames": exports["reader"]["phone_frames"]}
    args = ["--config", str(TINY / f"{stage}.yaml"), "--run_dir", str(run_dir),
            "--model.init_args.llm.name_or_path", str(exports["llm"])]
    if stage == "align":  # the text step's adapter, distilled toward its reader with the snapshot's CTC head
        init.update(adapter=exports["reader"]["adapter"])
        args += ["--model.init_args.distill", json.dumps(exports["reader"])]
    args += ["--model.init_args.init", json.dumps(init)]
    # the configs' callbacks read runs/tiny (the pipeline test runs them); IA-SFT hot-swaps the fixture's snapshots
    if stage == "ia_sft":
        swap = {"class_path": "callbacks.EncoderHotSwap",
                "init_args": {"snapshot_dir": str(exports["root"] / "pretrain_ctc" / "export" / "snapshots")}}
        args += ["--trainer.callbacks", json.dumps([swap])]
    if stage in ("joint_sft", "context_sft"):
        args += ["--trainer.callbacks", "[]"]
    return args


def utterances(split_dir: Path) -> list[dict]:
    """A shard dir's utterances: {key, text, language, audio (16 kHz float32), flac (bytes)}, in index order."""
    return list(read_utterances(split_dir))


def recording(utts: list[dict], seconds: float, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Utterances one after another (cycled) with 0.5-1.5 s pauses, light noise over everything, until `seconds`:
    (audio, [(start, end, text)]), start and end being where each utterance's speech begins and ends."""
    rng = np.random.default_rng(seed)
    parts, truth, t = [], [], 0.0
    i = 0
    while t < seconds:
        u = utts[i % len(utts)]
        pause = np.zeros(int(rng.uniform(0.5, 1.5) * SAMPLE_RATE), np.float32)
        parts += [pause, u["audio"]]
        start = t + len(pause) / SAMPLE_RATE
        t = start + len(u["audio"]) / SAMPLE_RATE
        voiced = np.flatnonzero(np.abs(u["audio"]) > 1e-3)  # the corpus pads its utterances with silence
        truth.append((start + voiced[0] / SAMPLE_RATE, start + (voiced[-1] + 1) / SAMPLE_RATE, u["text"]))
        i += 1
    parts.append(np.zeros(SAMPLE_RATE // 2, np.float32))
    x = np.concatenate(parts)
    speech_rms = float(np.sqrt(np.mean(np.concatenate([u["audio"] for u in utts]) ** 2)))
    x = x + rng.standard_normal(len(x)).astype(np.float32) * speech_rms * 0.05  # ~26 dB below the speech
    return x.astype(np.float32), truth


def long_form_report(export: Path, test_dir: Path, seconds: float = 600.0) -> dict:
    """A trained model's long-form decoding of a `seconds` recording made of `test_dir`'s utterances (pauses, noise)
    against the same utterances decoded alone: segment counts, start-time misses, and both error rates."""
    from entropy_asr.inference.recognizer import Recognizer
    from entropy_asr.metrics.scoring import score_utterance, summarize

    asr = Recognizer.from_pretrained(export)
    utts = utterances(test_dir)
    x, truth = recording(utts, seconds)
    order = [utts[i % len(utts)] for i in range(len(truth))]
    # each utterance decoded alone from the recording (its noise included), over its own file's span
    spans = [(start - _lead(u), start - _lead(u) + len(u["audio"]) / SAMPLE_RATE) for (start, _, _), u in
             zip(truth, order, strict=True)]
    alone = []
    for i in range(0, len(spans), 16):
        clips = [x[round(a * SAMPLE_RATE):round(b * SAMPLE_RATE)] for a, b in spans[i:i + 16]]
        alone += [r.text for r in asr.decode_audio(clips)]
    (t,) = asr.transcribe(x)
    starts = [s.start for s in t.segments]
    misses = [abs(min(starts, key=lambda s: abs(s - start)) - start) for start, _, _ in truth] if starts else []
    long_scores, alone_scores = [], []
    for (start, end, text), u, hyp in zip(truth, order, alone, strict=True):
        inside = [s.text for s in t.segments if s.start < end and s.end > start]
        long_scores.append(score_utterance(text, " ".join(inside), u["language"]))
        alone_scores.append(score_utterance(text, hyp, u["language"]))
    return {"utterances": len(truth), "segments": len(t.segments), "duration": t.duration,
            "starts_within_0.5s": sum(m <= 0.5 for m in misses) / max(1, len(misses)),
            "long_form": summarize(long_scores)["overall"]["error_rate"],
            "alone": summarize(alone_scores)["overall"]["error_rate"], "truncated": t.truncated}


def _lead(u: dict) -> float:
    """Seconds of silence an utterance's file starts with."""
    return float(np.flatnonzero(np.abs(u["audio"]) > 1e-3)[0]) / SAMPLE_RATE
