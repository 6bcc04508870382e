"""Encoder hot-swap (docs/method.md, IA-SFT), a callback for the IA-SFT run.

Watches a snapshot directory written by the CKA drift monitor (callbacks/cka_drift.py) of a
pretraining run that may still be going. At each step boundary (every `poll_every_n_steps`), it
takes the newest *complete* snapshot newer than the current one: its JSON marker exists and
parses, its encoder file exists and matches the recorded sha256. It loads it into the frozen
encoder through the module's `swap_encoder` (strict shapes; the optimizer state of the trained
parts is untouched because the encoder is never in it). A half-written or corrupt snapshot is
skipped with one warning, never a crash. The swaps made are kept in the checkpoint, so a
resumed run continues on the same snapshot; `final_swapped` says the final one is in.

Each swap is logged (hot_swap/snapshot_step at the IA-SFT step) and appended to
`<run dir>/swaps.jsonl` {step, snapshot_step, marker, final}. With `final_by_step`, the run waits at
that step for pretraining's final snapshot, so the steps after it train on the final encoder.

Across ranks (DDP, FSDP): rank 0 alone reads the snapshot directory and decides, at each poll,
which snapshot (step, marker, checksum) comes in; the decision is broadcast, and every rank loads
that snapshot at the same step boundary after checking the checksum of the file it reads. Waiting
and giving up are decided the same way, so ranks never train against different encoders and never
disagree about whether to stop.

Replay (`replay_start`, `replay_pace`): the snapshots of a pretraining run that has finished are
revealed as if it were still running beside this one: at IA-SFT step s, only snapshots of
pretraining step <= replay_start + replay_pace * s are visible (the final one also from
`final_by_step` on). The swaps are then a function of the steps alone, so runs are
bit-reproducible and ablations can share one pretraining run (experiments/reproduce.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import lightning as L

from callbacks.common import append_jsonl, log_to_loggers
from entropy_asr.errors import UserError, UserFileNotFound
from entropy_asr.model.export import sha256_file

log = logging.getLogger(__name__)


class ProducerStatus:
    """What a hot-swap and the pipeline running the snapshots' producer (pretraining) beside it tell each other
    (experiments/pipeline.py hands one to the stage's EncoderHotSwap callbacks through run(producer=...)).

    `waiting` is set while a hot-swap blocks waiting for a snapshot: the pipeline hands the idle cores to
    pretraining meanwhile. `fail(message)` says the pretraining process died: waiting is then pointless.
    """

    def __init__(self):
        self.waiting = threading.Event()
        self.failure: str | None = None

    def fail(self, message: str) -> None:
        self.failure = message

    def __reduce__(self):  # a copy in another process is that process's own, fresh status (an Event does not pickle)
        return type(self), ()


def _marker_step(marker: Path) -> int | None:
    try:
        return int(marker.stem.removeprefix("snapshot-step"))
    except ValueError:
        return None


def _check_marker(meta, step: int) -> None:
    """A marker's fields as the drift monitor writes them, or ValueError (a bad marker, of any kind, is skipped):
    its step (the file name's), its files (bare names inside the snapshot dir, an encoder among them) and a
    checksum for each."""
    if not isinstance(meta, dict) or type(meta.get("step")) is not int or meta["step"] != step:
        raise UserError(f"the marker's step {meta.get('step') if isinstance(meta, dict) else meta!r} is not the "
                        f"file name's {step}")
    files, sums = meta.get("files"), meta.get("sha256")
    if not isinstance(files, dict) or "encoder" not in files or not isinstance(sums, dict):
        raise UserError("the marker names no encoder file, or no checksums")
    for component, name in files.items():
        if not isinstance(name, str) or Path(name).name != name or name.startswith(".") or "\\" in name:
            raise UserError(f"files.{component} {name!r} is not a file name inside the snapshot dir")
        if not isinstance(sums.get(component), str):
            raise TypeError(f"no sha256 for files.{component}")


def complete_snapshots(directory: str | Path, after_step: int = -1, skip: set | None = None) -> list[dict]:
    """Markers of the complete snapshots in `directory` past `after_step`, by step: each {step, final, path, ...}.

    A marker that does not parse, or whose encoder file is missing or fails its checksum, is left
    out with a warning, and added to `skip` (as (name, mtime)) so a later call does not re-hash it.
    Only markers past `after_step` are read, so an encoder file is hashed once, not at every poll.
    """
    out = []
    for marker in sorted(Path(directory).glob("snapshot-step*.json")):
        step = _marker_step(marker)
        if step is None or step <= after_step:
            continue
        try:
            key = (marker.name, marker.stat().st_mtime_ns)
        except OSError:  # removed since the listing
            continue
        if skip is not None and key in skip:
            continue
        try:
            meta = json.loads(marker.read_text())
            _check_marker(meta, step)
            encoder = marker.parent / meta["files"]["encoder"]
            for component, name in meta["files"].items():  # the encoder and what goes with it (its CTC head)
                if sha256_file(marker.parent / name) != meta["sha256"][component]:
                    raise UserError(f"checksum mismatch for {name}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("hot-swap: skipping snapshot %s (%s)", marker.name, e)
            if skip is not None:
                skip.add(key)
            continue
        out.append({**meta, "path": str(encoder), "marker": marker.name})
    return sorted(out, key=lambda m: m["step"])


def _world(pl_module):
    """The trainer when several processes train together, else None."""
    try:
        trainer = pl_module.trainer
    except RuntimeError:  # a module outside a fit
        return None
    return trainer if getattr(trainer, "world_size", 1) > 1 else None


def _is_rank_zero(pl_module) -> bool:
    trainer = _world(pl_module)
    return trainer is None or trainer.is_global_zero


def _from_rank_zero(pl_module, obj):
    """`obj` as rank 0 has it, on every rank (itself when there is one process)."""
    trainer = _world(pl_module)
    return obj if trainer is None else trainer.strategy.broadcast(obj, src=0)


class EncoderHotSwap(L.Callback):
    """Swap newer complete encoder snapshots from `snapshot_dir` into the IA-SFT run at step boundaries.

    Args:
        snapshot_dir: the pretraining run's snapshot directory (export/snapshots).
        poll_every_n_steps: look for a new snapshot this often (step boundaries only).
        wait_for_first_s: at the start of a fresh run, wait this long for a first complete
            snapshot (pretraining may still be warming up), then swap it in before step 0; 0 =
            start on the configured encoder without waiting.
        wait_poll_s: how often to look while waiting.
        final_by_step: at this step boundary, if the final snapshot is not in yet, wait for it (up
            to wait_for_final_s), so that the remaining steps train on pretraining's final encoder.
        wait_for_final_s: how long to wait there before giving up with an error.
        replay_start / replay_pace: replay a finished pretraining run (see the module docstring):
            pretraining's step at IA-SFT step 0, and its steps per IA-SFT step. Nothing waits in
            replay: a snapshot that should be visible and is missing is an error.
    """

    def __init__(self, snapshot_dir: str, poll_every_n_steps: int = 1, wait_for_first_s: float = 0.0,
                 wait_poll_s: float = 10.0, final_by_step: int | None = None, wait_for_final_s: float = 3600.0,
                 replay_start: int | None = None, replay_pace: float = 1.0):
        if poll_every_n_steps < 1 or wait_for_first_s < 0 or wait_poll_s <= 0 or wait_for_final_s < 0:
            raise UserError(f"EncoderHotSwap: poll_every_n_steps must be >= 1, wait_for_first_s and wait_for_final_s "
                            f">= 0 and wait_poll_s > 0, got {poll_every_n_steps}, {wait_for_first_s}, "
                            f"{wait_for_final_s}, {wait_poll_s}")
        if final_by_step is not None and final_by_step < 0:
            raise UserError(f"EncoderHotSwap: final_by_step must be >= 0, got {final_by_step}")
        if replay_start is not None and (replay_start < 0 or replay_pace <= 0):
            raise UserError(f"EncoderHotSwap: replay_start must be >= 0 and replay_pace > 0, got {replay_start}, "
                            f"{replay_pace}")
        self.replay_start, self.replay_pace = replay_start, replay_pace
        self.snapshot_dir, self.poll_every_n_steps = snapshot_dir, poll_every_n_steps
        self.wait_for_first_s, self.wait_poll_s = wait_for_first_s, wait_poll_s
        self.final_by_step, self.wait_for_final_s = final_by_step, wait_for_final_s
        self.current: dict | None = None  # the marker of the snapshot now in the encoder
        self.waited_s = 0.0  # time spent blocked waiting for snapshots (not training)
        self._rejected: set = set()  # (marker name, mtime) of damaged snapshots, warned about once
        self.producer = ProducerStatus()  # its own unless follow() hands it a pipeline's

    def follow(self, producer: ProducerStatus) -> None:
        """Share `producer` with the pipeline running pretraining beside this run (see ProducerStatus)."""
        self.producer = producer

    @property
    def state_key(self) -> str:
        return f"EncoderHotSwap{{{self.snapshot_dir}}}"

    @property
    def final_swapped(self) -> bool:
        """Whether the snapshot now in the encoder is pretraining's final one."""
        return bool(self.current and self.current.get("final"))

    def on_fit_start(self, trainer, pl_module) -> None:
        # (on resume the checkpoint has restored the swapped encoder's weights and self.current already)
        if not hasattr(pl_module, "swap_encoder"):
            raise UserError(f"EncoderHotSwap needs a stage with swap_encoder (IASFT), got {type(pl_module).__name__}")
        d = Path(self.snapshot_dir)
        # a live pretraining run makes export/snapshots at its first export, but its run dir exists from the start:
        # nothing along the path means a wrong path, which would train on the configured encoder all run long
        if not d.is_dir() and (self.replay_start is not None or not (d.parent.is_dir() or d.parent.parent.is_dir())):
            raise UserFileNotFound(f"EncoderHotSwap: snapshot_dir {d} does not exist"
                                   + ("" if self.replay_start is not None else " (nor its run dir)")
                                   + "; point it at the pretraining run's export/snapshots")
        if self.current is None and self.wait_for_first_s > 0:
            self.wait_for_first(pl_module)

    def wait_for_first(self, pl_module) -> dict:
        """Block until a complete snapshot exists (then swap it in), or raise after wait_for_first_s."""
        pl_module.print(f"[hot-swap] waiting up to {self.wait_for_first_s:g} s for a first encoder snapshot in "
                        f"{self.snapshot_dir} (is pretraining with the CKA drift monitor running?)")
        return self._wait(pl_module, self.wait_for_first_s, lambda snap: snap is not None,
                          f"no complete encoder snapshot appeared in {self.snapshot_dir} within "
                          f"{self.wait_for_first_s:g} s; start pretraining with callbacks.CKADriftMonitor writing "
                          f"there, or raise wait_for_first_s")

    def wait_for_final(self, pl_module) -> dict:
        """Block until pretraining's final snapshot is swapped in, or raise after wait_for_final_s."""
        pl_module.print(f"[hot-swap] step {pl_module.global_step} (final_by_step): waiting up to "
                        f"{self.wait_for_final_s:g} s for pretraining's final snapshot in {self.snapshot_dir}")
        return self._wait(pl_module, self.wait_for_final_s, lambda snap: self.final_swapped,
                          f"pretraining's final snapshot did not appear in {self.snapshot_dir} within "
                          f"{self.wait_for_final_s:g} s (final_by_step {self.final_by_step}); is pretraining still "
                          f"running? Raise wait_for_final_s, or drop final_by_step to go on without it")

    def _wait(self, pl_module, seconds: float, done, message: str) -> dict:
        if self.replay_start is not None:  # a finished run: what is not there will not come
            snap = self.poll(pl_module)
            if done(snap):
                return snap or self.current
            raise UserFileNotFound(f"EncoderHotSwap (replay): {message.split(' within ')[0]} (replay expects a "
                                   f"finished pretraining run)")
        deadline = time.monotonic() + seconds
        t0 = time.monotonic()
        self.producer.waiting.set()
        try:
            while True:
                snap = self.poll(pl_module)  # collective: every rank gets rank 0's decision
                if done(snap):
                    pl_module.print(f"[hot-swap] waited {time.monotonic() - t0:.0f} s")
                    return snap or self.current
                stop = None  # rank 0's clock and pipeline decide when to give up, for every rank
                if self.producer.failure:
                    why = self.producer.failure
                    stop = ("failed", f"EncoderHotSwap: stopped waiting for a snapshot in {self.snapshot_dir}: {why}")
                elif time.monotonic() >= deadline:
                    stop = ("timeout", f"EncoderHotSwap: {message}")
                stop = _from_rank_zero(pl_module, stop)
                if stop is not None:
                    raise (TimeoutError if stop[0] == "timeout" else RuntimeError)(stop[1])
                time.sleep(min(self.wait_poll_s, max(0.0, deadline - time.monotonic())))
        finally:
            self.producer.waiting.clear()
            self.waited_s += time.monotonic() - t0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step % self.poll_every_n_steps == 0:
            self.poll(pl_module)
        if self.final_by_step is not None and trainer.global_step >= self.final_by_step and not self.final_swapped:
            self.wait_for_final(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.final_swapped:
            at = self.current["marker"] if self.current else "the configured encoder"
            pl_module.print(f"[hot-swap] IA-SFT ended on {at}, not on pretraining's final snapshot (set "
                            f"final_by_step to wait for it)")

    def _refresh_final(self) -> None:
        """The current snapshot may have been re-marked final since (same step, same weights)."""
        if self.current is None or self.current.get("final"):
            return
        try:
            meta = json.loads((Path(self.snapshot_dir) / self.current["marker"]).read_text())
        except (OSError, ValueError):
            return
        if meta.get("final") and meta.get("sha256", {}).get("encoder") == self.current.get("sha256"):
            self.current["final"] = True

    def _decide(self, step: int) -> dict:
        """Rank 0's look at the directory: {"final": the current snapshot was re-marked final, "snap": the newest
        visible complete snapshot newer than the current one, or None}."""
        was_final = self.final_swapped
        self._refresh_final()
        refreshed = self.final_swapped and not was_final
        done = self.current["step"] if self.current else -1
        newer = [s for s in complete_snapshots(self.snapshot_dir, after_step=done, skip=self._rejected)
                 if self.visible(s, step)]
        return {"final": refreshed, "snap": newer[-1] if newer else None}

    def poll(self, pl_module) -> dict | None:
        """Swap in the newest complete snapshot newer than the current one; returns its marker, or None.

        Collective under several ranks: call it at the same step on every rank (step boundaries are).
        """
        decision = self._decide(pl_module.global_step) if _is_rank_zero(pl_module) else None
        decision = _from_rank_zero(pl_module, decision)
        if decision["final"] and self.current is not None:
            self.current["final"] = True  # (rank 0 set it already)
        snap = decision["snap"]
        if snap is None:
            if decision["final"]:
                pl_module.print(f"[hot-swap] step {pl_module.global_step}: {self.current['marker']} (already in) "
                                "is pretraining's final snapshot")
                self._record(pl_module)
            return None
        if not _is_rank_zero(pl_module):  # rank 0 checked it; each other rank checks what it reads
            for component, name in snap["files"].items():
                got = sha256_file(Path(self.snapshot_dir) / name)
                if got != snap["sha256"][component]:
                    raise RuntimeError(f"EncoderHotSwap: rank {pl_module.global_rank} reads {name} with checksum "
                                       f"{got[:12]}, not the {snap['sha256'][component][:12]} rank 0 swapped in "
                                       f"(was it rewritten meanwhile? is {self.snapshot_dir} the same on every node?)")
        try:  # (every rank reads the same files: they all fail alike, and all keep the current encoder)
            pl_module.swap_encoder(str(Path(self.snapshot_dir) / snap["files"]["encoder"]))  # this rank's view
        except (ValueError, FileNotFoundError) as e:  # intact but not this run's encoder (size, component): skip it
            log.warning("hot-swap: skipping snapshot %s (%s)", snap["marker"], e)
            marker = Path(self.snapshot_dir) / snap["marker"]
            if marker.exists():
                self._rejected.add((marker.name, marker.stat().st_mtime_ns))
            return None
        self.current = {"step": snap["step"], "final": bool(snap.get("final")), "path": snap["path"],
                        "marker": snap["marker"], "sha256": snap["sha256"]["encoder"]}
        pl_module.print(f"[hot-swap] step {pl_module.global_step}: encoder <- {snap['marker']} (pretraining step "
                        f"{snap['step']}{', final' if self.final_swapped else ''})")
        self._record(pl_module)
        return snap

    def visible(self, snap: dict, step: int) -> bool:
        """Whether a snapshot may be swapped in at this IA-SFT step (always, unless replaying)."""
        if self.replay_start is None:
            return True
        if snap.get("final") and self.final_by_step is not None and step >= self.final_by_step:
            return True
        return snap["step"] <= self.replay_start + self.replay_pace * step

    def _record(self, pl_module) -> None:
        """Log the swap (IA-SFT step, snapshot step) to the loggers and to <run dir>/swaps.jsonl."""
        trainer = pl_module.trainer
        step = int(pl_module.global_step)
        entry = {"step": step, "snapshot_step": self.current["step"], "marker": self.current["marker"],
                 "final": self.final_swapped}
        log_to_loggers(trainer, {"hot_swap/snapshot_step": float(self.current["step"])}, step)
        if trainer.is_global_zero:
            append_jsonl(Path(trainer.default_root_dir) / "swaps.jsonl", entry)

    def state_dict(self) -> dict:
        return {"current": self.current}

    def load_state_dict(self, state_dict: dict) -> None:
        self.current = state_dict.get("current")

