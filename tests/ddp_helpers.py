"""Test-only Lightning callback for the DDP tests: which utterances each rank trained and validated on."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class KeyRecorder(L.Callback):
    """Writes <out>/keys-rank<r>.json: {"train": [...], "val": [...]} keys this rank saw."""

    def __init__(self, out: str):
        self.out, self.train, self.val = Path(out), [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train += list(batch["keys"])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.val += list(batch["keys"])

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"keys-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"train": self.train, "val": self.val, "world_size": trainer.world_size}))
