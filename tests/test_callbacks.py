"""The CKA drift monitor in a real (tiny) pretraining run: checks, snapshots, their markers and checksums."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from callbacks.cka_drift import CKADriftMonitor, evenly_spaced, sha256_file
from entropy_asr.model.encoder import ConformerEncoder, EncoderConfig
from entropy_asr.model.export import load_component
from experiments.run import run

ROOT = Path(__file__).resolve().parents[1]
ENC = {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 3, "subsampling_channels": 8}


def pretrain(tiny_corpus: Path, run_dir: Path, threshold: float, steps: int = 4) -> Path:
    syn = json.dumps({"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    monitor = {"class_path": "callbacks.CKADriftMonitor",
               "init_args": {"every_n_steps": 1, "threshold": threshold, "probe_batches": 1}}
    run(["--config", str(ROOT / "experiments" / "tiny" / "pretrain_ctc.yaml"), "--run_dir", str(run_dir),
         "--model.init_args.encoder", json.dumps(ENC), "--model.init_args.snapshot_steps", "[]",
         "--data.init_args.synthetic", syn, "--data.init_args.num_workers", "0", "--trainer.max_steps", str(steps),
         "--trainer.limit_val_batches", "1", "--test", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.callbacks", json.dumps([monitor])])
    return run_dir / "export" / "snapshots"


def test_drift_below_threshold_exports_snapshots_then_a_final_one(tiny_corpus, tmp_path):
    snaps = pretrain(tiny_corpus, tmp_path / "drift", threshold=1.0)  # any change counts as drift
    checks = [json.loads(line) for line in (snaps / "drift.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == [1, 2, 3, 4, 4]  # every step, then the final check
    assert checks[0]["cka"] == 1.0 and checks[0]["snapshot"] is None  # the first check sets the reference
    assert all(c["snapshot"] for c in checks[1:]) and all(0 < c["nse"] <= 1 for c in checks)
    markers = sorted(snaps.glob("snapshot-step*.json"))
    assert [m.name for m in markers] == [f"snapshot-step{s:08d}.json" for s in (2, 3, 4)]
    last = json.loads(markers[-1].read_text())
    assert last["final"] is True and set(last["files"]) == {"encoder", "ctc_head"}
    for component, name in last["files"].items():
        assert sha256_file(snaps / name) == last["sha256"][component]
    encoder = ConformerEncoder(EncoderConfig(**ENC))
    load_component(encoder, snaps / last["files"]["encoder"], "encoder")  # a strict, loadable export


def test_no_drift_exports_only_the_final_snapshot(tiny_corpus, tmp_path):
    snaps = pretrain(tiny_corpus, tmp_path / "stable", threshold=1e-9, steps=3)
    markers = sorted(snaps.glob("snapshot-step*.json"))
    assert [m.name for m in markers] == ["snapshot-step00000003.json"]
    assert json.loads(markers[0].read_text())["final"] is True


def test_state_round_trips_and_subsampling_is_even():
    m = CKADriftMonitor(every_n_steps=5)
    m.reference, m.history, m.last_check = torch.ones(4, 3, dtype=torch.float64), [{"step": 5}], 5
    again = CKADriftMonitor(every_n_steps=5)
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.reference, m.reference) and again.history == m.history and again.last_check == 5
    x = torch.arange(10.0)[:, None]
    assert evenly_spaced(x, 4)[:, 0].tolist() == [0.0, 3.0, 6.0, 9.0] and evenly_spaced(x, 20).shape == (10, 1)
