"""Checkpoints that are never worse than the last good one: written only from a finite state, with a checksum.

`SafeCheckpoint` is Lightning's ModelCheckpoint (the `checkpoint.*` options of run.py) that
  - skips a save when any weight is NaN or inf (on any rank), with a warning: the last good
    checkpoint stays, and `--ckpt_path last` never resumes into a broken state;
  - writes `<file>.sha256` beside every checkpoint it saves; `verify_checkpoint` checks a file
    against it before a resume loads it (a damaged file is refused, naming the others).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from entropy_asr.errors import UserError
from entropy_asr.io import atomic_write_bytes
from entropy_asr.model.export import sha256_file

log = logging.getLogger(__name__)


def weights_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of `module` (this rank's shard of it) is finite."""
    checks = [torch.isfinite(p.detach()).all() for p in module.parameters()]
    return bool(torch.stack(checks).all()) if checks else True


def finite_on_all_ranks(trainer, module: torch.nn.Module) -> bool:
    """weights_finite on every rank (FSDP ranks hold different shards): every rank gets the same answer."""
    finite = torch.tensor(float(weights_finite(module)), device=module.device)
    if trainer.world_size > 1:
        finite = trainer.strategy.reduce(finite, reduce_op="min")
    return finite.item() >= 1


class SafeCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that saves only finite states and writes a checksum beside each file (module docstring)."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if not finite_on_all_ranks(trainer, trainer.lightning_module):
            good = sorted(p.name for p in Path(filepath).parent.glob("*.ckpt"))
            log.warning("step %d: weights hold NaN/inf; %s not written (the last good checkpoints stay: %s)",
                        trainer.global_step, Path(filepath).name, good or "none")
            return
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and Path(filepath).is_file():
            atomic_write_bytes(Path(filepath + ".sha256"), (sha256_file(filepath) + "\n").encode())


def verify_checkpoint(path: str | Path) -> None:
    """Raise ValueError if `path` does not match the checksum written beside it (warn if there is none)."""
    path = Path(path)
    side = Path(str(path) + ".sha256")
    if not side.is_file():
        log.warning("%s: no %s beside it (written by an older version?); resuming without checking it", path, side.name)
        return
    if sha256_file(path) != side.read_text().strip():
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
        raise UserError(f"{path} does not match its checksum ({side.name}): the file is damaged; resume from another "
                        f"checkpoint ({', '.join(others) or 'none in ' + str(path.parent)}) with --ckpt_path PATH, or "
                        f"start the run afresh")
