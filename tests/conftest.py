"""Shared fixtures: a tiny synthetic corpus built once per session, and audio-file helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# Training runs log to metrics.csv only in tests (a W&B offline run costs seconds per stage);
# tests/test_entrypoints.py checks the W&B default (offline) with --wandb explicitly.
os.environ["WANDB_MODE"] = "disabled"


def tone(seconds: float, sr: int = 16000, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    """A deterministic voiced-like test signal (harmonics + a little noise)."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6)) * 0.2 + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def write_audio(path: Path, seconds: float, sr: int = 16000, seed: int = 0) -> Path:
    """Write a test clip to `path` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, sr, seed=seed), sr)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A 60-utterance synthetic corpus (all six splits), built once for the whole session."""
    from entropy_asr.data.synthetic import build_corpus

    root = tmp_path_factory.mktemp("corpus") / "syn"
    build_corpus(root, 60, seed=7, shard_size=8, num_workers=2)
    return root


@pytest.fixture(scope="module")
def exports(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """fast_dev_run of the two first stages; their exports feed the LLM stages (tests/stage_helpers.py shrinks them)."""
    import json

    from experiments.run import run
    from tests.stage_helpers import PROBE, TINY, common, small_models

    root = tmp_path_factory.mktemp("runs")
    outs = {}
    # pretraining's drift monitor exports the step-1 snapshot (encoder + CTC head, with its marker) as the real
    # pipeline does: the LLM stages start from it and IA-SFT's hot-swap reads its directory
    drift = {"class_path": "callbacks.CKADriftMonitor", "init_args": {"every_n_steps": 1, "probe_batches": 1}}
    for stage in ("pretrain_lm", "pretrain_ctc"):
        extra = ["--trainer.callbacks", json.dumps([PROBE, drift])] if stage == "pretrain_ctc" else []
        outs[stage] = run(["--config", str(TINY / f"{stage}.yaml"), "--run_dir", str(root / stage),
                           "--trainer.fast_dev_run", "true", *common(tiny_corpus), *small_models(stage), *extra])
    lm = root / "pretrain_lm" / "export"
    reader = {"phone_frames": str(lm / "phone_frames.safetensors"), "adapter": str(lm / "adapter.safetensors")}
    return {"root": root, "outs": outs, "llm": lm / "llm", "reader": reader,
            "encoder": root / "pretrain_ctc" / "export" / "encoder.safetensors",
            "snapshot": root / "pretrain_ctc" / "export" / "snapshots" / "encoder-step00000001.safetensors",
            "ctc_snapshot": root / "pretrain_ctc" / "export" / "snapshots" / "ctc_head-step00000001.safetensors"}
