"""What the metric callbacks share: a fixed probe set, deterministic subsampling, checksums, logging
from any hook, and the bookkeeping of their own cost (seconds spent, reported in results.json)."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import lightning as L
import torch

from entropy_asr.errors import UserError


def evenly_spaced(frames: torch.Tensor, max_frames: int) -> torch.Tensor:
    """At most max_frames rows of (n, d), evenly spaced (deterministic subsampling)."""
    if frames.shape[0] <= max_frames:
        return frames
    idx = torch.linspace(0, frames.shape[0] - 1, max_frames).round().long()
    return frames[idx]


def first_validation_batches(trainer, n: int, who: str,
                             fields: tuple[str, ...] = ("feats", "feat_lens")) -> list[tuple]:
    """A fixed probe set: the first n validation batches, each a tuple of `fields` (tensors kept on the CPU).

    The batches are those one process would read (the datamodule's probe_dataloader), the same on every rank:
    every rank measures the same probe set, and a metric equals its single-process value at any world size.
    """
    dm = trainer.datamodule
    loader = dm.probe_dataloader() if hasattr(dm, "probe_dataloader") else dm.val_dataloader()
    probe = []
    for i, batch in enumerate(loader):
        if i == n:
            break
        probe.append(tuple(batch[f].cpu() if torch.is_tensor(batch[f]) else batch[f] for f in fields))
    if not probe:
        raise UserError(f"{who}: the validation loader gave no batch to probe with; set data.val_dir")
    return probe


def append_jsonl(path: str | Path, entry: dict) -> Path:
    """Append one JSON line to `path` (its directory made if needed); a reader skips a half-written last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return path


def log_to_loggers(trainer, metrics: dict[str, float], step: int) -> None:
    """Send metrics to every logger of the trainer (rank zero), from any hook (LightningModule.log cannot)."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)


class MeasuredCallback(L.Callback):
    """A callback that adds the wall time of its measurements to `self.seconds` (see `measured`).

    experiments/run.py reports each one's seconds next to the fit time in results.json
    ("callback_seconds"), so a metric's cost to training is read off every run.
    """

    seconds: float = 0.0


def measured(fn):
    """Decorator for a MeasuredCallback method: its wall time is added to self.seconds."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.seconds = self.seconds + time.perf_counter() - t0
    return wrapper
