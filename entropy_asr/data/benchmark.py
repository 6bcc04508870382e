"""Data pipeline throughput: audio seconds per second per CPU worker for decode + fbank + augmentation + batching.

    python -m entropy_asr.data.benchmark --data DIR [--seconds 20] [--no-augment] [--buckets 2 4 ...]
        [--text-buckets 40 80 ...] [--max-batch-seconds 200] [--max-batch-size 256] [--tokenizer DIR] [--adapter-k 4]

Runs the training pipeline in this process (one worker, torch limited to one thread so the figure is per core)
and prints, as its last line, one JSON object with `audio_sec_per_sec_per_worker` and the batches' padding: the
share of padded fbank frames (what the encoder pads, before its 4x subsampling) and of padded transcript bytes,
and with --tokenizer the share of padded LLM positions (the default prompt's tokens, which pad nothing, speech
tokens, one per adapter.k encoder frames, transcript tokens and the end token). --buckets and --text-buckets set
the bucketing (batch.bucket_boundaries, batch.text_bucket_boundaries): run with and without to see what it saves.
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


def measure(data: str | Path, seconds: float = 20.0, augment: bool = True, warmup_batches: int = 2,
            batch: BatchConfig | None = None, tokenizer: str | None = None, adapter_k: int = 4) -> dict:
    """Stream training batches from `data` for about `seconds`; return throughput and padding figures."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker = one core (restored after: callers keep their own setting)
    try:
        return _measure(data, seconds, augment, warmup_batches, batch or BatchConfig(), tokenizer, adapter_k)
    finally:
        torch.set_num_threads(before)


def speech_tokens(fbank_frames: int, k: int) -> int:
    """LLM speech tokens of a clip of `fbank_frames` 100 Hz frames: the encoder's 4x subsampling, then k stacked."""
    from entropy_asr.model.encoder import subsampled_lengths

    return -(-subsampled_lengths(fbank_frames) // k)


def padding(lengths: list[list[int]]) -> float:
    """The share of a padded layout that is padding: each inner list is one batch's lengths, padded to its longest."""
    real = sum(sum(b) for b in lengths)
    total = sum(len(b) * max(b) for b in lengths if b)
    return 1 - real / total if total else 0.0


def _measure(data: str | Path, seconds: float, augment: bool, warmup_batches: int, batch: BatchConfig,
             tokenizer: str | None, adapter_k: int) -> dict:
    urls = shard_urls(data)
    pipe = build_pipeline(urls, train=True, cmvn=load_cmvn(Path(data) / "cmvn.json"), batch=batch,
                          augment=AugmentConfig() if augment else None, batches_per_epoch=10**9,
                          shuffle_buffer=100)
    it = iter(pipe)
    for _ in range(warmup_batches):  # pipeline start-up (shard open, shuffle fill) is not throughput
        next(it)
    audio = utts = batches = 0
    frames, texts = [], []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        audio += float(b["durations"].sum())
        utts += len(b["keys"])
        batches += 1
        frames.append(b["feat_lens"].tolist())
        texts.append(b["text"])
    wall = time.perf_counter() - t0
    out = {
        "audio_sec_per_sec_per_worker": round(audio / wall, 1),
        "utterances_per_sec": round(utts / wall, 1),
        "batches": batches,
        "utterances_per_batch": round(utts / max(batches, 1), 1),
        "audio_seconds": round(audio, 1),
        "wall_seconds": round(wall, 2),
        "augment": augment,
        "max_batch_seconds": batch.max_batch_seconds,
        "max_batch_size": batch.max_batch_size,
        "bucket_boundaries": list(batch.bucket_boundaries),
        "text_bucket_boundaries": list(batch.text_bucket_boundaries),
        "padded_frames_share": round(padding(frames), 4),
        "padded_text_bytes_share": round(padding([[len(t.encode()) for t in b] for b in texts]), 4),
        "data": str(data),
    }
    if tokenizer:  # the LLM's positions: the prompt + speech tokens (encoder frames, k stacked) + transcript + EOS
        from entropy_asr.model.prompt import SpeechPrompt
        from entropy_asr.model.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)
        prompt = SpeechPrompt(tok)  # the default prompt (system + user turn), as the paper configs have it
        fixed = len(prompt.prefix_ids) + len(prompt.suffix_ids)
        speech = [[speech_tokens(n, adapter_k) for n in b] for b in frames]
        tokens = [[len(ids) + 1 for ids in tok(list(t), add_special_tokens=False)["input_ids"]] for t in texts]
        out["prompt_tokens"] = fixed
        out["padded_llm_positions_share"] = round(padding([[fixed + s + t for s, t in zip(a, b, strict=True)]
                                                           for a, b in zip(speech, tokens, strict=True)]), 4)
    return out


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m entropy_asr.data.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a shard dir (index.json + cmvn.json + shard-*.tar)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to measure")
    p.add_argument("--no-augment", action="store_true", help="measure without augmentation")
    p.add_argument("--text-buckets", type=int, nargs="+", default=[], metavar="BYTES",
                   help="batch.text_bucket_boundaries: also bucket by transcript length in UTF-8 bytes")
    p.add_argument("--buckets", type=float, nargs="+", default=BatchConfig().bucket_boundaries, metavar="SECONDS",
                   help="batch.bucket_boundaries: the duration buckets' upper edges")
    p.add_argument("--max-batch-seconds", type=float, default=BatchConfig.max_batch_seconds,
                   help="batch.max_batch_seconds (padded audio seconds per batch)")
    p.add_argument("--max-batch-size", type=int, default=BatchConfig.max_batch_size, help="batch.max_batch_size")
    p.add_argument("--tokenizer", help="an LLM tokenizer (dir or hub name): report the padded share of LLM positions")
    p.add_argument("--adapter-k", type=int, default=4, help="encoder frames (25 Hz) per LLM speech token")
    a = p.parse_args(argv)
    batch = BatchConfig(max_batch_seconds=a.max_batch_seconds, max_batch_size=a.max_batch_size,
                        bucket_boundaries=a.buckets, text_bucket_boundaries=a.text_buckets)
    result = measure(a.data, a.seconds, augment=not a.no_augment, batch=batch, tokenizer=a.tokenizer,
                     adapter_k=a.adapter_k)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
