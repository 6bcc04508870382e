"""The project's entry point: `python experiments/run.py --config experiments/tiny/data.yaml`.

For now it runs the data side of the tiny default: builds the synthetic corpus into the cache
when it is missing, streams training batches and one full validation pass, and prints what it
saw. The training stages replace this body with the Lightning CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import yaml

from datamodules import SpeechDataModule
from entropy_asr.data.augment import AugmentConfig
from entropy_asr.data.pipeline import BatchConfig


def build_datamodule(cfg: dict) -> SpeechDataModule:
    """SpeechDataModule from the `data` section of a config (nested dataclasses built here)."""
    data = dict(cfg.get("data") or {})
    if not data:
        raise ValueError("config has no `data` section")
    if "batch" in data:
        data["batch"] = BatchConfig(**data["batch"])
    if "augment" in data:
        data["augment"] = AugmentConfig(**data["augment"])
    return SpeechDataModule(**data)


def run(cfg: dict) -> dict:
    """Prepare the data, stream `stream.train_batches` training batches and a full validation pass."""
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    n_train = int(cfg.get("stream", {}).get("train_batches", 20))
    out: dict = {}
    for name, loader, limit in (("train", dm.train_dataloader(), n_train), ("val", dm.val_dataloader(), None)):
        t0, batches, utts, audio, shape = time.perf_counter(), 0, 0, 0.0, None
        for batch in loader:
            batch = dm.account(batch)
            shape = shape or {k: list(batch[k].shape) for k in ("feats", "feat_lens", "phones", "phone_lens")}
            batches, utts, audio = batches + 1, utts + len(batch["keys"]), audio + float(batch["durations"].sum())
            if limit and batches >= limit:
                break
        wall = time.perf_counter() - t0
        out[name] = {"batches": batches, "utterances": utts, "audio_seconds": round(audio, 1),
                     "wall_seconds": round(wall, 2), "first_batch": shape}
        print(f"{name}: {batches} batches, {utts} utterances, {audio:.0f} s of audio in {wall:.1f} s; "
              f"first batch {shape}")
    print(f"example: {batch['keys'][0]} [{batch['language'][0]}] {batch['text'][0]!r}")
    out["data_counts"] = dict(dm.data_counts)
    return out


def main() -> None:
    """CLI: --config YAML."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run(yaml.safe_load(a.config.read_text()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
