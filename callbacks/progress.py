"""Progress as plain lines, for logs: a terminal bar redraws one line with carriage returns, which a log
file (or the pipeline's background stage log) shows as nothing for minutes, then one enormous line."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar


def progress_line(stage: str, step: int, total: int | None, seconds_per_step: float | None, metrics: dict) -> str:
    """"[stage] step 120/400 (30%) | 0.41 s/step, 1m 55s left | train/loss 2.31": what one progress line says."""
    parts = [f"[{stage}] step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total else "")]
    if seconds_per_step is not None:
        left = f", {_duration(seconds_per_step * (total - step))} left" if total and total > step else ""
        parts.append(f"{seconds_per_step:.2f} s/step{left}")
    shown = [f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))]
    if shown:
        parts.append(" ".join(shown))
    return " | ".join(parts)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


class LineProgress(ProgressBar):
    """Lightning's progress bar as one line every `every_s` seconds (and at each validation's end)."""

    def __init__(self, every_s: float = 30.0):
        super().__init__()
        self.every_s = every_s
        self._enabled = True
        self._t0 = self._last = 0.0
        self._start_step = 0

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args, **kwargs) -> None:  # LightningModule.print goes through an enabled bar: plain lines
        print(*args, **kwargs, flush=True)

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _stage(self, pl_module) -> str:
        return getattr(pl_module, "stage", type(pl_module).__name__)

    def _metrics(self, trainer, pl_module) -> dict:
        items = self.get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return {k: float(v) for k, v in items.items() if isinstance(v, (int, float))}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._last = time.monotonic()
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last < self.every_s or not trainer.is_global_zero:
            return
        self._last = now
        self._emit(trainer, pl_module, now)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._enabled and not trainer.sanity_checking and trainer.is_global_zero and trainer.state.fn == "fit":
            self._emit(trainer, pl_module, time.monotonic())

    def _emit(self, trainer, pl_module, now: float) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        done = trainer.global_step - self._start_step  # a resumed run times only its own steps
        per = (now - self._t0) / done if done > 0 else None
        print(progress_line(self._stage(pl_module), trainer.global_step, total, per, self._metrics(trainer, pl_module)),
              flush=True)
