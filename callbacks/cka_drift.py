"""CKA drift monitor (docs/method.md, pipeline step 2), a callback for the pretraining run.

Every `every_n_steps` after `warmup_steps`, the current encoder encodes one fixed probe set (the
first `probe_batches` validation batches) and its frames are compared, by linear CKA, with the
reference's frames on the same probe set. The first check sets the reference (the encoder at the
end of warm-up). When CKA falls below `threshold` (0.975 in the paper) the encoder is exported
as a new snapshot and becomes the reference. At the end of training a final snapshot is
exported regardless, marked final.

A snapshot is `<dir>/encoder-stepNNNNNNNN.safetensors` (+ `ctc_head-...` when the module has
one), then `<dir>/snapshot-stepNNNNNNNN.json` {step, cka, nse, final, files: {component: name},
sha256: {component: hex}}, each written atomically (temp file + rename), the JSON last: a
snapshot whose JSON exists is complete, and its checksums let a reader detect a damaged file.
Each check is logged as drift/cka and drift/nse_encoder, appended to `<dir>/drift.jsonl` and
plotted to `<run dir>/drift.png` (CKA with the snapshots marked, and NSE, over steps).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only

from callbacks.common import (
    MeasuredCallback,
    append_jsonl,
    evenly_spaced,
    first_validation_batches,
    measured,
)
from entropy_asr.errors import UserError
from entropy_asr.io import atomic_write_bytes, atomic_write_json
from entropy_asr.metrics import linear_cka, normalized_spectral_entropy
from entropy_asr.model.export import save_component, sha256_file
from entropy_asr.model.masks import length_mask
from entropy_asr.plots import plot_drift
from lightning_modules.strategies import full_weights, gathered

log = logging.getLogger(__name__)


def quarantine_after(directory: Path, step: int) -> Path | None:
    """Move the snapshots past `step` (and their drift.jsonl lines) into `directory`/quarantine-stepS-TIME/.

    A run resumed from its step-`step` checkpoint retrains the steps after it; snapshots a killed run
    exported past its last checkpoint are not on the resumed run's path (a rerun of step 30 gives other
    weights), so they go aside, with a NOTE, and the hot-swap (which reads only the directory itself) never
    loads them. Nothing is deleted. Returns the quarantine dir, or None when there was nothing to move.
    """
    directory = Path(directory)
    stale = []
    for marker in sorted(directory.glob("snapshot-step*.json")):
        try:
            marker_step = int(marker.stem.removeprefix("snapshot-step"))
        except ValueError:
            continue
        if marker_step > step:
            stale.append((marker, marker_step))
    drift = directory / "drift.jsonl"
    lines = drift.read_text().splitlines() if drift.exists() else []

    def past(line: str) -> bool:
        try:
            return int(json.loads(line)["step"]) > step
        except (ValueError, KeyError, TypeError):
            return False

    late = [ln for ln in lines if ln.strip() and past(ln)]
    if not stale and not late:
        return None
    aside = directory / f"quarantine-step{step:08d}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=True)
    moved = []
    for marker, marker_step in stale:
        # the marker first: once it is gone the snapshot is incomplete to any reader, then its files
        marker.replace(aside / marker.name)
        for f in directory.glob(f"*-step{marker_step:08d}.safetensors"):
            f.replace(aside / f.name)
        moved.append(marker.name)
    if late:
        (aside / "drift.jsonl").write_text("\n".join(late) + "\n")
        atomic_write_bytes(drift, "".join(ln + "\n" for ln in lines if ln.strip() and not past(ln)).encode())
    (aside / "NOTE.txt").write_text(
        f"Moved here when the run resumed from its step-{step} checkpoint: these snapshots (and drift checks) came "
        f"from steps after it, which the resumed run trains again, so they are not on its path.\n"
        f"Snapshots: {', '.join(moved) or 'none'}; drift.jsonl lines: {len(late)}.\n")
    log.warning("resumed at step %d: %d snapshot(s) and %d drift check(s) from later steps moved to %s", step,
                len(moved), len(late), aside)
    return aside


class CKADriftMonitor(MeasuredCallback):
    """Export encoder snapshots when the encoder drifts (CKA to the reference < threshold) and at the end.

    Args:
        every_n_steps: check interval in optimizer steps.
        threshold: export when CKA to the reference falls below this (paper: 0.975).
        warmup_steps: no checks before this step; the first check sets the reference.
        probe_batches: validation batches that form the fixed probe set.
        max_frames: probe frames kept (evenly spaced) for CKA and NSE.
        snapshot_dir: default <export dir>/snapshots.
        debiased: unbiased (U-centered) CKA instead of the biased estimator.
        export_reference: export the first reference (the encoder at the end of warm-up) as the
            first snapshot: the encoder alignment and IA-SFT start from, at a known step.
    """

    def __init__(self, every_n_steps: int = 500, threshold: float = 0.975, warmup_steps: int = 0,
                 probe_batches: int = 2, max_frames: int = 4096, snapshot_dir: str | None = None,
                 debiased: bool = False, export_reference: bool = True):
        if every_n_steps < 1 or probe_batches < 1 or max_frames < 4:
            raise UserError(f"CKADriftMonitor: every_n_steps and probe_batches must be >= 1 and max_frames >= 4, got "
                            f"{every_n_steps}, {probe_batches}, {max_frames}")
        if not 0 < threshold <= 1:
            raise UserError(f"CKADriftMonitor: threshold must be in (0, 1], got {threshold}")
        self.every_n_steps, self.threshold, self.warmup_steps = every_n_steps, threshold, warmup_steps
        self.probe_batches, self.max_frames, self.debiased = probe_batches, max_frames, debiased
        self.snapshot_dir_arg, self.export_reference = snapshot_dir, export_reference
        self.reference: torch.Tensor | None = None  # (n, d) reference frames on the probe set
        self.history: list[dict] = []
        self.last_check = -1
        self._exported_step = -1  # the step of this run's last snapshot export
        self._probe: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def state_key(self) -> str:
        return f"CKADriftMonitor{{threshold={self.threshold}, every={self.every_n_steps}}}"

    def snapshot_dir(self, pl_module) -> Path:
        return Path(self.snapshot_dir_arg) if self.snapshot_dir_arg else Path(pl_module.export_dir) / "snapshots"

    # ---- probing ---------------------------------------------------------------------------
    def probe_set(self, trainer) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._probe is None:
            self._probe = first_validation_batches(trainer, self.probe_batches, "CKADriftMonitor")
        return self._probe

    @torch.no_grad()
    def encoder_frames(self, trainer, pl_module) -> torch.Tensor:
        """(n, d) float64 encoder frames of the probe set, padding dropped, evenly subsampled."""
        encoder = pl_module.net.encoder
        was_training = encoder.training
        encoder.eval()
        out = []
        with gathered(trainer):  # FSDP: the full weights on every rank while it runs (not while exporting)
            for feats, lens in self.probe_set(trainer):
                frames, frame_lens = encoder(feats.to(pl_module.device), lens.to(pl_module.device))  # (B, T', D)
                valid = length_mask(frame_lens, frames.shape[1])
                out.append(frames[valid].double().cpu())
        encoder.train(was_training)
        return evenly_spaced(torch.cat(out), self.max_frames)

    # ---- hooks -----------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step < self.warmup_steps or step % self.every_n_steps or step == self.last_check:
            return
        self.check(trainer, pl_module, step)

    @measured
    def check(self, trainer, pl_module, step: int, final: bool = False) -> dict:
        """One drift check at `step`; exports a snapshot when CKA < threshold (or when final)."""
        self.last_check = step
        frames = self.encoder_frames(trainer, pl_module)
        first = self.reference is None
        cka = 1.0 if first else linear_cka(frames, self.reference, debiased=self.debiased)
        # every rank probes the same batches (probe_dataloader); rank zero's number decides, for bitwise agreement
        cka = float(trainer.strategy.broadcast(torch.tensor(cka), src=0))
        nse = normalized_spectral_entropy(frames)
        entry = {"step": step, "cka": cka, "nse": nse, "snapshot": None, "threshold": self.threshold}
        if first:
            self.reference = frames
            if self.export_reference or final:
                with full_weights(pl_module):  # every rank enters (FSDP gathers); rank zero writes
                    entry["snapshot"] = self.export(pl_module, step, cka, nse, final)
        elif final or cka < self.threshold:
            with full_weights(pl_module):
                entry["snapshot"] = self.export(pl_module, step, cka, nse, final)
            self.reference = frames
        self.history.append(entry)
        if not final:
            pl_module.log("drift/cka", cka, rank_zero_only=True)
            pl_module.log("drift/nse_encoder", nse, rank_zero_only=True)
        self._append_log(pl_module, entry)
        return entry

    def on_train_end(self, trainer, pl_module) -> None:
        # (when the last check exported at this very step, the final export rewrites that snapshot, same
        # weights, marked final; a run that ends before its first check exports from that first check)
        self.check(trainer, pl_module, trainer.global_step, final=True)

    # ---- outputs ---------------------------------------------------------------------------
    @rank_zero_only
    def export(self, pl_module, step: int, cka: float, nse: float, final: bool) -> str:
        """Write the snapshot's weights, then its JSON (the completeness marker); returns the JSON path."""
        out = self.snapshot_dir(pl_module)
        marker = out / f"snapshot-step{step:08d}.json"
        files, sums = {}, {}
        if final and self._exported_step == step and marker.exists():
            # the last check already exported these very weights at this step: only the marker changes (to
            # final). Rewriting the files would change their checksums (safetensors orders its metadata keys
            # anew at each save), and a hot-swap that took the snapshot at this step would no longer see it
            # as the same one, marked final.
            previous = json.loads(marker.read_text())
            files, sums = previous["files"], previous["sha256"]
        else:
            for c in ("encoder", "ctc_head"):
                module = getattr(pl_module.net, c, None)
                if module is None:
                    continue
                path = save_component(module, out / f"{c}-step{step:08d}.safetensors", c, pl_module.export_meta(c))
                files[c], sums[c] = path.name, sha256_file(path)
        self._exported_step = step
        meta = {"step": step, "cka": cka, "nse": nse, "final": final, "threshold": self.threshold, "files": files,
                "sha256": sums}
        atomic_write_json(marker, meta)
        log.info("CKA drift: step %d, CKA %.4f -> snapshot %s%s", step, cka, marker, " (final)" if final else "")
        pl_module.print(f"[drift] step {step}: CKA {cka:.4f}, NSE {nse:.4f} -> snapshot {marker.name}"
                        + (" (final)" if final else ""))
        return str(marker)

    @rank_zero_only
    def _append_log(self, pl_module, entry: dict) -> None:
        append_jsonl(self.snapshot_dir(pl_module) / "drift.jsonl", entry)
        plot_drift(self.history, Path(pl_module.trainer.default_root_dir) / "drift.png", threshold=self.threshold)

    # ---- resume ----------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 and trainer.is_global_zero:  # resumed from a checkpoint
            quarantine_after(self.snapshot_dir(pl_module), trainer.global_step)

    def state_dict(self) -> dict:
        return {"reference": self.reference, "history": list(self.history), "last_check": self.last_check}

    def load_state_dict(self, state_dict: dict) -> None:
        self.reference = state_dict.get("reference")
        self.history = list(state_dict.get("history", []))
        self.last_check = state_dict.get("last_check", -1)
