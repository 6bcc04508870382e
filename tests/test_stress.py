"""entropy_asr.data.stress: the hallucination test sets (wide non-speech, speech padded with silence/noise, speech
with a long pause inside)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from entropy_asr.data.shards import read_index
from entropy_asr.data.stress import PAD_KINDS, PAD_SECONDS, PAUSE_SECONDS, build_stress_sets, quietest_point
from entropy_asr.data.synthetic import NONSPEECH_KINDS, nonspeech_clip
from tests.test_prepare import read_shards


@pytest.fixture(scope="module")
def stress(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("stress")
    return build_stress_sets(tiny_corpus, out, nonspeech=20, padded=3, num_workers=1)


def test_nonspeech_wide_has_every_kind_equally_and_nothing_to_transcribe(stress):
    utts = read_shards(stress["nonspeech_wide"])
    assert len(utts) == 20
    kinds = Counter(u["json"]["nonspeech_kind"] for u in utts.values())
    assert kinds == Counter({k: 2 for k in NONSPEECH_KINDS})
    for u in utts.values():
        assert u["json"]["text"] == "" and u["json"]["language"] == "none" and u["json"]["phones"] == []
        samples, sr = u["audio"]
        assert sr == 16000 and len(samples) >= 16000
    silent = [u["audio"][0] for u in utts.values() if u["json"]["nonspeech_kind"] == "silence"]
    assert all(not np.any(x) for x in silent)
    loud = [u["audio"][0] for u in utts.values() if u["json"]["nonspeech_kind"] in ("white", "babble", "music")]
    assert all(np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 10 ** (-50 / 20) for x in loud)


def _edited(stress, tiny_corpus, name: str):
    """(metadata, samples, the source utterance's samples) of each test_<name> utterance, whose transcript, language
    and phones are checked to be its source's."""
    source = {k: u for k, u in read_shards(tiny_corpus / "test").items() if u["json"]["language"] != "none"}
    edited = read_shards(stress[f"test_{name}"])
    assert len(edited) == 3
    for key, u in edited.items():
        meta, src = u["json"], source[key.removesuffix(f"_{name}")]
        assert (meta["text"], meta["language"], meta["phones"]) == (src["json"]["text"], src["json"]["language"],
                                                                    src["json"]["phones"])
        yield meta, u["audio"][0], src["audio"][0]


def test_padded_speech_is_the_test_utterance_unchanged_between_its_pads(stress, tiny_corpus):
    for meta, x, speech in _edited(stress, tiny_corpus, "padded"):
        assert set(meta["pad_kinds"]) <= set(PAD_KINDS)
        start, after = meta["pad_samples"]
        assert all(PAD_SECONDS[0] * 16000 <= n <= PAD_SECONDS[1] * 16000 for n in (start, after))
        assert len(x) == start + len(speech) + after
        np.testing.assert_array_equal(x[start:start + len(speech)], speech)  # 16-bit both ways: exact
        pads = np.concatenate([x[:start], x[start + len(speech):]]).astype(np.float64)
        assert np.sqrt(np.mean(pads ** 2)) <= 10 ** (-29 / 20)  # quiet: at most -30 dBFS, +1 dB for rounding


def test_paused_speech_is_the_test_utterance_cut_at_its_quietest_point_around_a_pause(stress, tiny_corpus):
    for meta, x, speech in _edited(stress, tiny_corpus, "paused"):
        at, n = meta["pause_at"], meta["pause_samples"]
        assert meta["pause_kind"] in PAD_KINDS and PAUSE_SECONDS[0] * 16000 <= n <= PAUSE_SECONDS[1] * 16000
        assert len(speech) // 4 <= at <= 3 * len(speech) // 4 and at == quietest_point(speech)
        assert len(x) == len(speech) + n
        np.testing.assert_array_equal(np.concatenate([x[:at], x[at + n:]]), speech)  # 16-bit both ways: exact
        assert np.sqrt(np.mean(x[at:at + n].astype(np.float64) ** 2)) <= 10 ** (-29 / 20)


def test_quietest_point_finds_the_gap_between_two_bursts():
    t = np.arange(16000 * 2) / 16000
    x = np.sin(2 * np.pi * 200 * t).astype(np.float32)
    x[int(0.9 * 16000):int(1.05 * 16000)] = 0  # a 150 ms gap at 0.9-1.05 s, inside the middle half
    at = quietest_point(x)
    assert int(0.9 * 16000) <= at <= int(1.05 * 16000)
    assert quietest_point(np.ones(100, np.float32)) == 50  # too short for a window: the middle


def test_a_second_build_keeps_the_sets_and_equal_arguments_give_equal_files(stress, tiny_corpus, tmp_path):
    before = {d: (d / "index.json").stat().st_mtime_ns for d in stress.values()}
    again = build_stress_sets(tiny_corpus, stress["nonspeech_wide"].parent, nonspeech=20, padded=3)
    assert {d: (d / "index.json").stat().st_mtime_ns for d in again.values()} == before
    other = build_stress_sets(tiny_corpus, tmp_path, nonspeech=20, padded=3)
    for name, d in stress.items():
        for s in read_index(d)["shards"]:
            assert (d / s["name"]).read_bytes() == (other[name] / s["name"]).read_bytes(), (name, s["name"])


def test_bad_arguments_fail_with_one_clear_line(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="at least one clip of each"):
        build_stress_sets(tiny_corpus, tmp_path, nonspeech=5)
    with pytest.raises(FileNotFoundError, match="--corpus .*no test/index.json"):
        build_stress_sets(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="--padded 500: .* has only"):
        build_stress_sets(tiny_corpus, tmp_path / "big", nonspeech=10, padded=500)
    with pytest.raises(ValueError, match="--paused 500: .* has only"):
        build_stress_sets(tiny_corpus, tmp_path / "big2", nonspeech=10, padded=0, paused=500)
    with pytest.raises(ValueError, match="--paused -1: give a count"):
        build_stress_sets(tiny_corpus, tmp_path / "big3", nonspeech=10, paused=-1)
    with pytest.raises(ValueError, match="babble needs engine_pool"):
        nonspeech_clip(np.random.default_rng(0), None, kind="babble")
    with pytest.raises(ValueError, match="not one of"):
        nonspeech_clip(np.random.default_rng(0), None, kind="thunder")
