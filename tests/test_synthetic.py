"""The synthetic corpus: splits, disjointness, unseen voices, non-speech, determinism, resumption."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from entropy_asr.data.synthetic import SPLITS, build_corpus, split_counts


def utterances(split_dir: Path) -> list[dict]:
    out = []
    for tar_path in sorted(split_dir.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".json"):
                meta = json.loads(members[name])
                meta["audio"], meta["sr"] = sf.read(io.BytesIO(members[name[:-5] + ".flac"]), dtype="float32")
                out.append(meta)
    return out


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_splits_are_complete_disjoint_and_labelled(tiny_corpus):
    info = json.loads((tiny_corpus / "corpus.json").read_text())
    counts = split_counts(60)
    data = {s: utterances(tiny_corpus / s) for s in SPLITS}
    for s in SPLITS:
        assert len(data[s]) == counts[s] == info["splits"][s]["utterances"]
    texts = {s: {u["norm_text"] for u in data[s]} for s in SPLITS if s != "nonspeech"}
    for a in texts:
        for b in texts:
            if a < b:
                assert not texts[a] & texts[b], f"{a} and {b} share sentences"
    train_speakers = {u["speaker"] for u in data["train"]}
    assert {u["speaker"] for u in data["test_unseen_voice"]}.isdisjoint(train_speakers)
    assert {u["speaker"] for u in data["test"]} <= set(info["speakers"]["seen"])
    assert all(u["text"] == "" and u["language"] == "none" and u["phones"] == [] for u in data["nonspeech"])
    speech = [u for s in ("train", "dev", "test", "test_unseen_voice") for u in data[s]]
    assert {u["language"] for u in speech} == {"zh", "en", "mix"}
    for u in speech:
        assert u["sr"] == 16000 and u["audio"].ndim == 1 and u["phones"] and u["norm_text"]
        assert u["duration"] == pytest.approx(len(u["audio"]) / 16000, abs=1e-4)
    # 0-1 s of silence at both ends: leading/trailing digital zeros average ~0.5 s.
    lead = [np.argmax(np.abs(u["audio"]) > 0) / 16000 for u in speech]
    trail = [np.argmax(np.abs(u["audio"][::-1]) > 0) / 16000 for u in speech]
    assert 0.3 < np.mean(lead) < 0.8 and 0.3 < np.mean(trail) < 0.8 and max(lead + trail) <= 1.3


def test_same_seed_gives_byte_identical_shards_and_resume_matches(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_corpus(a, 24, seed=3, shard_size=4, num_workers=2)
    build_corpus(b, 24, seed=3, shard_size=4, num_workers=1)
    assert digest(a) == digest(b)
    first = digest(a)
    (a / "train" / "shard-000001.tar").unlink()
    (a / "train" / "shard-000001.stats.json").unlink()
    (a / "corpus.json").unlink()  # interrupted before the end
    build_corpus(a, 24, seed=3, shard_size=4, num_workers=1)
    assert digest(a) == first
    c = tmp_path / "c"
    build_corpus(c, 24, seed=4, shard_size=4, num_workers=1)
    assert digest(c)["train/shard-000000.tar"] != first["train/shard-000000.tar"]
    with pytest.raises(ValueError, match="different synthetic corpus"):
        build_corpus(a, 24, seed=4, shard_size=4)


def test_too_few_utterances_is_an_error():
    with pytest.raises(ValueError, match="too small"):
        split_counts(5)


def test_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "entropy_asr.data.synthetic", "--out", str(tmp_path / "c"),
                          "--utterances", "12", "--seed", "1", "--workers", "1"],
                         capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["train"]["utterances"] == split_counts(12)["train"]
    assert (tmp_path / "c" / "nonspeech" / "index.json").exists()
