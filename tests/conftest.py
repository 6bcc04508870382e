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
