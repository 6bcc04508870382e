"""The README's main command (experiments/run.py) and the data benchmark, on the tiny corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from entropy_asr.data import benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_run_streams_the_tiny_default_config(tiny_corpus, tmp_path):
    cfg = yaml.safe_load((ROOT / "experiments" / "tiny" / "data.yaml").read_text())
    # The real tiny config, shrunk: the session's corpus instead of the cached 2,000 utterances.
    cfg["data"]["synthetic"] = {"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8}
    cfg["data"]["batches_per_epoch"] = 4
    cfg["stream"]["train_batches"] = 3
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "--config", str(tmp_path / "c.yaml")],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["train"]["batches"] == 3 and result["train"]["first_batch"]["feats"][2] == 80
    dev = json.loads((tiny_corpus / "dev" / "index.json").read_text())
    assert result["val"]["utterances"] == dev["utterances"]  # one full pass over dev


def test_benchmark_prints_json_last(tiny_corpus):
    out = subprocess.run([sys.executable, "-m", "entropy_asr.data.benchmark", "--data", str(tiny_corpus / "train"),
                          "--seconds", "1"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["audio_sec_per_sec_per_worker"] > 0 and result["batches"] >= 1
    assert benchmark.measure(tiny_corpus / "train", seconds=0.5, augment=False)["augment"] is False
