"""A bilingual (Mandarin + English + code-switched) speech corpus synthesized offline with eSpeak NG.

    python -m entropy_asr.data.synthetic --out DIR --utterances N --seed S

Writes the splits DIR/{train,train_nonspeech,dev,test,test_unseen_voice,nonspeech}, each a shard
dir (see entropy_asr.data.shards), and DIR/corpus.json once everything is done. Sentences come
from a grammar over thousands of words per language (entropy_asr.data.sentences) and are
disjoint across splits; every utterance gets its own speaker (an eSpeak variant, English accent,
rate and pitch; entropy_asr.data.espeak.draw_speaker), and test_unseen_voice uses variants never
heard in training. train_nonspeech (mixed into training at a configurable share, so the model
learns to say nothing) and nonspeech (the hallucination test) hold clips without speech and with
empty transcripts: silence, near-silence, coloured noise, hum, tones, clicks, music-like chords
and babble made of overlapping (partly reversed) speech. dev holds a few too, so validation
reports the non-speech emission rate. The same seed gives byte-identical shards; an interrupted
build resumes (finished shards are kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from entropy_asr.data.audio import SAMPLE_RATE, resample
from entropy_asr.data.augment import colored_noise, pad_silence
from entropy_asr.data.espeak import (
    ENGLISH_ACCENTS,
    MAX_RANGE_ABOVE_PITCH,
    PITCH_RANGE,
    PITCH_RANGE_RANGE,
    RATE_RANGE,
    UNSEEN_VARIANTS,
    ESpeak,
    Speaker,
    draw_speaker,
    synthesize_text,
    variants,
)
from entropy_asr.data.sentences import GRAMMAR_VERSION, SentenceGenerator
from entropy_asr.data.shards import (
    SkipCounter,
    Utterance,
    is_finished,
    prepare_utterance,
    run_shard_jobs,
    shard_name,
    write_index,
)
from entropy_asr.errors import UserError, run_main
from entropy_asr.io import atomic_write_json
from entropy_asr.text import normalize_text

log = logging.getLogger(__name__)

# 3: grammar sentences over POS lexicons, a speaker per utterance, non-speech for training; 4: grammar fixes;
# 5: everyday verbs (go, get, make, say, have), particles, quantifiers, comparatives, places, days and months
CORPUS_VERSION = 5
SPLITS = ("train", "train_nonspeech", "dev", "test", "test_unseen_voice", "nonspeech")
# Share of the N utterances per split; each split gets at least 2.
SPLIT_SHARE = {"train": 0.80, "train_nonspeech": 0.04, "dev": 0.04, "test": 0.06, "test_unseen_voice": 0.04,
               "nonspeech": 0.02}
DEV_NONSPEECH_SHARE = 0.05  # of dev: validation also measures the non-speech emission rate
LANGUAGE_SHARE = {"zh": 0.4, "en": 0.4, "mix": 0.2}
MAX_SILENCE_PAD = 1.0  # seconds of silence at each end, U(0, 1) (docs/method.md augmentation)
NONSPEECH_KINDS = ("silence", "near_silence", "white", "pink", "brown", "hum", "tones", "clicks", "music", "babble")


@dataclass(frozen=True)
class UttSpec:
    """Everything needed to render one utterance deterministically in any process."""

    key: str
    text: str
    language: str
    speaker: Speaker | None  # None for non-speech
    seed: int  # for padding and non-speech noise


def split_counts(n: int) -> dict[str, int]:
    """Utterances per split for a corpus of n (>= 2 each; train takes the rounding)."""
    if n < 2 * len(SPLITS):
        raise UserError(f"--utterances {n} is too small: each of the {len(SPLITS)} splits needs at least 2")
    counts = {s: max(2, int(n * f)) for s, f in SPLIT_SHARE.items()}
    counts["train"] += n - sum(counts.values())
    return counts


def voice_pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(variants heard in train/dev/test, variants only in test_unseen_voice)."""
    every = variants()
    missing = [v for v in UNSEEN_VARIANTS if v not in every]
    if missing:
        raise UserError(f"unseen-voice variants {missing} are not in this eSpeak NG wheel's voices/!v")
    return tuple(v for v in every if v not in UNSEEN_VARIANTS), UNSEEN_VARIANTS


def plan_corpus(n: int, seed: int) -> dict[str, list[UttSpec]]:
    """Sentences, languages, speakers and seeds of every utterance; disjoint sentences across splits."""
    rng = random.Random(f"entropy-asr-synthetic/{seed}")
    gen = SentenceGenerator()
    seen, unseen = voice_pools()
    used: set[str] = set()  # normalized sentences already taken by any split
    plan: dict[str, list[UttSpec]] = {}
    langs, weights = list(LANGUAGE_SHARE), list(LANGUAGE_SHARE.values())
    for split, count in split_counts(n).items():
        specs = []
        n_nonspeech = {"train_nonspeech": count, "nonspeech": count,
                       "dev": round(count * DEV_NONSPEECH_SHARE)}.get(split, 0)
        for i in range(count):
            key = f"syn{seed}_{split}_{i:06d}"
            if i < n_nonspeech:
                specs.append(UttSpec(key, "", "none", None, rng.getrandbits(32)))
                continue
            lang = rng.choices(langs, weights)[0]
            for _ in range(1000):
                text = gen.sentence(rng, lang)
                norm = normalize_text(text, lang)
                if norm and norm not in used:
                    break
            else:
                raise RuntimeError(f"could not draw a new {lang} sentence after 1000 tries; the generator is too small")
            used.add(norm)
            speaker = draw_speaker(rng, unseen if split == "test_unseen_voice" else seen)
            specs.append(UttSpec(key, text, lang, speaker, rng.getrandbits(32)))
        plan[split] = specs
    return plan


def _level(x: np.ndarray, db: float) -> np.ndarray:
    """`x` scaled to an RMS of `db` dBFS."""
    return x * 10 ** (db / 20) / max(1e-9, float(np.sqrt(np.mean(x.astype(np.float64) ** 2))))


def _babble(n: int, rng: np.random.Generator, engine: ESpeak, pool: tuple[str, ...]) -> np.ndarray:
    """5-8 overlapping talkers (half of them time-reversed): speech-like, with no words to transcribe."""
    gen = SentenceGenerator()
    r = random.Random(int(rng.integers(2**31)))
    out = np.zeros(n, np.float64)
    for _ in range(int(rng.integers(5, 9))):
        lang = r.choice(("zh", "en"))
        x = resample(synthesize_text(engine, gen.sentence(r, lang), draw_speaker(r, pool)), engine.sample_rate,
                     SAMPLE_RATE)
        if r.random() < 0.5:
            x = x[::-1]
        x = np.tile(x, 1 + n // max(1, len(x)))  # loop to cover the clip
        start = int(rng.integers(0, len(x) - n + 1))
        out += _level(x[start:start + n], float(rng.uniform(-3, 3)))
    return out.astype(np.float32)


def nonspeech_clip(rng: np.random.Generator, engine_pool: tuple[ESpeak, tuple[str, ...]] | None = None,
                   kind: str | None = None, seconds: float | None = None,
                   level_db: tuple[float, float] = (-45.0, -12.0)) -> tuple[np.ndarray, str]:
    """A clip with no speech of `kind` (default: drawn from NONSPEECH_KINDS), `seconds` long (default: drawn,
    1-8 s), at a level drawn from `level_db` dBFS (near-silence: -70..-60); babble needs (engine, pool)."""
    n = int((rng.uniform(1.0, 8.0) if seconds is None else seconds) * SAMPLE_RATE)
    if kind is None:
        kinds = NONSPEECH_KINDS if engine_pool is not None else NONSPEECH_KINDS[:-1]
        kind = str(rng.choice(kinds))
    elif kind not in NONSPEECH_KINDS or (kind == "babble" and engine_pool is None):
        raise ValueError(f"nonspeech_clip: kind {kind!r} is not one of {NONSPEECH_KINDS} (babble needs engine_pool)")
    t = np.arange(n) / SAMPLE_RATE
    if kind == "silence":
        return np.zeros(n, np.float32), kind
    if kind == "hum":
        f0 = float(rng.choice([50.0, 60.0]))
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 4))
    elif kind == "tones":  # beeps: sine tones of random pitch and length with gaps
        x = np.zeros(n)
        pos = 0
        while pos < n:
            length, gap = int(rng.uniform(0.05, 0.8) * SAMPLE_RATE), int(rng.uniform(0.0, 0.5) * SAMPLE_RATE)
            seg = np.arange(min(length, n - pos)) / SAMPLE_RATE
            x[pos:pos + seg.size] = np.sin(2 * np.pi * rng.uniform(200, 3000) * seg)
            pos += length + gap
    elif kind == "clicks":  # impulses (keyboard, clock, crackle) on a faint noise floor
        x = 0.01 * rng.standard_normal(n)
        for at in rng.integers(0, n, max(1, int(rng.uniform(2, 12) * n / SAMPLE_RATE))):
            k = min(int(rng.integers(20, 400)), n - int(at))
            x[at:at + k] += rng.standard_normal(k) * np.exp(-np.arange(k) / rng.uniform(5, 60))  # a decaying burst
    elif kind == "music":  # chords of harmonic tones, changing every 0.3-1 s
        x = np.zeros(n)
        pos = 0
        while pos < n:
            length = int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
            seg = np.arange(min(length, n - pos)) / SAMPLE_RATE
            root = 110 * 2 ** (int(rng.integers(0, 24)) / 12)
            for step in (0, 4, 7):
                f = root * 2 ** (step / 12)
                x[pos:pos + seg.size] += sum(np.sin(2 * np.pi * f * h * seg) / h ** 1.5 for h in (1, 2, 3, 4))
            x[pos:pos + seg.size] *= np.exp(-seg * rng.uniform(0.5, 4))
            pos += length
    elif kind == "babble":
        x = _babble(n, rng, *engine_pool)
    else:
        x = colored_noise(n, rng, {"near_silence": 0.0, "white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    db = rng.uniform(-70, -60) if kind == "near_silence" else rng.uniform(*level_db)
    return _level(x, db).clip(-1, 1).astype(np.float32), kind


def render(specs: list[UttSpec], skips: SkipCounter) -> Iterator[Utterance]:
    """Synthesize a shard's utterances (module level: runs in worker processes)."""
    engine = None
    for s in specs:
        rng = np.random.default_rng(s.seed)
        engine = engine or ESpeak.instance()
        if s.speaker is None:
            x, kind = nonspeech_clip(rng, (engine, voice_pools()[0]))
            utt = prepare_utterance(s.key, x, SAMPLE_RATE, "", "none", "none", "synthetic", skips,
                                    max_duration=60.0, allow_empty=True, extra={"nonspeech_kind": kind})
        else:
            spk = s.speaker
            x = resample(synthesize_text(engine, s.text, spk), engine.sample_rate, SAMPLE_RATE)
            x = pad_silence(x.astype(np.float32), rng, MAX_SILENCE_PAD)
            utt = prepare_utterance(s.key, x, SAMPLE_RATE, s.text, s.language, spk.name, "synthetic", skips,
                                    max_duration=60.0)
        if utt is None:
            raise RuntimeError(f"{s.key}: synthesized utterance was rejected ({dict(skips)}); this is a bug")
        yield utt


def fingerprint(n: int, seed: int, shard_size: int) -> str:
    """Identifies a corpus build: settings plus the speaker table."""
    voices = [list(voice_pools()[0]), UNSEEN_VARIANTS, ENGLISH_ACCENTS, RATE_RANGE, PITCH_RANGE, PITCH_RANGE_RANGE,
              MAX_RANGE_ABOVE_PITCH]
    blob = json.dumps([CORPUS_VERSION, GRAMMAR_VERSION, n, seed, shard_size, voices], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_corpus(out: str | Path, utterances: int, seed: int = 0, *, shard_size: int = 100,
                 num_workers: int | None = None) -> dict:
    """Build (or finish building) the corpus in `out`; returns the contents of corpus.json."""
    out = Path(out)
    fp = fingerprint(utterances, seed, shard_size)
    done = out / "corpus.json"
    if done.exists():
        info = json.loads(done.read_text())
        if info.get("fingerprint") == fp:
            log.info("%s: corpus already built", out)
            return info
        raise UserError(f"{out} holds a different synthetic corpus ({info.get('settings')}); use another --out or "
                        "delete it")
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "building.json"
    if partial.exists() and json.loads(partial.read_text()).get("fingerprint") != fp:
        raise UserError(f"{out} holds a partial build with other settings; use another --out or delete it")
    atomic_write_json(partial, {"fingerprint": fp})
    t0 = time.time()
    plan = plan_corpus(utterances, seed)
    items, paths = [], {}
    for split, specs in plan.items():
        (out / split).mkdir(exist_ok=True)
        chunks = [specs[i:i + shard_size] for i in range(0, len(specs), shard_size)]
        paths[split] = [out / split / shard_name(i) for i in range(len(chunks))]
        items += [(render, p, c) for p, c in zip(paths[split], chunks) if not is_finished(p)]
    # Largest jobs first so the pool's last job is short (train shards are the full ones).
    items.sort(key=lambda it: -len(it[2]))
    run_shard_jobs(items, num_workers or os.cpu_count() or 1)
    settings = {"utterances": utterances, "seed": seed, "shard_size": shard_size}
    seen, unseen = voice_pools()
    speakers = {"seen_variants": list(seen), "unseen_variants": list(unseen)}
    indexes = {split: write_index(out / split, paths[split], meta={"source": "synthetic", "split": split,
                                                                    "speakers": speakers})
               for split in plan}
    info = {
        "version": CORPUS_VERSION,
        "grammar_version": GRAMMAR_VERSION,
        "fingerprint": fp,
        "settings": settings,
        "splits": {s: {k: idx[k] for k in ("utterances", "hours", "languages")} for s, idx in indexes.items()},
        "speakers": speakers,
    }
    atomic_write_json(done, info)
    partial.unlink(missing_ok=True)
    log.info("%s: %d utterances in %.1f s", out, utterances, time.time() - t0)
    return info


def default_cache_dir() -> Path:
    """Where the tiny default's corpus is cached: $ENTROPY_ASR_CACHE or ~/.cache/entropy_asr."""
    return Path(os.environ.get("ENTROPY_ASR_CACHE", Path.home() / ".cache" / "entropy_asr"))


def corpus_dir(root: str | None = None, utterances: int = 2000, seed: int = 0, **build) -> Path:
    """`root`, or the cache dir named by the corpus settings (`build`: ensure_corpus's other settings, checked)."""
    unknown = sorted(set(build) - {"shard_size", "num_workers"})
    if unknown:
        raise UserError(f"data.synthetic: unknown key(s) {unknown}; the keys are root, utterances, seed, shard_size, "
                        "num_workers")
    for key, value, low in (("utterances", utterances, 1), ("seed", seed, 0),
                            ("shard_size", build.get("shard_size", 1), 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"data.synthetic.{key}: expected an integer >= {low}, got {value!r}")
    # the version is in the name, so a cache built by older code is never mistaken for this one
    return Path(root) if root else default_cache_dir() / f"synthetic-v{CORPUS_VERSION}-n{utterances}-s{seed}"


def ensure_corpus(root: str | None = None, utterances: int = 2000, seed: int = 0, shard_size: int = 100,
                  num_workers: int | None = None) -> Path:
    """Build the corpus into `root` (default: the cache, named by its settings) unless it is there."""
    path = corpus_dir(root, utterances, seed)
    build_corpus(path, utterances, seed, shard_size=shard_size, num_workers=num_workers)
    return path


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m entropy_asr.data.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--utterances", type=int, default=2000, help="total utterances over all splits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.time()
    info = build_corpus(a.out, a.utterances, a.seed, shard_size=a.shard_size, num_workers=a.workers)
    print(json.dumps({"out": str(a.out), "seconds": round(time.time() - t0, 1), **info["splits"]}, ensure_ascii=False))
    return info


if __name__ == "__main__":
    run_main(main)
