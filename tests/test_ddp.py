"""Multi-process training on CPUs (gloo): two DDP ranks through the Lightning CLI, and metric states that
all-reduce to the single-process values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from entropy_asr.metrics.cka import LinearCKA
from entropy_asr.metrics.error_rate import ErrorRates, PhoneErrorRate
from tests.stage_helpers import (
    ENC,
    ROOT,
    common,
    llm_stage_args,
    small_models,
)
from tests.test_datamodule import keys_in

# the two ways this project shards training across processes; FSDP runs on CPUs too (gloo), see
# lightning_modules.SpeechFSDP
STRATEGIES = {"ddp": "ddp", "fsdp": json.dumps({"class_path": "lightning_modules.SpeechFSDP"})}


def test_two_ddp_ranks_train_on_different_shards_and_validate_every_utterance_once(tiny_corpus, tmp_path):
    syn = json.dumps({"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    recorder = [{"class_path": "tests.ddp_helpers.KeyRecorder", "init_args": {"out": str(tmp_path / "keys")}}]
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"),
           "--config", str(ROOT / "experiments/tiny/pretrain_ctc.yaml"),
           "--run_dir", str(tmp_path / "run"), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.max_steps", "4", "--trainer.callbacks", json.dumps(recorder),
           "--trainer.enable_progress_bar", "false", "--test", "false", "--wandb", "disabled",
           "--model.init_args.encoder", json.dumps(ENC), "--data.init_args.synthetic", syn,
           "--data.init_args.num_workers", "0", "--data.init_args.batches_per_epoch", "2",
           "--data.init_args.val_dir", str(tiny_corpus / "train")]  # 6 shards: some for each rank (dev has 1)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["global_step"] == 4 and "val/per" in results["val"]
    ranks = [json.loads((tmp_path / "keys" / f"keys-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    shard_of = keys_in(tiny_corpus / "train")
    nonspeech = set(keys_in(tiny_corpus / "train_nonspeech"))  # mixed in (nonspeech_share); every rank reads them
    assert all(k in shard_of or k in nonspeech for r in ranks for k in r["train"])
    shards = [{shard_of[k] for k in r["train"] if k in shard_of} for r in ranks]
    assert shards[0] and shards[1] and not shards[0] & shards[1]  # each rank reads its own training shards
    dev = set(keys_in(tiny_corpus / "train"))
    epochs = 2  # 4 steps at 2 batches an epoch: validation ran after each epoch
    for r in ranks:
        assert len(r["val"]) % epochs == 0
    per_epoch = [k for r in ranks for k in r["val"][: len(r["val"]) // epochs]]
    assert sorted(per_epoch) == sorted(dev)  # every utterance once per validation, across the ranks


def _metric_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        metrics = _metrics()
        _update(metrics, rank, world)
        torch.save({k: _value(m.compute()) for k, m in metrics.items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _metrics() -> dict:
    return {"rates": ErrorRates(), "per": PhoneErrorRate(), "cka": LinearCKA(8, 6),
            "cka_u": LinearCKA(8, 6, debiased=True)}


def _data():
    g = torch.Generator().manual_seed(0)
    hyps = ["我们去 学校", "hello word", "我 like it", ""]
    refs = ["我们去学校了", "hello world", "我 like this", ""]
    langs = ["zh", "en", "mix", "none"]
    x = torch.randn(4, 30, 8, generator=g)
    y = x @ torch.randn(8, 6, generator=g) + 0.3 * torch.randn(4, 30, 6, generator=g)
    phones = ([[3, 4, 5], [6, 7]], [[3, 5], [6, 7, 8]])
    return hyps, refs, langs, x, y, phones


def _update(metrics: dict, rank: int, world: int) -> None:
    hyps, refs, langs, x, y, (ph_h, ph_r) = _data()
    for i in range(rank, 4, world):  # this rank's share of the utterances
        metrics["rates"].update([hyps[i]], [refs[i]], [langs[i]])
        metrics["cka"].update(x[i], y[i])
        metrics["cka_u"].update(x[i], y[i])
    for i in range(rank, 2, world):
        metrics["per"].update([ph_h[i]], [ph_r[i]])


def _value(v):
    return {k: float(t) for k, t in v.items()} if isinstance(v, dict) else float(v)


def test_metric_states_all_reduce_to_the_single_process_values(tmp_path):
    single = _metrics()
    _update(single, 0, 1)
    want = {k: _value(m.compute()) for k, m in single.items()}
    mp.spawn(_metric_worker, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.keys() == want.keys()
        for k, value in want.items():
            assert got[k] == pytest.approx(value, rel=1e-9, abs=1e-12), k


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_ia_sft_ranks_swap_the_same_snapshot_at_the_same_step_when_one_sees_it_late(strategy, exports, tiny_corpus,
                                                                                    tmp_path):
    # rank 0 publishes snapshot 50 at step 2; rank 1's view of the directory lags 2 steps (tests.ddp_helpers).
    # Rank 0 decides for both: both swap it in at step 2, and their encoders stay bitwise equal at every step.
    # (the dir holds the fixture's step-1 CTC head, which the published snapshot reuses, and no marker: nothing to
    # swap before step 2)
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    shutil.copy(exports["ctc_snapshot"], snaps)
    helper = {"class_path": "tests.ddp_helpers.LaggingSnapshot",
              "init_args": {"snapshot_dir": str(snaps), "source": str(exports["encoder"]), "at": 2, "new_step": 50,
                            "lag": 2, "out": str(tmp_path / "rec")}}
    swap = {"class_path": "callbacks.EncoderHotSwap",
            "init_args": {"snapshot_dir": str(snaps), "poll_every_n_steps": 1}}
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), *llm_stage_args("ia_sft", exports, tmp_path / "run"),
           "--trainer.callbacks", json.dumps([helper, swap]),
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", STRATEGIES[strategy],
           "--trainer.max_steps", "5", "--trainer.limit_val_batches", "0", "--test", "false", "--wandb", "disabled",
           "--data.init_args.batches_per_epoch", "5", *common(tiny_corpus), *small_models("ia_sft")]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "rec" / f"swaps-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert [s["step"] for s in ranks[0]["swaps"]] == [s["step"] for s in ranks[1]["swaps"]] == [2]
    assert ranks[0]["swaps"][-1]["path"].endswith("encoder-step00000050.safetensors")
    assert ranks[0]["digests"] == ranks[1]["digests"] and len(ranks[0]["digests"]) == 5
    digests = [d["encoder"] for d in ranks[0]["digests"]]
    assert digests[0] == digests[1] != digests[2] == digests[4]  # the new encoder from step 2 on


def _pretrain(tiny_corpus, run_dir: Path, devices: int, strategy: str = "ddp", lr: float = 1e-30) -> None:
    syn = json.dumps({"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    callbacks = [{"class_path": "callbacks.CKADriftMonitor",
                  "init_args": {"every_n_steps": 2, "threshold": 1.0, "warmup_steps": 0, "probe_batches": 2}},
                 {"class_path": "callbacks.SpectralEntropyLogger",
                  "init_args": {"every_n_steps": 2, "probe_batches": 2}},
                 {"class_path": "callbacks.AccessibleInformationProbe",
                  "init_args": {"every_n_steps": 4, "probe_batches": 3, "at_start": True}}]
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"),
           "--config", str(ROOT / "experiments/tiny/pretrain_ctc.yaml"),
           "--run_dir", str(run_dir), "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
           "--trainer.max_steps", "4", "--trainer.callbacks", json.dumps(callbacks), "--trainer.limit_val_batches", "0",
           "--trainer.enable_progress_bar", "false", "--test", "false", "--wandb", "disabled",
           "--model.init_args.encoder", json.dumps(ENC), "--data.init_args.synthetic", syn,
           # by default (almost) no update: both runs probe the same weights, so a difference is in what each probes
           "--model.init_args.optim", json.dumps({"lr": lr, "warmup_steps": 0, "weight_decay": 0.0}),
           "--data.init_args.num_workers", "0", "--data.init_args.batches_per_epoch", "2",
           "--data.init_args.val_dir", str(tiny_corpus / "train"),
           *(["--trainer.strategy", STRATEGIES[strategy]] if devices > 1 else [])]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _numbers(path: Path) -> list[dict]:
    """Each line's numbers, nested keys flattened (encoder.nse, ...)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            elif isinstance(v, (int, float)):
                out[prefix + k] = v
        return out
    return [flat(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_drift_and_probe_metrics_with_two_ranks_equal_the_single_process_values(strategy, tiny_corpus, tmp_path):
    _pretrain(tiny_corpus, tmp_path / "one", 1)
    _pretrain(tiny_corpus, tmp_path / "two", 2, strategy)
    for rel in ("export/snapshots/drift.jsonl", "entropy.jsonl", "accessible_information.jsonl"):
        one, two = _numbers(tmp_path / "one" / rel), _numbers(tmp_path / "two" / rel)
        assert len(one) == len(two) >= 2, rel
        for a, b in zip(one, two, strict=True):  # (probing a rank's own half of the set differs by percents)
            assert b == pytest.approx(a, rel=1e-6, abs=1e-9), rel


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("stage", ["align", "joint_sft"])
def test_llm_stages_train_under_ddp_with_ranks_in_step(stage, strategy, exports, tiny_corpus, tmp_path):
    rec = {"class_path": "tests.ddp_helpers.KeyRecorder", "init_args": {"out": str(tmp_path / "keys")}}
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), *llm_stage_args(stage, exports, tmp_path / "run"),
           "--trainer.callbacks", json.dumps([rec]), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--trainer.strategy", STRATEGIES[strategy], "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
           "--test", "false", "--wandb", "disabled", "--data.init_args.batches_per_epoch", "3",
           *common(tiny_corpus), *small_models(stage)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["global_step"] == 3
    ranks = [json.loads((tmp_path / "keys" / f"keys-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and len(r["train"]) > 0 for r in ranks)
    assert set(ranks[0]["train"]) != set(ranks[1]["train"])  # each rank trains on its own data
    assert (tmp_path / "run" / "export" / "adapter.safetensors").exists()


def test_fsdp_trains_to_the_ddp_runs_weights_and_exports_them_whole(tiny_corpus, tmp_path):
    """SpeechFSDP shards every Conformer block across 2 CPU processes: the same 4 updates as DDP (gradients
    averaged the same way, clipped by the global norm), and exports gathered to full tensors."""
    from safetensors.torch import load_file

    for strategy in STRATEGIES:
        _pretrain(tiny_corpus, tmp_path / strategy, 2, strategy, lr=3e-3)
    for name in ("encoder", "ctc_head"):
        ddp, fsdp = (load_file(tmp_path / s / "export" / f"{name}.safetensors") for s in ("ddp", "fsdp"))
        assert ddp.keys() == fsdp.keys() and all(ddp[k].shape == fsdp[k].shape for k in ddp)
        first = min((tmp_path / "ddp" / "export" / "snapshots").glob(f"{name}-step*.safetensors"))  # step 2
        assert any(not torch.equal(load_file(first)[k], ddp[k]) for k in ddp)  # it trained on after it
        for k in ddp:
            torch.testing.assert_close(fsdp[k], ddp[k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
