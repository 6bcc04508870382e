"""Bad values fail at once with one line naming the file or key (issue 16): optimizer settings, CMVN, index.json."""

from __future__ import annotations

import json
import shutil

import pytest

from entropy_asr.data.audio import load_cmvn
from entropy_asr.data.shards import read_index
from lightning_modules.base import OptimConfig


@pytest.mark.parametrize("bad", [{"lr": float("nan")}, {"lr": float("inf")}, {"lr": 0.0}, {"weight_decay": -5.0},
                                 {"weight_decay": float("nan")}, {"betas": (0.9, 1.5)}, {"eps": 0.0}])
def test_optimizer_settings_that_cannot_train_are_refused(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=f"optim.{key}"):
        OptimConfig(**bad)


def test_cmvn_with_nan_is_refused_naming_the_file(tiny_corpus, tmp_path):
    d = json.loads((tiny_corpus / "train" / "cmvn.json").read_text())
    d["sum"][3] = float("nan")
    bad = tmp_path / "cmvn.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=f"{bad}: the CMVN statistics hold NaN"):
        load_cmvn(bad)
    assert load_cmvn(tiny_corpus / "train" / "cmvn.json")[0].isfinite().all()


@pytest.mark.parametrize("name", ["../../other/shard-000000.tar", "/etc/shard.tar", "..", ""])
def test_an_index_naming_shards_outside_its_dir_is_refused(tiny_corpus, tmp_path, name):
    d = tmp_path / "set"
    shutil.copytree(tiny_corpus / "dev", d)
    index = json.loads((d / "index.json").read_text())
    index["shards"][0]["name"] = name
    (d / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="shard names must be file names inside"):
        read_index(d)


def test_a_missing_test_dir_is_reported_before_training_starts(tiny_corpus, tmp_path):
    from datamodules.speech import SpeechDataModule

    data = SpeechDataModule(train_dir=str(tiny_corpus / "train"), val_dir=str(tiny_corpus / "dev"),
                            test_dirs=[str(tiny_corpus / "test"), str(tmp_path / "tset")], batches_per_epoch=1)
    with pytest.raises(FileNotFoundError, match=r"data.init_args.test_dirs\[1\] = .*tset: no index.json"):
        data.setup("fit")


def test_a_digits_only_transcript_without_a_language_is_skipped_and_counted_not_made_silent():
    import numpy as np

    from entropy_asr.data.shards import SkipCounter, prepare_utterance

    skips = SkipCounter()
    x = np.zeros(16000, np.float32)
    for text in ("911", "3.14", "100%"):
        assert prepare_utterance(f"k{text}", x, 16000, text, None, "s", "t", skips, max_duration=30.0) is None
    assert skips["no_language"] == 3
    kept = prepare_utterance("k4", x, 16000, "911", "en", "s", "t", skips, max_duration=30.0)
    assert kept is not None and kept.language == "en" and kept.text == "911"  # a given language keeps it
    silent = prepare_utterance("k5", x, 16000, "", None, "s", "t", skips, max_duration=30.0, allow_empty=True)
    assert silent.language == "none"


def test_a_training_set_where_nothing_survives_loading_fails_instead_of_spinning(tiny_corpus, monkeypatch):
    from datamodules.speech import SpeechDataModule
    from entropy_asr.data import pipeline
    from entropy_asr.data.pipeline import BatchConfig

    monkeypatch.setattr(pipeline, "MAX_DROPPED_IN_ROW", 100)
    # every clip is longer than max_duration: each is skipped, and the endless stream would never give a batch
    data = SpeechDataModule(train_dir=str(tiny_corpus / "train"), val_dir=str(tiny_corpus / "dev"), num_workers=0,
                            batches_per_epoch=2, batch=BatchConfig(max_batch_seconds=0.5, max_duration=0.5))
    data.setup("fit")
    with pytest.raises(RuntimeError, match=r"the last 100 samples were all skipped .*too_long.*max_duration \(0.5 s\)"):
        next(iter(data.train_dataloader()))
