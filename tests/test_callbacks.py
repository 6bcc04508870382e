"""The CKA drift monitor in a real (tiny) pretraining run, and the hot-swap that reads its snapshots."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from callbacks.cka_drift import CKADriftMonitor
from callbacks.common import evenly_spaced
from callbacks.hot_swap import EncoderHotSwap, ProducerStatus, complete_snapshots
from entropy_asr.io import atomic_write_json
from entropy_asr.model.encoder import ConformerEncoder, EncoderConfig
from entropy_asr.model.export import load_component, save_component, sha256_file
from experiments.run import run

ROOT = Path(__file__).resolve().parents[1]
ENC = {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 3, "subsampling_channels": 8}


def pretrain(tiny_corpus: Path, run_dir: Path, threshold: float, steps: int = 4, extra: list | None = None,
             monitor_args: dict | None = None) -> Path:
    syn = json.dumps({"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    monitor = {"class_path": "callbacks.CKADriftMonitor",
               "init_args": {"every_n_steps": 1, "threshold": threshold, "probe_batches": 1, **(monitor_args or {})}}
    run(["--config", str(ROOT / "experiments" / "tiny" / "pretrain_ctc.yaml"), "--run_dir", str(run_dir),
         "--model.init_args.encoder", json.dumps(ENC), "--data.init_args.synthetic", syn,
         "--data.init_args.num_workers", "0", "--trainer.max_steps", str(steps),
         "--trainer.limit_val_batches", "1", "--test", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.callbacks", json.dumps([monitor, *(extra or [])])])
    return run_dir / "export" / "snapshots"


def test_drift_below_threshold_exports_snapshots_then_a_final_one(tiny_corpus, tmp_path, monkeypatch):
    from callbacks import cka_drift

    saved = []
    real_save = cka_drift.save_component
    monkeypatch.setattr(cka_drift, "save_component",
                        lambda m, path, *a: saved.append(path.name) or real_save(m, path, *a))
    snaps = pretrain(tiny_corpus, tmp_path / "drift", threshold=1.0)  # any change counts as drift
    checks = [json.loads(line) for line in (snaps / "drift.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == [1, 2, 3, 4, 4]  # every step, then the final check
    assert checks[0]["cka"] == 1.0  # the first check sets the reference, exported as the first snapshot
    assert all(c["snapshot"] for c in checks) and all(0 < c["nse"] <= 1 for c in checks)
    markers = sorted(snaps.glob("snapshot-step*.json"))
    assert [m.name for m in markers] == [f"snapshot-step{s:08d}.json" for s in (1, 2, 3, 4)]
    assert not json.loads(markers[0].read_text())["final"]
    assert (tmp_path / "drift" / "drift.png").stat().st_size > 1000  # the curve, as a picture
    last = json.loads(markers[-1].read_text())
    assert last["final"] is True and set(last["files"]) == {"encoder", "ctc_head"}
    # the final check at step 4 re-marks the check's snapshot of the same weights: the files are written once
    # (a rewrite would change their checksums, and a hot-swap that took them would not know them as final)
    assert saved.count("encoder-step00000004.safetensors") == 1
    for component, name in last["files"].items():
        assert sha256_file(snaps / name) == last["sha256"][component]
    encoder = ConformerEncoder(EncoderConfig(**ENC))
    load_component(encoder, snaps / last["files"]["encoder"], "encoder")  # a strict, loadable export


def test_no_drift_exports_only_the_final_snapshot(tiny_corpus, tmp_path):
    logger = {"class_path": "callbacks.SpectralEntropyLogger", "init_args": {"every_n_steps": 2, "probe_batches": 1}}
    probe = {"class_path": "callbacks.AccessibleInformationProbe",
             "init_args": {"every_n_steps": 2, "probe_batches": 2, "test_every": 2, "at_start": False}}  # all of dev
    snaps = pretrain(tiny_corpus, tmp_path / "stable", threshold=1e-9, steps=3, extra=[logger, probe],
                     monitor_args={"export_reference": False})
    markers = sorted(snaps.glob("snapshot-step*.json"))
    assert [m.name for m in markers] == ["snapshot-step00000003.json"]
    assert json.loads(markers[0].read_text())["final"] is True
    logged = [json.loads(line) for line in (tmp_path / "stable" / "entropy.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged] == [2] and 0 < logged[0]["encoder"]["nse"] <= 1  # pretraining: encoder only
    assert set(logged[0]) == {"step", "encoder"}
    # the accessible-information probe labels frames with pretraining's own CTC head; no LLM, so no H0/H1
    ai = [json.loads(line) for line in (tmp_path / "stable" / "accessible_information.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ai] == [2, 3]  # every 2 steps, then the end
    assert all(e["h_phone_bits"] > 0 and "csai_bits" in e and "h0_bits_per_char" not in e for e in ai)


def test_state_round_trips_and_subsampling_is_even():
    m = CKADriftMonitor(every_n_steps=5)
    m.reference, m.history, m.last_check = torch.ones(4, 3, dtype=torch.float64), [{"step": 5}], 5
    again = CKADriftMonitor(every_n_steps=5)
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.reference, m.reference) and again.history == m.history and again.last_check == 5
    x = torch.arange(10.0)[:, None]
    assert evenly_spaced(x, 4)[:, 0].tolist() == [0.0, 3.0, 6.0, 9.0] and evenly_spaced(x, 20).shape == (10, 1)


# ---- hot-swap ---------------------------------------------------------------------------------

def write_snapshot(directory: Path, step: int, final: bool = False, seed: int = 0) -> Path:
    """A snapshot as the drift monitor writes it: weights, then the marker with the checksum."""
    torch.manual_seed(seed)
    path = save_component(ConformerEncoder(EncoderConfig(**ENC)), directory / f"encoder-step{step:08d}.safetensors",
                          "encoder")
    atomic_write_json(directory / f"snapshot-step{step:08d}.json",
                      {"step": step, "final": final, "files": {"encoder": path.name},
                       "sha256": {"encoder": sha256_file(path)}})
    return path


def test_only_complete_intact_snapshots_are_offered(tmp_path, caplog):
    write_snapshot(tmp_path, 10)
    bad = write_snapshot(tmp_path, 20)
    bad.write_bytes(bad.read_bytes()[:-7] + b"corrupt")  # damaged after its marker was written
    (tmp_path / "snapshot-step00000030.json").write_text('{"step": 30, "files": ')  # half-written marker
    write_snapshot(tmp_path, 40).unlink()  # marker without its weights
    (tmp_path / "encoder-step00000050.safetensors").write_bytes(b"weights without a marker yet")
    assert [m["step"] for m in complete_snapshots(tmp_path)] == [10]
    assert sum("skipping snapshot" in r.message for r in caplog.records) == 3


class SwapStub:
    """What the callback needs of an IA-SFT module."""

    global_step = 7

    def __init__(self, run_dir: Path | None = None):
        self.swapped = []
        self.trainer = SimpleNamespace(is_global_zero=run_dir is not None, loggers=[], default_root_dir=run_dir,
                                       global_step=self.global_step)

    def swap_encoder(self, path):
        encoder = ConformerEncoder(EncoderConfig(**ENC))
        load_component(encoder, path, "encoder")  # strict, as IASFT.swap_encoder
        self.swapped.append(Path(path).name)

    def print(self, *a):
        pass


def test_hot_swap_takes_the_newest_complete_snapshot_once_and_knows_the_final(tmp_path):
    cb, module = EncoderHotSwap(str(tmp_path)), SwapStub()
    assert cb.poll(module) is None and module.swapped == []  # nothing exported yet: keep going
    write_snapshot(tmp_path, 100)
    write_snapshot(tmp_path, 200)
    assert cb.poll(module)["step"] == 200 and module.swapped == ["encoder-step00000200.safetensors"]
    assert cb.poll(module) is None and not cb.final_swapped  # nothing newer: no second swap
    write_snapshot(tmp_path, 300, final=True)
    cb.poll(module)
    assert cb.final_swapped and module.swapped[-1] == "encoder-step00000300.safetensors"
    resumed = EncoderHotSwap(str(tmp_path))
    resumed.load_state_dict(cb.state_dict())
    assert resumed.poll(module) is None and resumed.final_swapped  # a resumed run stays on its snapshot


def test_damaged_snapshots_are_hashed_and_warned_about_once(tmp_path, caplog):
    bad = write_snapshot(tmp_path, 20)
    bad.write_bytes(b"truncated")
    cb, module = EncoderHotSwap(str(tmp_path)), SwapStub()
    assert cb.poll(module) is None and cb.poll(module) is None
    assert sum("skipping snapshot" in r.message for r in caplog.records) == 1
    write_snapshot(tmp_path, 30)
    assert cb.poll(module)["step"] == 30
    assert complete_snapshots(tmp_path, after_step=30) == []  # older markers are not even read


def test_a_fresh_run_waits_for_the_first_snapshot_then_gives_up_with_a_clear_error(tmp_path):
    import threading

    cb, module = EncoderHotSwap(str(tmp_path), wait_for_first_s=30, wait_poll_s=0.05), SwapStub()
    timer = threading.Timer(0.3, write_snapshot, args=(tmp_path, 5))
    timer.start()
    cb.on_fit_start(None, module)  # returns once the snapshot is complete, with it swapped in
    timer.join()
    assert module.swapped == ["encoder-step00000005.safetensors"] and cb.current["step"] == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TimeoutError, match="no complete encoder snapshot appeared in .*empty within 0.2 s"):
        EncoderHotSwap(str(empty), wait_for_first_s=0.2, wait_poll_s=0.05).on_fit_start(None, SwapStub())


def test_a_snapshot_re_marked_final_at_the_same_step_counts_as_the_final_one(tmp_path):
    snaps, run_dir = tmp_path / "snaps", tmp_path / "run"
    snaps.mkdir()
    cb, module = EncoderHotSwap(str(snaps)), SwapStub(run_dir)
    write_snapshot(snaps, 300)
    cb.poll(module)
    assert not cb.final_swapped
    # the end of pretraining re-exports its last check's encoder (same weights) as final: the marker is rewritten
    marker = snaps / "snapshot-step00000300.json"
    atomic_write_json(marker, {**json.loads(marker.read_text()), "final": True})
    assert cb.poll(module) is None and cb.final_swapped and len(module.swapped) == 1  # known, not loaded again
    log = [json.loads(line) for line in (run_dir / "swaps.jsonl").read_text().splitlines()]
    assert [(e["snapshot_step"], e["final"]) for e in log] == [(300, False), (300, True)]


def test_final_by_step_waits_for_the_final_snapshot_then_gives_up_with_a_clear_error(tmp_path):
    import threading

    write_snapshot(tmp_path, 100)
    module = SwapStub()
    early = EncoderHotSwap(str(tmp_path), final_by_step=8, wait_for_final_s=0.0, wait_poll_s=0.05)
    early.on_train_batch_start(module.trainer, module, None, 0)  # step 7 < 8: swaps 100 in, does not wait
    assert early.current["step"] == 100 and not early.final_swapped
    late = EncoderHotSwap(str(tmp_path), final_by_step=7, wait_for_final_s=30, wait_poll_s=0.05)
    timer = threading.Timer(0.3, write_snapshot, args=(tmp_path, 200, True))
    timer.start()
    late.on_train_batch_start(module.trainer, module, None, 0)
    timer.join()
    assert late.final_swapped and late.current["step"] == 200  # waited at step 7 until it came
    stuck = EncoderHotSwap(str(tmp_path / "nothing"), final_by_step=7, wait_for_final_s=0.2, wait_poll_s=0.05)
    with pytest.raises(TimeoutError, match="final snapshot did not appear .* within 0.2 s"):
        stuck.on_train_batch_start(module.trainer, module, None, 0)
    producer, seen_waiting = ProducerStatus(), []  # a pipeline's, handed to the stage by run(producer=...)

    def pretraining_dies():
        seen_waiting.append(producer.waiting.is_set())  # the pipeline sees the wait (and lends the cores meanwhile)
        producer.fail("background stage pretrain_ctc failed (exit code 1)")

    told = EncoderHotSwap(str(tmp_path / "nothing"), final_by_step=7, wait_for_final_s=3600, wait_poll_s=0.05)
    told.follow(producer)
    timer = threading.Timer(0.3, pretraining_dies)
    timer.start()
    with pytest.raises(RuntimeError, match="stopped waiting .* pretrain_ctc failed"):  # no point waiting out the hour
        told.on_train_batch_start(module.trainer, module, None, 0)
    timer.join()
    assert seen_waiting == [True] and not producer.waiting.is_set()
    with pytest.raises(TimeoutError):  # a hot-swap the pipeline did not hand its status to is not told
        stuck.on_train_batch_start(module.trainer, module, None, 0)


def test_run_hands_the_thread_budget_and_the_producer_status_to_the_stage_explicitly(tmp_path, monkeypatch):
    """What a pipeline gives a stage comes through run()'s arguments (or --threads_file), no global or env var."""
    import experiments.run as run_module
    from callbacks.thread_share import ThreadShare

    seen = {}

    def fit_and_test(cli, trainer, model, data, run_dir):  # (nothing trains)
        seen.update(callbacks=list(trainer.callbacks), parser=cli.parser,
                    saved=cli.parser.dump(cli.config, skip_none=False))  # what config.yaml gets
        return {}

    monkeypatch.setattr(run_module, "_fit_and_test", fit_and_test)
    swaps = [{"class_path": "callbacks.EncoderHotSwap", "init_args": {"snapshot_dir": str(tmp_path / d)}}
             for d in ("a", "b")]
    base = ["--config", str(ROOT / "experiments" / "tiny" / "align.yaml"), "--wandb", "disabled",
            "--trainer.callbacks", json.dumps(swaps)]
    producer = ProducerStatus()
    run([*base, "--run_dir", str(tmp_path / "fg")], threads_file=str(tmp_path / "fg.threads"), producer=producer)
    hot = [c for c in seen["callbacks"] if isinstance(c, EncoderHotSwap)]
    assert len(hot) == 2 and all(c.producer is producer for c in hot)
    assert [c.path for c in seen["callbacks"] if isinstance(c, ThreadShare)] == [tmp_path / "fg.threads"]
    run([*base, "--run_dir", str(tmp_path / "bg"), "--threads_file", str(tmp_path / "bg.threads")])  # own process
    hot = [c for c in seen["callbacks"] if isinstance(c, EncoderHotSwap)]
    assert hot[0].producer is not hot[1].producer and producer not in (hot[0].producer, hot[1].producer)
    assert [c.path for c in seen["callbacks"] if isinstance(c, ThreadShare)] == [tmp_path / "bg.threads"]
    # config.yaml keeps the key (it reloads, e.g. in experiments/evaluate.py) but not the path: a run from it
    # follows no stale budget
    (tmp_path / "config.yaml").write_text(seen["saved"])
    assert "threads_file: null" in seen["saved"].splitlines()
    assert seen["parser"].parse_args(["--config", str(tmp_path / "config.yaml")])["threads_file"] is None


def test_replay_reveals_a_finished_runs_snapshots_at_the_pace_of_a_run_beside_it(tmp_path):
    for step in (400, 500, 600):
        write_snapshot(tmp_path, step)
    write_snapshot(tmp_path, 800, final=True)
    cb, module = EncoderHotSwap(str(tmp_path), replay_start=450, replay_pace=10.0, final_by_step=30), SwapStub()
    seen = []
    for step in range(32):
        module.global_step = module.trainer.global_step = step
        cb.on_train_batch_start(module.trainer, module, None, 0)
        seen.append(cb.current["step"])
    # visible at IA-SFT step s: pretraining step <= 450 + 10 s; the final one from final_by_step (30) on
    assert seen[:5] == [400] * 5 and seen[5:15] == [500] * 10 and seen[15:30] == [600] * 15 and seen[30:] == [800] * 2
    assert cb.final_swapped and module.swapped == [f"encoder-step{s:08d}.safetensors" for s in (400, 500, 600, 800)]
    (tmp_path / "snapshot-step00000800.json").unlink()  # replay of a run that never finished: no waiting
    cb = EncoderHotSwap(str(tmp_path), replay_start=450, replay_pace=10.0, final_by_step=30, wait_for_final_s=3600)
    module.global_step = module.trainer.global_step = 30
    with pytest.raises(FileNotFoundError, match=r"\(replay\).*final snapshot did not appear"):
        cb.on_train_batch_start(module.trainer, module, None, 0)
    with pytest.raises(ValueError, match="replay_pace > 0"):
        EncoderHotSwap(str(tmp_path), replay_start=0, replay_pace=0.0)


def test_markers_with_wrong_fields_or_paths_outside_the_dir_are_skipped(tmp_path, caplog):
    good = write_snapshot(tmp_path, 10)
    outside = tmp_path.parent / "planted.safetensors"
    outside.write_bytes(good.read_bytes())
    cases = {20: {"step": "20"}, 30: {"step": 31}, 40: {"files": {"encoder": "../planted.safetensors"}},
             50: {"files": {"encoder": str(outside)}}, 60: {"files": {"ctc_head": good.name}},
             70: {"files": {"encoder": good.name, "ctc_head": good.name}}}  # 70: no checksum for the head
    for step, change in cases.items():
        meta = {"step": step, "final": False, "files": {"encoder": good.name}, "sha256": {"encoder": sha256_file(good)},
                **change}
        (tmp_path / f"snapshot-step{step:08d}.json").write_text(json.dumps(meta))
    assert [m["step"] for m in complete_snapshots(tmp_path)] == [10]
    assert sum("skipping snapshot" in r.message for r in caplog.records) == len(cases)


def test_an_intact_snapshot_of_another_encoder_size_is_skipped_and_the_current_one_kept(tmp_path, caplog):
    write_snapshot(tmp_path, 10)
    cb, module = EncoderHotSwap(str(tmp_path)), SwapStub()
    assert cb.poll(module)["step"] == 10
    big = save_component(ConformerEncoder(EncoderConfig(**{**ENC, "d_model": ENC["d_model"] * 2})),
                         tmp_path / "encoder-step00000020.safetensors", "encoder")
    atomic_write_json(tmp_path / "snapshot-step00000020.json",
                      {"step": 20, "final": False, "files": {"encoder": big.name},
                       "sha256": {"encoder": sha256_file(big)}})
    assert cb.poll(module) is None and cb.current["step"] == 10  # no crash, still on snapshot 10
    assert cb.poll(module) is None  # and not tried again
    assert sum("does not fit" in r.message for r in caplog.records) == 1
    assert module.swapped == ["encoder-step00000010.safetensors"]


def test_a_snapshot_dir_that_cannot_exist_is_refused_at_the_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="snapshot_dir .* does not exist"):
        EncoderHotSwap(str(tmp_path / "pretrian_ctc" / "export" / "snapshots")).on_fit_start(None, SwapStub())
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a replay needs the finished run's dir
        EncoderHotSwap(str(tmp_path / "x"), replay_start=0).on_fit_start(None, SwapStub())
    (tmp_path / "pretrain_ctc").mkdir()  # a pretraining run that has not exported yet: fine, snapshots will come
    EncoderHotSwap(str(tmp_path / "pretrain_ctc" / "export" / "snapshots")).on_fit_start(None, SwapStub())
