"""Spectral entropy logger: NSE and effective rank of the encoder, adapter and LLM on a probe set.

Every `every_n_steps`, the first `probe_batches` validation batches go through the model in eval
mode, and for each representation present the frames/tokens of real audio (padding masked) give
entropy/nse_<name> and entropy/erank_<name> (entropy_asr/metrics/spectral.py):

- encoder: the encoder's output frames (25 Hz);
- adapter: the adapter's speech tokens (25/k Hz);
- llm: the LLM's last hidden layer at the speech token positions of the prompt.

The same series goes to <run dir>/entropy.jsonl, one line per check, and <run dir>/entropy.png.
"""

from __future__ import annotations

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
from entropy_asr.io import read_jsonl_log
from entropy_asr.metrics import spectral_summary
from entropy_asr.model.masks import length_mask
from entropy_asr.model.prompt import build_generation_inputs
from entropy_asr.plots import plot_series
from lightning_modules.strategies import gathered


def _stats(frames: torch.Tensor, max_frames: int) -> dict[str, float]:
    x = evenly_spaced(frames.double(), max_frames)
    return {**spectral_summary(x), "frames": frames.shape[0]}


@torch.no_grad()
def representation_spectra(net, probe: list[tuple[torch.Tensor, torch.Tensor]], device,
                           max_frames: int = 4096) -> dict[str, dict[str, float]]:
    """{name: {nse, effective_rank, rankme, frames}} for encoder / adapter / llm (those the model has)."""
    rows: dict[str, list[torch.Tensor]] = {"encoder": [], "adapter": [], "llm": []}
    for feats, lens in probe:
        frames, frame_lens = net.encode(feats.to(device), lens.to(device))  # (B, T', D)
        valid = length_mask(frame_lens, frames.shape[1])
        rows["encoder"].append(frames[valid].float().cpu())
        if net.adapter is None:
            continue
        speech, speech_lens = net.adapt(frames, frame_lens)  # (B, N, H)
        valid = length_mask(speech_lens, speech.shape[1])
        rows["adapter"].append(speech[valid].float().cpu())
        if net.llm is None:
            continue
        # left-padded prompt: sample b's speech sits at the P positions after its padding and prefix
        inputs = build_generation_inputs(net.prompt, net.llm.get_input_embeddings(), speech.to(net.llm.dtype),
                                         speech_lens)
        hidden = net.llm(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]  # (B, L, H)
        pad = inputs["attention_mask"].shape[1] - inputs["attention_mask"].sum(1)  # (B,) left padding
        start = pad + len(net.prompt.prefix_ids)  # (B,)
        pos = torch.arange(hidden.shape[1], device=device)[None, :]
        at_speech = (pos >= start[:, None]) & (pos < (start + speech_lens)[:, None])
        rows["llm"].append(hidden[at_speech].float().cpu())
    return {name: _stats(torch.cat(r), max_frames) for name, r in rows.items() if r}


class SpectralEntropyLogger(MeasuredCallback):
    """Log entropy/nse_* and entropy/erank_* of the model's representations every N steps.

    Args:
        every_n_steps: check interval in optimizer steps.
        probe_batches: validation batches that form the fixed probe set.
        max_frames: frames/tokens kept per representation (evenly spaced).
    """

    def __init__(self, every_n_steps: int = 500, probe_batches: int = 2, max_frames: int = 4096):
        if every_n_steps < 1 or probe_batches < 1 or max_frames < 2:
            raise UserError(f"SpectralEntropyLogger: every_n_steps and probe_batches must be >= 1 and max_frames "
                            f">= 2, got {every_n_steps}, {probe_batches}, {max_frames}")
        self.every_n_steps, self.probe_batches, self.max_frames = every_n_steps, probe_batches, max_frames
        self._probe: list | None = None

    def probe_set(self, trainer) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._probe is None:
            self._probe = first_validation_batches(trainer, self.probe_batches, "SpectralEntropyLogger")
        return self._probe

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.check(trainer, pl_module)

    @measured
    def check(self, trainer, pl_module) -> None:
        step = trainer.global_step
        was_training = pl_module.training
        pl_module.eval()
        with gathered(trainer):  # FSDP: the full weights on every rank while it runs
            spectra = representation_spectra(pl_module.net, self.probe_set(trainer), pl_module.device, self.max_frames)
        pl_module.train(was_training)
        for name, stats in spectra.items():
            pl_module.log(f"entropy/nse_{name}", stats["nse"])
            pl_module.log(f"entropy/erank_{name}", stats["effective_rank"])
        self._append(trainer, {"step": step, **spectra})

    @rank_zero_only
    def _append(self, trainer, entry: dict) -> None:
        path = append_jsonl(Path(trainer.default_root_dir) / "entropy.jsonl", entry)
        plot_series(read_jsonl_log(path),
                    [f"{n}/{k}" for k in ("nse", "effective_rank") for n in ("encoder", "adapter", "llm")],
                    path.with_suffix(".png"), "spectral entropy of the representations")
