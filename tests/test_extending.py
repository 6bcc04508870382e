"""The README's "Extending" examples, run as written: a stage (module + config), a metric, a callback logging it."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from experiments.run import run

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks() -> dict[str, str]:
    """The README's code blocks whose first line is a comment naming a file: {path: code}."""
    text = (ROOT / "README.md").read_text()
    blocks = {}
    for body in re.findall(r"```(?:python|yaml)\n(.*?)```", text, re.S):
        first = body.split("\n", 1)[0]
        m = re.match(r"# (\S+\.(?:py|yaml))", first)
        if m:
            blocks[m.group(1)] = body
    return blocks


@pytest.fixture
def examples(monkeypatch):
    """The README's example modules, importable under the names their file paths give them."""
    blocks = readme_blocks()
    assert {"lightning_modules/ctc_top.py", "experiments/tiny/ctc_top.yaml", "entropy_asr/metrics/smoothness.py",
            "callbacks/smoothness.py"} <= set(blocks)
    for path in ("entropy_asr/metrics/smoothness.py", "callbacks/smoothness.py", "lightning_modules/ctc_top.py"):
        name = path.removesuffix(".py").replace("/", ".")
        spec = importlib.util.spec_from_loader(name, loader=None)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        exec(compile(blocks[path], path, "exec"), module.__dict__)
    return blocks


def test_the_metric_example_gives_known_answers(examples):
    smoothness = sys.modules["entropy_asr.metrics.smoothness"].frame_smoothness
    x = torch.randn(1, 1, 8)
    constant = x.repeat(2, 5, 1)
    assert smoothness(constant, torch.tensor([5, 3])) == pytest.approx(1.0)
    flipping = torch.cat([x, -x, x, -x], dim=1)  # (1, 4, 8): every neighbour the opposite
    assert smoothness(flipping, torch.tensor([4])) == pytest.approx(-1.0)
    padded = torch.cat([constant[:1, :3], torch.randn(1, 4, 8)], dim=1)  # what follows the length is ignored
    assert smoothness(padded, torch.tensor([3])) == pytest.approx(1.0)


def test_the_stage_and_callback_examples_train(examples, tiny_corpus, tmp_path):
    """The README's stage config runs through run.py with the README's callback; only the top blocks train."""
    exp = tmp_path / "experiments"
    (exp / "tiny").mkdir(parents=True)
    (exp / "models").symlink_to(ROOT / "experiments" / "models")  # the config names ../models/tiny/encoder.yaml
    config = exp / "tiny" / "ctc_top.yaml"
    config.write_text(examples["experiments/tiny/ctc_top.yaml"])
    # pretraining's export, as the config expects it under vars.runs
    pre = tmp_path / "runs"
    run(["--config", str(ROOT / "experiments" / "tiny" / "pretrain_ctc.yaml"), "--vars.runs", str(pre),
         "--run_dir", str(pre / "pretrain_ctc"), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
         "--trainer.callbacks", "[]", *_small_data(tiny_corpus)])
    logger = {"class_path": "callbacks.smoothness.SmoothnessLogger", "init_args": {"every_n_steps": 1,
                                                                                   "probe_batches": 1}}
    out = run(["--config", str(config), "--vars.runs", str(pre), "--trainer.max_steps", "2",
               "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "1",
               "--trainer.callbacks", json.dumps([logger]), *_small_data(tiny_corpus)])
    assert out["global_step"] == 2
    before = _load(pre / "pretrain_ctc" / "export" / "encoder.safetensors")
    after = _load(pre / "ctc_top" / "export" / "encoder.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("layers.4.", "layers.5.", "norm.")) for k in changed), sorted(changed)[:5]
    with (pre / "ctc_top" / "metrics.csv").open() as f:
        logged = [float(r["encoder/smoothness"]) for r in csv.DictReader(f) if r.get("encoder/smoothness")]
    assert logged and all(-1.0 <= v <= 1.0 for v in logged)


def _small_data(corpus: Path) -> list[str]:
    syn = json.dumps({"root": str(corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    return ["--data.init_args.synthetic", syn, "--data.init_args.num_workers", "0", "--wandb", "disabled",
            "--trainer.enable_progress_bar", "false", "--test", "false"]


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
