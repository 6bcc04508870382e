"""eSpeak NG through ctypes: output format, speakers, code-switching and determinism."""

import collections
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from entropy_asr.data.espeak import (
    ENGLISH_ACCENTS,
    MAX_RANGE_ABOVE_PITCH,
    PITCH_RANGE,
    PITCH_RANGE_RANGE,
    RATE_RANGE,
    SPEAKERS,
    UNSEEN_VARIANTS,
    ESpeak,
    Speaker,
    draw_speaker,
    split_languages,
    synthesize_text,
    variants,
)

REPO = Path(__file__).resolve().parents[1]
ZH = "我觉得今天的天气很好。"  # 10 Han characters
EN = "Can you tell me about the meeting tomorrow?"
MIX = "我们明天要开一个 meeting 讨论这个问题。"


@pytest.fixture(scope="module")
def engine() -> ESpeak:
    """The process's engine."""
    return ESpeak.instance()


def _digest(audio: np.ndarray) -> str:
    """Hash of the exact samples."""
    return hashlib.sha256(audio.tobytes()).hexdigest()


def test_sample_rate_and_format(engine):
    assert engine.sample_rate == 22050
    for text, voice in ((ZH, "cmn"), (EN, "en-us"), (EN, "en-us+f2"), (ZH, "cmn+m3")):
        audio = engine.synthesize(text, voice)
        assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 0
        assert np.abs(audio).max() <= 1.0
        assert np.sqrt(np.mean(audio**2)) > 0.01, f"{voice} is silent"


def test_mandarin_duration_is_plausible(engine):
    # Spelled-out "Chinese letter" names would take ~1 s per character; spoken Mandarin ~0.25 s.
    seconds = engine.synthesize(ZH, "cmn").size / engine.sample_rate
    assert 1.5 < seconds < 4.0


def test_longer_text_gives_longer_audio(engine):
    short, long = engine.synthesize("你好", "cmn"), engine.synthesize("你好，很高兴认识你，我们明天见。", "cmn")
    assert long.size > 2 * short.size
    short, long = engine.synthesize("Hello.", "en-us"), engine.synthesize("Hello, it is nice to meet you all.", "en-us")
    assert long.size > 2 * short.size


def test_several_engines_share_one_library(engine):
    assert ESpeak.instance() is engine
    assert np.array_equal(ESpeak().synthesize(EN, "en-us"), engine.synthesize(EN, "en-us"))


def test_bad_voice_raises_value_error_naming_it(engine):
    with pytest.raises(ValueError, match="no-such-voice"):
        engine.synthesize("hello", "no-such-voice")
    with pytest.raises(ValueError, match="nosuchvariant"):
        engine.synthesize("hello", "en-us+nosuchvariant")


def test_speakers_are_distinct_and_valid(engine):
    assert len(SPEAKERS) >= 12
    assert len({s.name for s in SPEAKERS}) == len(SPEAKERS)
    variants = set(os.listdir(os.path.join(engine.data_path, "voices", "!v")))
    for s in SPEAKERS:
        assert s.variant in variants and 140 <= s.rate <= 210 and 30 <= s.pitch <= 75
    digests = {_digest(synthesize_text(engine, MIX, s)) for s in SPEAKERS}
    assert len(digests) == len(SPEAKERS)


def test_split_languages():
    assert split_languages(MIX) == [("zh", "我们明天要开一个"), ("en", "meeting"), ("zh", "讨论这个问题。")]
    assert split_languages("我有3个苹果。") == [("zh", "我有3个苹果。")]
    assert split_languages("I have 3 apples.") == [("en", "I have 3 apples.")]
    assert split_languages("OK，我们走吧！") == [("en", "OK，"), ("zh", "我们走吧！")]


def test_code_switched_is_longer_than_each_part(engine):
    speaker = SPEAKERS[0]
    mixed = synthesize_text(engine, MIX, speaker)
    zh_only = synthesize_text(engine, "我们明天要开一个讨论这个问题。", speaker)
    en_only = synthesize_text(engine, "meeting", speaker)
    assert mixed.size > zh_only.size and mixed.size > en_only.size
    assert mixed.size > 0.8 * (zh_only.size + en_only.size)
    # Pure-language text is one eSpeak call with the speaker's voice.
    assert np.array_equal(synthesize_text(engine, EN, speaker),
                          engine.synthesize(EN, speaker.voice("en"), speaker.rate, speaker.pitch, speaker.pitch_range))


def test_deterministic_regardless_of_history(engine):
    speaker = Speaker("t", "f2", rate=170, pitch=60, pitch_range=55)  # f2 has breath noise
    first = synthesize_text(engine, MIX, speaker)
    engine.synthesize("Something else entirely, said first.", "en-us+klatt")
    engine.synthesize("完全不同的一句话。", "cmn+m7")
    assert np.array_equal(first, synthesize_text(engine, MIX, speaker))


_CASES = [(ZH, 1), (EN, 8), (MIX, 13)]  # (text, index into SPEAKERS)
_CHILD = """
import hashlib, json
from entropy_asr.data.espeak import ESpeak, SPEAKERS, synthesize_text
e = ESpeak.instance()
print(json.dumps([hashlib.sha256(synthesize_text(e, t, SPEAKERS[i]).tobytes()).hexdigest() for t, i in CASES]))
"""


def test_deterministic_in_a_fresh_process(engine):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = f"CASES = {_CASES!r}\n{_CHILD}"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    expected = [_digest(synthesize_text(engine, text, SPEAKERS[i])) for text, i in _CASES]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_variants_lists_the_wheels_voice_variants(engine):
    every = variants()
    assert every == variants(engine.data_path) == tuple(
        sorted(os.listdir(os.path.join(engine.data_path, "voices", "!v"))))
    assert len(every) >= 50 and {"m1", "f1", "klatt", "whisper"} <= set(every)
    assert {s.variant for s in SPEAKERS} <= set(every)


def test_unseen_variants_exist_and_speak(engine):
    every = set(variants())
    assert len(set(UNSEEN_VARIANTS)) == len(UNSEEN_VARIANTS) >= 6 and set(UNSEEN_VARIANTS) <= every
    assert len(every - set(UNSEEN_VARIANTS)) >= 50  # plenty left for training
    for variant in UNSEEN_VARIANTS:
        speaker = Speaker("t", variant, rate=170, pitch=50, pitch_range=50)
        for text in (ZH, "Good morning."):
            audio = synthesize_text(engine, text, speaker)
            assert audio.size > 0.3 * engine.sample_rate and np.sqrt(np.mean(audio**2)) > 0.005, (variant, text)


def test_every_english_accent_speaks(engine):
    accents = [a for a, _ in ENGLISH_ACCENTS]
    assert len(set(accents)) == len(accents) and accents[0] == "en-us"
    assert sum(w for _, w in ENGLISH_ACCENTS) == pytest.approx(1.0)
    digests = set()
    for accent in accents:
        speaker = Speaker("t", "m1", rate=170, pitch=50, pitch_range=50, english=accent)
        assert speaker.voice("en") == f"{accent}+m1" and speaker.voice("zh") == "cmn+m1"
        audio = synthesize_text(engine, "Good morning, how are you today?", speaker)
        assert audio.size > 0.5 * engine.sample_rate and np.sqrt(np.mean(audio**2)) > 0.01, accent
        digests.add(_digest(audio))
    assert len(digests) == len(accents)  # each accent sounds different
    # Mandarin is spoken by cmn whatever the English accent
    scots, us = (Speaker("t", "m1", 170, 50, 50, english=a) for a in ("en-gb-scotland", "en-us"))
    assert np.array_equal(synthesize_text(engine, ZH, scots), synthesize_text(engine, ZH, us))


def test_draw_speaker_is_deterministic_and_in_range():
    pool = ("m1", "f2", "klatt3", "whisper")
    a = [draw_speaker(random.Random(11), pool) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng1, rng2 = random.Random(5), random.Random(5)
    first = [draw_speaker(rng1, pool) for _ in range(50)]
    assert first == [draw_speaker(rng2, pool) for _ in range(50)]
    rng3 = random.Random(6)
    assert first != [draw_speaker(rng3, pool) for _ in range(50)]
    rng = random.Random(0)
    drawn = [draw_speaker(rng, pool) for _ in range(3000)]
    for s in drawn:
        assert s.variant in pool
        assert RATE_RANGE[0] <= s.rate <= RATE_RANGE[1] and PITCH_RANGE[0] <= s.pitch <= PITCH_RANGE[1]
        assert PITCH_RANGE_RANGE[0] <= s.pitch_range <= min(PITCH_RANGE_RANGE[1], s.pitch + MAX_RANGE_ABOVE_PITCH)
        assert s.name == f"{s.variant}/{s.english}/r{s.rate}p{s.pitch}g{s.pitch_range}"
        assert re.fullmatch(r"[^/]+/[a-z0-9-]+/r\d{3}p\d{2}g\d{2}", s.name)
    # the draws cover the ranges, every variant and every accent, en-us most often (share 0.7)
    assert {s.variant for s in drawn} == set(pool)
    accents = collections.Counter(s.english for s in drawn)
    assert set(accents) == {a for a, _ in ENGLISH_ACCENTS} and 0.65 < accents["en-us"] / len(drawn) < 0.75
    rates, pitches = [s.rate for s in drawn], [s.pitch for s in drawn]
    assert min(rates) < RATE_RANGE[0] + 10 and max(rates) > RATE_RANGE[1] - 10
    assert min(pitches) < PITCH_RANGE[0] + 5 and max(pitches) > PITCH_RANGE[1] - 5
    assert len({s.name for s in drawn}) > 0.95 * len(drawn)  # a new speaker per utterance
    with pytest.raises(IndexError):
        draw_speaker(random.Random(0), ())


def test_drawn_speakers_speak(engine):
    rng = random.Random(3)
    pool = variants()
    for _ in range(12):
        s = draw_speaker(rng, pool)
        audio = synthesize_text(engine, MIX, s)
        assert audio.size > 0.5 * engine.sample_rate, s.name


def test_capped_pitch_range_does_not_crash():
    # libespeak-ng crashed on "两个" with cmn+rob at pitch 34 and range 86; at the cap it must not.
    code = ("from entropy_asr.data.espeak import ESpeak, MAX_RANGE_ABOVE_PITCH as M\n"
            "e = ESpeak.instance()\n"
            "for p in (15, 34, 55):\n"
            "    for v in ('rob', 'm1', 'klatt'):\n"
            "        assert e.synthesize('两个', 'cmn+' + v, 150, p, p + M).size > 0\n"
            "print('ok')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.returncode, out.stderr[-2000:])


def _fake_wheel(tmp_path):
    lib = tmp_path / "wheel" / "libespeak-ng.so"
    data = tmp_path / "wheel" / "espeak-ng-data"
    (data / "lang" / "sit").mkdir(parents=True)
    (data / "lang" / "sit" / "cmn").write_text("name Mandarin")
    (data / "phontab").write_bytes(b"phonemes")
    lib.write_bytes(b"\x7fELF the real library")
    return str(lib), str(data)


def test_the_private_library_copy_lives_in_the_users_cache_and_a_planted_one_is_replaced(tmp_path, monkeypatch):
    import stat

    from entropy_asr.data.espeak import _private_copy

    monkeypatch.setenv("ENTROPY_ASR_CACHE", str(tmp_path / "cache"))
    lib, data = _fake_wheel(tmp_path)
    root = _private_copy(lib, data)
    assert root.startswith(str(tmp_path / "cache" / "espeak"))
    assert stat.S_IMODE(os.stat(tmp_path / "cache" / "espeak").st_mode) == 0o700
    copy = os.path.join(root, "libespeak-ng-private.so")
    with open(copy, "rb") as a, open(lib, "rb") as b:
        assert a.read() == b.read()
    with open(copy, "wb") as f:  # someone swaps the library in place
        f.write(b"\x7fELF planted")
    assert _private_copy(lib, data) == root
    with open(copy, "rb") as a, open(lib, "rb") as b:
        assert a.read() == b.read()


def test_a_cache_dir_writable_by_others_is_refused(tmp_path, monkeypatch):
    from entropy_asr.data.espeak import _private_copy

    monkeypatch.setenv("ENTROPY_ASR_CACHE", str(tmp_path / "cache"))
    lib, data = _fake_wheel(tmp_path)
    (tmp_path / "cache" / "espeak").mkdir(parents=True)
    os.chmod(tmp_path / "cache" / "espeak", 0o777)
    with pytest.raises(PermissionError, match="writable by others"):
        _private_copy(lib, data)
