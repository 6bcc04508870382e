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


def publish_snapshot(directory: Path, encoder: str | Path, ctc_head: str | Path, step: int,
                     final: bool = False) -> None:
    """Write a snapshot as the drift monitor does: a perturbed copy of `encoder` (seeded by `step`), a copy of
    `ctc_head`, then the marker with their checksums."""
    import torch
    from safetensors.torch import load_file, save_file

    from entropy_asr.io import atomic_write_json
    from entropy_asr.model.export import sha256_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(step)
    weights = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in load_file(str(encoder)).items()}
    enc = directory / f"encoder-step{step:08d}.safetensors"
    save_file(weights, str(enc), metadata={"component": "encoder", "meta": "{}"})
    head = directory / f"ctc_head-step{step:08d}.safetensors"
    head.write_bytes(Path(ctc_head).read_bytes())
    atomic_write_json(directory / f"snapshot-step{step:08d}.json",
                      {"step": step, "cka": 0.5, "nse": 0.5, "final": final,
                       "files": {"encoder": enc.name, "ctc_head": head.name},
                       "sha256": {"encoder": sha256_file(enc), "ctc_head": sha256_file(head)}})


class LaggingSnapshot(L.Callback):
    """At step `at`, rank 0 publishes a new encoder snapshot (a perturbed copy of `source`, with its CTC head) in
    `snapshot_dir`, as a pretraining run beside this one would; the other ranks' view of the directory lags `lag`
    steps behind (a shared filesystem's delay). After every step each rank records its encoder's checksum and the
    swaps it made, in <out>/swaps-rank<r>.json. List it before callbacks.EncoderHotSwap."""

    def __init__(self, snapshot_dir: str, source: str, at: int, new_step: int, lag: int, out: str):
        self.dir, self.source, self.at, self.new_step, self.lag = Path(snapshot_dir), source, at, new_step, lag
        self.out, self.digests = Path(out), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from callbacks import hot_swap

        step = trainer.global_step
        if step == self.at and trainer.is_global_zero:
            self.publish()
        if not trainer.is_global_zero and not hasattr(hot_swap, "_unlagged"):
            hot_swap._unlagged = hot_swap.complete_snapshots
            lagging = self

            def late_view(directory, after_step=-1, skip=None):
                seen = hot_swap._unlagged(directory, after_step, skip)
                hidden = trainer.global_step < lagging.at + lagging.lag
                return [s for s in seen if not (hidden and s["step"] == lagging.new_step)]

            hot_swap.complete_snapshots = late_view

    def publish(self) -> None:
        publish_snapshot(self.dir, self.source, next(self.dir.glob("ctc_head-step*.safetensors")), self.new_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import hashlib

        from lightning_modules.strategies import gathered

        h = hashlib.sha256()
        with gathered(trainer):  # FSDP: the full weights on every rank
            for name, p in sorted(pl_module.net.encoder.named_parameters()):
                h.update(name.encode())
                h.update(p.detach().cpu().clone().numpy().tobytes())  # a copy: numpy pins the storage FSDP frees
        self.digests.append({"step": trainer.global_step - 1, "encoder": h.hexdigest()})

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"swaps-rank{trainer.global_rank}.json").write_text(json.dumps(
            {"digests": self.digests, "swaps": pl_module.swaps, "world_size": trainer.world_size}))


class KillAt(L.Callback):
    """Test-only: SIGKILL this process at the start of step `step` (a crash: nothing is flushed or cleaned)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import os
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class Poison(L.Callback):
    """Test-only: at step `step`, make one gradient NaN (`what` "grad") or, after the step, one weight ("weight")."""

    def __init__(self, step: int, what: str):
        self.step, self.what = step, what

    def _first(self, pl_module):
        return next(p for p in pl_module.parameters() if p.requires_grad)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.what == "grad" and trainer.global_step == self.step:
            self._first(pl_module).grad.view(-1)[0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import torch

        if self.what == "weight" and trainer.global_step == self.step:
            with torch.no_grad():
                self._first(pl_module).view(-1)[0] = float("nan")
