"""Faults end to end on tiny configs (the worst faults, through run.py as a user runs it): a run killed
with SIGKILL resumes as the same run (metrics.csv keeps what was logged, snapshots from past the checkpoint are
quarantined); NaN gradients and NaN weights never reach a checkpoint; a damaged or NaN checkpoint is refused; a
second writer on a run dir is refused and a killed run's lock is taken over."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from callbacks.cka_drift import quarantine_after
from callbacks.hot_swap import complete_snapshots
from experiments.run import RunCSVLogger
from tests.ddp_helpers import publish_snapshot
from tests.stage_helpers import (
    ENC,
    ROOT,
    common,
    llm_stage_args,
    small_models,
)
from tests.test_callbacks import write_snapshot


def test_quarantine_moves_later_snapshots_and_drift_lines_aside_and_keeps_the_rest(tmp_path):
    for step in (10, 20, 30, 40):
        write_snapshot(tmp_path, step, seed=step)
    (tmp_path / "drift.jsonl").write_text("".join(json.dumps({"step": s, "cka": 0.9}) + "\n" for s in (10, 20, 30, 40)))
    aside = quarantine_after(tmp_path, 20)
    assert [m["step"] for m in complete_snapshots(tmp_path)] == [10, 20]  # what a hot-swap can still see
    assert sorted(p.name for p in aside.iterdir()) == [
        "NOTE.txt", "drift.jsonl", "encoder-step00000030.safetensors", "encoder-step00000040.safetensors",
        "snapshot-step00000030.json", "snapshot-step00000040.json"]
    assert [json.loads(ln)["step"] for ln in (tmp_path / "drift.jsonl").read_text().splitlines()] == [10, 20]
    assert [json.loads(ln)["step"] for ln in (aside / "drift.jsonl").read_text().splitlines()] == [30, 40]
    assert "step-20 checkpoint" in (aside / "NOTE.txt").read_text()
    assert quarantine_after(tmp_path, 20) is None  # nothing left to move


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_appends_on_resume_and_moves_an_old_log_aside_on_a_fresh_run(tmp_path):
    first = RunCSVLogger(str(tmp_path))
    for step in range(0, 50, 10):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    # resumed from the step-30 checkpoint: steps 30 and 40 are trained again, with a new metric too
    resumed = RunCSVLogger(str(tmp_path), resume=True)
    resumed.log_metrics({"train/loss": 300.0, "val/per": 0.5}, step=30)
    resumed.save()
    resumed.log_metrics({"train/loss": 400.0}, step=40)
    resumed.save()
    rows = _rows(tmp_path / "metrics.csv")
    assert [(int(r["step"]), float(r["train/loss"])) for r in rows] == [(0, 0.0), (10, 10.0), (20, 20.0), (30, 300.0),
                                                                        (40, 400.0)]
    assert rows[3]["val/per"] == "0.5" and rows[0]["val/per"] == ""
    fresh = RunCSVLogger(str(tmp_path))  # a new run in the same dir: the old log is kept beside it
    fresh.log_metrics({"train/loss": 1.0}, step=0)
    fresh.save()
    assert len(_rows(tmp_path / "metrics.csv")) == 1
    old = list(tmp_path.glob("metrics-*.csv"))
    assert len(old) == 1 and len(_rows(old[0])) == 5


def test_a_killed_pretraining_run_resumes_with_its_logs_and_without_stale_snapshots(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    syn = json.dumps({"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    drift = {"class_path": "callbacks.CKADriftMonitor",
             "init_args": {"every_n_steps": 2, "threshold": 1.0, "warmup_steps": 2, "probe_batches": 1}}
    kill = {"class_path": "tests.ddp_helpers.KillAt", "init_args": {"step": 9}}
    base = [sys.executable, str(ROOT / "experiments" / "run.py"),
            "--config", str(ROOT / "experiments/tiny/pretrain_ctc.yaml"),
            "--run_dir", str(run_dir), "--trainer.max_steps", "12", "--checkpoint.every_n_train_steps", "5",
            "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0", "--test", "false",
            "--trainer.enable_progress_bar", "false", "--wandb", "disabled",
            "--model.init_args.encoder", json.dumps(ENC), "--data.init_args.synthetic", syn,
            "--data.init_args.num_workers", "0", "--data.init_args.batches_per_epoch", "4"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    whole = [*base[:base.index("--run_dir") + 1], str(tmp_path / "whole"), *base[base.index("--run_dir") + 2:]]
    uninterrupted = subprocess.run([*whole, "--trainer.callbacks", json.dumps([drift])], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=600, check=False)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    killed = subprocess.run([*base, "--trainer.callbacks", json.dumps([drift, kill])], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    snaps = run_dir / "export" / "snapshots"
    before = {p.name: p.read_bytes() for p in snaps.glob("*-step00000006.safetensors")}
    assert before and (snaps / "snapshot-step00000008.json").exists()  # exported after the step-5 checkpoint
    resumed = subprocess.run([*base, "--trainer.callbacks", json.dumps([drift]), "--ckpt_path", "last"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 12
    # the killed run's snapshots 6 and 8 are aside, untouched; the directory holds the resumed run's
    (aside,) = snaps.glob("quarantine-step00000005-*")
    assert {p.name: p.read_bytes() for p in aside.glob("*-step00000006.safetensors")} == before
    assert (aside / "snapshot-step00000008.json").exists() and (aside / "NOTE.txt").exists()
    assert [m["step"] for m in complete_snapshots(snaps)] == [2, 4, 6, 8, 10, 12]
    # every step's training loss is logged once: the killed run's up to its checkpoint, the resumed run's after
    steps = [int(r["step"]) for r in _rows(run_dir / "metrics.csv") if r.get("train/loss")]
    assert steps == sorted(set(steps)) and set(range(12)) <= set(steps), steps
    # and they are the uninterrupted run's: the same batches (the data stream resumes mid-epoch: 4 batches an epoch,
    # checkpoint at step 5) and the same random draws, so the same losses and the same final weights
    losses = {int(r["step"]): float(r["train/loss"]) for r in _rows(run_dir / "metrics.csv") if r.get("train/loss")}
    want = {int(r["step"]): float(r["train/loss"]) for r in _rows(tmp_path / "whole" / "metrics.csv")
            if r.get("train/loss")}
    assert losses == pytest.approx(want, rel=1e-5), (losses, want)
    final = load_file(run_dir / "export" / "encoder.safetensors")
    for k, v in load_file(tmp_path / "whole" / "export" / "encoder.safetensors").items():
        torch.testing.assert_close(final[k], v, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # the module's default part stays under a minute; pytest -m slow runs it
def test_ia_sft_killed_mid_run_with_swaps_resumes_as_the_uninterrupted_run(exports, tiny_corpus, tmp_path):
    # replayed snapshots at pretraining steps 10, 20, 30 (visible at IA-SFT steps 2, 4, 6); checkpoint at step 5,
    # killed at step 7: the resumed run keeps the step-4 swap, makes the step-6 one, and matches the whole run
    snaps = tmp_path / "snapshots"
    for step in (10, 20, 30):
        publish_snapshot(snaps, exports["encoder"], exports["ctc_snapshot"], step, final=step == 30)
    swap = {"class_path": "callbacks.EncoderHotSwap",
            "init_args": {"snapshot_dir": str(snaps), "poll_every_n_steps": 1, "replay_start": 0, "replay_pace": 5.0}}
    kill = {"class_path": "tests.ddp_helpers.KillAt", "init_args": {"step": 7}}
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}

    def ia_sft(run_dir: Path, callbacks: list, *extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), *llm_stage_args("ia_sft", exports, run_dir),
               "--trainer.callbacks", json.dumps(callbacks),
               "--trainer.max_steps", "9", "--checkpoint.every_n_train_steps", "5", "--trainer.log_every_n_steps", "1",
               "--trainer.limit_val_batches", "0", "--test", "false", "--wandb", "disabled",
               "--data.init_args.batches_per_epoch", "4", *common(tiny_corpus), *small_models("ia_sft"), *extra]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)

    whole = ia_sft(tmp_path / "whole", [swap])
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = ia_sft(tmp_path / "run", [swap, kill])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = ia_sft(tmp_path / "run", [swap], "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def swaps(run: Path) -> list[tuple]:
        return [(e["step"], e["snapshot_step"])
                for e in map(json.loads, (run / "swaps.jsonl").read_text().splitlines())]

    assert swaps(tmp_path / "whole") == [(2, 10), (4, 20), (6, 30)]
    # the killed run logged the step-6 swap before dying; the resumed one makes it again, from the step-5 state
    assert swaps(tmp_path / "run") == [(2, 10), (4, 20), (6, 30), (6, 30)]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [s["step"] for s in results["encoder_swaps"]] == [2, 4, 6]
    losses = {int(r["step"]): float(r["train/loss"]) for r in _rows(tmp_path / "run" / "metrics.csv")
              if r.get("train/loss")}
    want = {int(r["step"]): float(r["train/loss"]) for r in _rows(tmp_path / "whole" / "metrics.csv")
            if r.get("train/loss")}
    assert losses == pytest.approx(want, rel=1e-5)
    for name in ("adapter.safetensors", "encoder.safetensors"):
        got, ref = load_file(tmp_path / "run" / "export" / name), load_file(tmp_path / "whole" / "export" / name)
        for k, v in ref.items():
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-6)


def test_a_run_dir_in_use_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    import socket

    from experiments.run import RunDirBusy, run_dir_lock

    lock = tmp_path / ".lock"
    with run_dir_lock(tmp_path):
        held = json.loads(lock.read_text())
        assert held["pid"] == os.getpid()
        with pytest.raises(RunDirBusy, match=f"in use by pid {os.getpid()}"), run_dir_lock(tmp_path):
            pass
    assert not lock.exists()  # released
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    lock.write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(), "started": "earlier"}))
    with run_dir_lock(tmp_path):  # the holder is gone (a crash): taken over, with a warning
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert any("taking over the lock" in r.message for r in caplog.records)
    lock.write_text(json.dumps({"pid": 1, "host": "another-node", "started": "earlier"}))
    with pytest.raises(RunDirBusy, match="another-node"), run_dir_lock(tmp_path):
        pass


def _pretrain_cmd(tiny_corpus, run_dir: Path, callbacks: list, *extra: str) -> list[str]:
    syn = json.dumps({"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    return [sys.executable, str(ROOT / "experiments" / "run.py"),
            "--config", str(ROOT / "experiments/tiny/pretrain_ctc.yaml"),
            "--run_dir", str(run_dir), "--trainer.max_steps", "8", "--checkpoint.every_n_train_steps", "2",
            "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0", "--test", "false",
            "--trainer.enable_progress_bar", "false", "--wandb", "disabled",
            "--model.init_args.encoder", json.dumps(ENC), "--model.init_args.max_bad_steps", "3",
            "--trainer.callbacks", json.dumps(callbacks),
            "--data.init_args.synthetic", syn, "--data.init_args.num_workers", "0", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # the module's default part stays under a minute; pytest -m slow runs it
def test_a_nan_gradient_skips_the_step_and_nan_weights_never_reach_a_checkpoint(tiny_corpus, tmp_path):
    def poison(step: int, what: str) -> dict:
        return {"class_path": "tests.ddp_helpers.Poison", "init_args": {"step": step, "what": what}}

    # a NaN gradient at step 3: that update is skipped, the run goes on and ends with finite weights
    grad = subprocess.run(_pretrain_cmd(tiny_corpus, tmp_path / "grad", [poison(3, "grad")]), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert grad.returncode == 0, grad.stderr[-3000:]
    results = json.loads((tmp_path / "grad" / "results.json").read_text())
    assert results["global_step"] == 8 and results["skipped_batches"] == 1
    assert all(torch.isfinite(v).all()
               for v in load_file(tmp_path / "grad" / "export" / "encoder.safetensors").values())
    # a weight turned NaN after step 4: the step-4 checkpoint is not written, the losses go NaN, the run stops;
    # last.ckpt is still step 2's, checks out, and the run resumes from it to the end
    run_dir = tmp_path / "weight"
    died = subprocess.run(_pretrain_cmd(tiny_corpus, run_dir, [poison(4, "weight")]), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert died.returncode != 0 and "consecutive batches had a NaN/inf loss" in died.stderr
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    resumed = subprocess.run(_pretrain_cmd(tiny_corpus, run_dir, [], "--ckpt_path", "last"), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 8
    # a damaged checkpoint is refused before it is loaded; one holding NaN weights is refused when read
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    flipped = subprocess.run(_pretrain_cmd(tiny_corpus, run_dir, [], "--trainer.max_steps", "10",
                                           "--ckpt_path", "last"),
                             cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert flipped.returncode == 2 and "does not match its checksum" in flipped.stderr
    state["state_dict"][next(iter(state["state_dict"]))].view(-1)[0] = float("nan")
    torch.save(state, run_dir / "checkpoints" / "bad.ckpt")
    nan = subprocess.run(_pretrain_cmd(tiny_corpus, run_dir, [], "--trainer.max_steps", "10", "--ckpt_path",
                                       str(run_dir / "checkpoints" / "bad.ckpt")),
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert nan.returncode == 2 and "holds NaN/inf weights" in nan.stderr and "bad.ckpt, last.ckpt" in nan.stderr


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the run ended (exit code {proc.returncode}) before {path.name} appeared"
        assert time.monotonic() - t0 < timeout_s, f"{path} did not appear within {timeout_s:g} s"
        time.sleep(0.2)


def test_two_writers_on_one_run_dir_the_second_is_refused_and_a_killed_runs_lock_is_taken_over(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_pretrain_cmd(tiny_corpus, run_dir, [], "--trainer.max_steps", "100000"), cwd=ROOT,
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(run_dir / "checkpoints" / "last.ckpt.sha256", first)  # training, with a checkpoint behind it
        second = subprocess.run(_pretrain_cmd(tiny_corpus, run_dir, []), cwd=ROOT, env=_env(), capture_output=True,
                                text=True, timeout=600, check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert second.stderr.strip().splitlines()[-1].startswith("error: ") and f"pid {first.pid}" in second.stderr
    finally:
        first.kill()  # SIGKILL: no cleanup, its lock stays behind
        first.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == first.pid
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    resumed = subprocess.run(_pretrain_cmd(tiny_corpus, run_dir, [], "--trainer.max_steps", str(step + 2),
                                           "--ckpt_path", "last"), cwd=ROOT, env=_env(), capture_output=True,
                             text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "taking over the lock" in resumed.stderr and not (run_dir / ".lock").exists()
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == step + 2
