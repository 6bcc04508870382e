"""eSpeak NG through ctypes: output format, speakers, code-switching and determinism."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from entropy_asr.data.espeak import SPEAKERS, ESpeak, Speaker, split_languages, synthesize_text

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
