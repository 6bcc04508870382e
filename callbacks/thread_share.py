"""Follow a CPU-thread budget that changes during the run (the pipeline's background stages).

`experiments/pipeline.py` runs pretraining as its own process beside the stages that follow. On a
CPU, both processes at full thread count fight over the cores, and a fixed half share wastes half
the machine whenever the other process is waiting. So the pipeline writes the thread count it
grants into a file, and this callback applies it (torch.set_num_threads) at step boundaries.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class ThreadShare(L.Callback):
    """Every `every_n_steps`, set torch's intra-op threads to the integer in `path` (if it changed)."""

    def __init__(self, path: str, every_n_steps: int = 10):
        self.path, self.every_n_steps = Path(path), every_n_steps

    def apply(self) -> int | None:
        try:
            n = int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None  # not written yet, or mid-write: keep the current count
        if n >= 1 and n != torch.get_num_threads():
            torch.set_num_threads(n)
        return n

    def on_train_start(self, trainer, pl_module) -> None:
        self.apply()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.apply()

    def on_test_start(self, trainer, pl_module) -> None:
        self.apply()
