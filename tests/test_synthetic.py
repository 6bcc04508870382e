"""The synthetic corpus: splits, disjointness, speakers, unseen voices, non-speech, determinism, resumption."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from entropy_asr.data.espeak import (
    ENGLISH_ACCENTS,
    MAX_RANGE_ABOVE_PITCH,
    PITCH_RANGE,
    PITCH_RANGE_RANGE,
    RATE_RANGE,
    UNSEEN_VARIANTS,
    variants,
)
from entropy_asr.data.sentences import GRAMMAR_VERSION
from entropy_asr.data.synthetic import (
    CORPUS_VERSION,
    DEV_NONSPEECH_SHARE,
    LANGUAGE_SHARE,
    NONSPEECH_KINDS,
    SPLITS,
    build_corpus,
    nonspeech_clip,
    plan_corpus,
    split_counts,
    voice_pools,
)
from entropy_asr.text import normalize_text


def utterances(split_dir: Path) -> list[dict]:
    out = []
    for tar_path in sorted(split_dir.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".json"):
                meta = json.loads(members[name])
                meta["key"] = name[:-5]
                meta["audio"], meta["sr"] = sf.read(io.BytesIO(members[name[:-5] + ".flac"]), dtype="float32")
                out.append(meta)
    return out


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


SPEECH_SPLITS = ("train", "dev", "test", "test_unseen_voice")
NONSPEECH_SPLITS = ("train_nonspeech", "nonspeech")


@pytest.fixture(scope="module")
def data(tiny_corpus) -> dict[str, list[dict]]:
    return {s: utterances(tiny_corpus / s) for s in SPLITS}


def _variant(u: dict) -> str:
    return u["speaker"].split("/")[0]


def _dev_nonspeech(count: int) -> int:
    return round(count * DEV_NONSPEECH_SHARE)  # none in a tiny corpus's 2-utterance dev split


def test_split_counts():
    assert SPLITS == ("train", "train_nonspeech", "dev", "test", "test_unseen_voice", "nonspeech")
    for n in (12, 60, 1000, 2000):
        counts = split_counts(n)
        assert list(counts) == list(SPLITS) and sum(counts.values()) == n and min(counts.values()) >= 2
        assert max(counts, key=counts.get) == "train"
    assert split_counts(2000) == {"train": 1600, "train_nonspeech": 80, "dev": 80, "test": 120,
                                  "test_unseen_voice": 80, "nonspeech": 40}


def test_splits_are_complete_and_indexed(tiny_corpus, data):
    info = json.loads((tiny_corpus / "corpus.json").read_text())
    counts = split_counts(60)
    assert info["version"] == CORPUS_VERSION and info["grammar_version"] == GRAMMAR_VERSION
    assert info["settings"] == {"utterances": 60, "seed": 7, "shard_size": 8}
    seen, unseen = voice_pools()
    assert info["speakers"] == {"seen_variants": list(seen), "unseen_variants": list(UNSEEN_VARIANTS)}
    assert unseen == UNSEEN_VARIANTS and not set(seen) & set(unseen) and set(seen) | set(unseen) == set(variants())
    for s in SPLITS:
        index = json.loads((tiny_corpus / s / "index.json").read_text())
        assert len(data[s]) == counts[s] == info["splits"][s]["utterances"] == index["utterances"]
        assert index["split"] == s and index["speakers"] == info["speakers"]
        assert len(list((tiny_corpus / s).glob("shard-*.tar"))) == -(-counts[s] // 8)
        assert [u["key"] for u in data[s]] == [f"syn7_{s}_{i:06d}" for i in range(counts[s])]
    assert not (tiny_corpus / "building.json").exists()


def test_speech_splits_are_disjoint_and_labelled(data):
    speech = {s: [u for u in data[s] if u["language"] != "none"] for s in SPEECH_SPLITS}
    texts = {s: {u["norm_text"] for u in speech[s]} for s in SPEECH_SPLITS}
    for s in SPEECH_SPLITS:
        assert len(texts[s]) == len(speech[s])  # no sentence twice within a split either
    for (a, ta), (b, tb) in itertools.combinations(texts.items(), 2):
        assert not ta & tb, f"{a} and {b} share sentences"
    every = [u for s in SPEECH_SPLITS for u in speech[s]]
    assert {u["language"] for u in every} == {"zh", "en", "mix"}
    for u in every:
        assert u["sr"] == 16000 and u["audio"].ndim == 1 and u["phones"] and u["norm_text"] and u["text"]
        assert u["duration"] == pytest.approx(len(u["audio"]) / 16000, abs=1e-4)
        assert "nonspeech_kind" not in u and u["source"] == "synthetic"
    # 0-1 s of silence at both ends: leading/trailing digital zeros average ~0.5 s.
    lead = [np.argmax(np.abs(u["audio"]) > 0) / 16000 for u in every]
    trail = [np.argmax(np.abs(u["audio"][::-1]) > 0) / 16000 for u in every]
    assert 0.3 < np.mean(lead) < 0.8 and 0.3 < np.mean(trail) < 0.8 and max(lead + trail) <= 1.3


def test_a_speaker_per_utterance_and_unseen_voices(data):
    every = [u for s in SPEECH_SPLITS for u in data[s] if u["language"] != "none"]
    accents = {a for a, _ in ENGLISH_ACCENTS}
    for u in every:
        variant, accent, settings = u["speaker"].split("/")
        assert variant in variants() and accent in accents
        rate, pitch, prange = map(int, re.fullmatch(r"r(\d+)p(\d+)g(\d+)", settings).groups())
        assert RATE_RANGE[0] <= rate <= RATE_RANGE[1] and PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]
        assert PITCH_RANGE_RANGE[0] <= prange <= pitch + MAX_RANGE_ABOVE_PITCH
    assert len({u["speaker"] for u in every}) == len(every)  # a new speaker every time
    assert len({_variant(u) for u in data["train"]}) >= 25  # 49 utterances over ~96 variants
    heard = {_variant(u) for s in ("train", "dev", "test") for u in data[s] if u["language"] != "none"}
    assert not heard & set(UNSEEN_VARIANTS)
    assert {_variant(u) for u in data["test_unseen_voice"]} <= set(UNSEEN_VARIANTS)


def test_nonspeech_clips(data):
    for s in NONSPEECH_SPLITS:
        assert all(u["language"] == "none" for u in data[s])
    n_dev = _dev_nonspeech(split_counts(60)["dev"])
    assert [u["language"] == "none" for u in data["dev"]][:n_dev + 1] == [True] * n_dev + [False]  # first, then speech
    clips = [u for s in SPLITS for u in data[s] if u["language"] == "none"]
    assert len(clips) == sum(split_counts(60)[s] for s in NONSPEECH_SPLITS) + n_dev
    for u in clips:
        assert u["text"] == "" and u["norm_text"] == "" and u["phones"] == [] and u["speaker"] == "none"
        assert u["nonspeech_kind"] in NONSPEECH_KINDS
        assert 1.0 <= u["duration"] <= 8.0 and u["sr"] == 16000 and np.abs(u["audio"]).max() <= 1.0
        assert (u["nonspeech_kind"] == "silence") == (not np.any(u["audio"]))


def test_plan_at_scale():
    """The plan of a 1,000-utterance corpus (no audio): disjoint, unseen voices held out, dev's clips first."""
    plan = plan_corpus(1000, 0)
    counts = split_counts(1000)
    assert {s: len(v) for s, v in plan.items()} == counts
    norms = {s: [normalize_text(u.text, u.language) for u in plan[s] if u.speaker] for s in SPEECH_SPLITS}
    every = [t for s in SPEECH_SPLITS for t in norms[s]]
    assert len(set(every)) == len(every) and all(every)
    for s in NONSPEECH_SPLITS:
        assert all(u.speaker is None and u.text == "" and u.language == "none" for u in plan[s])
    n_dev = _dev_nonspeech(counts["dev"])
    assert n_dev == 2 and [u.speaker is None for u in plan["dev"]] == [True] * n_dev + [False] * (counts["dev"] - n_dev)
    for s in ("train", "test"):
        assert all(u.speaker is not None and u.speaker.variant not in UNSEEN_VARIANTS for u in plan[s])
    unseen = {u.speaker.variant for u in plan["test_unseen_voice"]}
    assert unseen <= set(UNSEEN_VARIANTS) and len(unseen) >= 5  # 40 utterances over 8 held-out variants
    train = [u.speaker for u in plan["train"]]
    assert len({sp.variant for sp in train}) >= 80 and len({sp.english for sp in train}) == len(ENGLISH_ACCENTS)
    langs = [u.language for u in plan["train"]]
    for lang, share in LANGUAGE_SHARE.items():
        assert abs(langs.count(lang) / len(langs) - share) < 0.06
    assert len({u.seed for s in plan.values() for u in s}) > 0.99 * 1000
    assert [u.key for u in plan["test"]][:2] == ["syn0_test_000000", "syn0_test_000001"]
    # the plan is a function of (n, seed)
    again = plan_corpus(1000, 0)
    assert again == plan and plan_corpus(1000, 1)["train"] != plan["train"]


def test_nonspeech_clip_kinds_and_levels():
    kinds = set()
    for seed in range(90):
        x, kind = nonspeech_clip(np.random.default_rng(seed))
        kinds.add(kind)
        assert x.dtype == np.float32 and x.ndim == 1 and 1.0 <= x.size / 16000 <= 8.0
        assert np.abs(x).max() <= 1.0
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        if kind == "silence":
            assert not np.any(x)
        elif kind == "near_silence":
            assert -70.5 < 20 * np.log10(rms) < -59.5
        else:
            assert -46 < 20 * np.log10(rms) < -11.5, kind
        again, _ = nonspeech_clip(np.random.default_rng(seed))
        assert np.array_equal(x, again)
    assert kinds == set(NONSPEECH_KINDS) - {"babble"}  # babble needs an engine


def test_babble_is_speech_like_noise():
    from entropy_asr.data.espeak import ESpeak

    pool = (ESpeak.instance(), voice_pools()[0])
    for seed in range(200):
        x, kind = nonspeech_clip(np.random.default_rng(seed), pool)
        if kind == "babble":
            break
    assert kind == "babble"
    assert x.dtype == np.float32 and 1.0 <= x.size / 16000 <= 8.0 and np.abs(x).max() <= 1.0
    assert -46 < 20 * np.log10(float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))) < -11.5
    # many talkers at once: energy in every 100 ms window, no pauses as in one voice's speech
    frames = x[: x.size // 1600 * 1600].reshape(-1, 1600)
    assert (np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) > 1e-4).all()
    assert np.array_equal(x, nonspeech_clip(np.random.default_rng(seed), pool)[0])


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
    assert summary["out"] == str(tmp_path / "c") and set(summary) == {"out", "seconds", *SPLITS}
    for s in SPLITS:
        assert summary[s]["utterances"] == split_counts(12)[s]
        assert (tmp_path / "c" / s / "index.json").exists()
    assert summary["nonspeech"]["languages"] == summary["train_nonspeech"]["languages"] == {"none": 2}
    assert json.loads((tmp_path / "c" / "corpus.json").read_text())["settings"]["seed"] == 1
    # another seed into the same directory: a clear error, exit status 2
    out = subprocess.run([sys.executable, "-m", "entropy_asr.data.synthetic", "--out", str(tmp_path / "c"),
                          "--utterances", "12", "--seed", "2", "--workers", "1"], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 2 and "error:" in out.stderr and "different synthetic corpus" in out.stderr
