"""Data pipeline throughput: audio seconds per second per CPU worker for decode + fbank + augmentation + batching.

    python -m entropy_asr.data.benchmark --data DIR [--seconds 20] [--no-augment]

Runs the training pipeline in this process (one worker, torch limited to one thread so the
figure is per core) and prints, as its last line, one JSON object with
`audio_sec_per_sec_per_worker`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from entropy_asr.data.audio import load_cmvn
from entropy_asr.data.augment import AugmentConfig
from entropy_asr.data.pipeline import BatchConfig, build_pipeline, shard_urls
from entropy_asr.errors import run_main


def measure(data: str | Path, seconds: float = 20.0, augment: bool = True, warmup_batches: int = 2) -> dict:
    """Stream training batches from `data` for about `seconds`; return throughput figures."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker = one core (restored after: callers keep their own setting)
    try:
        return _measure(data, seconds, augment, warmup_batches)
    finally:
        torch.set_num_threads(before)


def _measure(data: str | Path, seconds: float, augment: bool, warmup_batches: int) -> dict:
    urls = shard_urls(data)
    pipe = build_pipeline(urls, train=True, cmvn=load_cmvn(Path(data) / "cmvn.json"), batch=BatchConfig(),
                          augment=AugmentConfig() if augment else None, batches_per_epoch=10**9,
                          shuffle_buffer=100)
    it = iter(pipe)
    for _ in range(warmup_batches):  # pipeline start-up (shard open, shuffle fill) is not throughput
        next(it)
    audio = utts = batches = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        audio += float(b["durations"].sum())
        utts += len(b["keys"])
        batches += 1
    wall = time.perf_counter() - t0
    return {
        "audio_sec_per_sec_per_worker": round(audio / wall, 1),
        "utterances_per_sec": round(utts / wall, 1),
        "batches": batches,
        "audio_seconds": round(audio, 1),
        "wall_seconds": round(wall, 2),
        "augment": augment,
        "data": str(data),
    }


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m entropy_asr.data.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a shard dir (index.json + cmvn.json + shard-*.tar)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to measure")
    p.add_argument("--no-augment", action="store_true", help="measure without augmentation")
    a = p.parse_args(argv)
    result = measure(a.data, a.seconds, augment=not a.no_augment)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
