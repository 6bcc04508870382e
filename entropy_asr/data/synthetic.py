"""A bilingual (Mandarin + English + code-switched) speech corpus synthesized offline with eSpeak NG.

    python -m entropy_asr.data.synthetic --out DIR --utterances N --seed S

Writes the splits DIR/{train,dev,test,test_unseen_voice,nonspeech}, each a shard dir (see
entropy_asr.data.shards), and DIR/corpus.json once everything is done. Sentences are disjoint
across splits; test_unseen_voice uses speakers never heard in train; nonspeech holds
silence and noise-only clips with empty transcripts (for hallucination tests). The same seed
gives byte-identical shards; an interrupted build resumes (finished shards are kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from entropy_asr.data.audio import SAMPLE_RATE, resample
from entropy_asr.data.augment import colored_noise
from entropy_asr.data.espeak import SPEAKERS, ESpeak, synthesize_text
from entropy_asr.data.sentences import SentenceGenerator
from entropy_asr.data.shards import (SkipCounter, Utterance, atomic_write_json, is_finished, prepare_utterance,
                                     run_shard_jobs, shard_name, write_index)
from entropy_asr.text import normalize_text

log = logging.getLogger(__name__)

CORPUS_VERSION = 2  # 2: features floored at the dither level (audio.FEATURE_VERSION 2)
SPLITS = ("train", "dev", "test", "test_unseen_voice", "nonspeech")
# Share of the N utterances per split (nonspeech included); each split gets at least 2.
SPLIT_SHARE = {"train": 0.78, "dev": 0.06, "test": 0.08, "test_unseen_voice": 0.06, "nonspeech": 0.02}
LANGUAGE_SHARE = {"zh": 0.4, "en": 0.4, "mix": 0.2}
N_UNSEEN_SPEAKERS = 3  # the last speakers of SPEAKERS: never in train/dev/test
MAX_SILENCE_PAD = 1.0  # seconds of silence at each end, U(0, 1) (METHOD.md augmentation)


@dataclass(frozen=True)
class UttSpec:
    """Everything needed to render one utterance deterministically in any process."""

    key: str
    text: str
    language: str
    speaker: int  # index into SPEAKERS; -1 for non-speech
    seed: int  # for padding and non-speech noise


def split_counts(n: int) -> dict[str, int]:
    """Utterances per split for a corpus of n (largest-remainder rounding, >= 2 each)."""
    if n < 2 * len(SPLITS):
        raise ValueError(f"--utterances {n} is too small: each of the {len(SPLITS)} splits needs at least 2")
    counts = {s: max(2, int(n * f)) for s, f in SPLIT_SHARE.items()}
    counts["train"] += n - sum(counts.values())
    return counts


def plan_corpus(n: int, seed: int) -> dict[str, list[UttSpec]]:
    """Sentences, languages, speakers and seeds of every utterance; disjoint sentences across splits."""
    rng = random.Random(f"entropy-asr-synthetic/{seed}")
    gen = SentenceGenerator()
    seen_speakers = list(range(len(SPEAKERS) - N_UNSEEN_SPEAKERS))
    unseen_speakers = list(range(len(SPEAKERS) - N_UNSEEN_SPEAKERS, len(SPEAKERS)))
    used: set[str] = set()  # normalized sentences already taken by any split
    plan: dict[str, list[UttSpec]] = {}
    langs, weights = list(LANGUAGE_SHARE), list(LANGUAGE_SHARE.values())
    for split, count in split_counts(n).items():
        specs = []
        for i in range(count):
            key = f"syn{seed}_{split}_{i:06d}"
            if split == "nonspeech":
                specs.append(UttSpec(key, "", "none", -1, rng.getrandbits(32)))
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
            speaker = rng.choice(unseen_speakers if split == "test_unseen_voice" else seen_speakers)
            specs.append(UttSpec(key, text, lang, speaker, rng.getrandbits(32)))
        plan[split] = specs
    return plan


def nonspeech_clip(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A 1-6 s clip with no speech: digital silence, near-silence, colored noise or mains hum."""
    n = int(rng.uniform(1.0, 6.0) * SAMPLE_RATE)
    kind = str(rng.choice(["silence", "near_silence", "white", "pink", "brown", "hum"]))
    if kind == "silence":
        return np.zeros(n, np.float32), kind
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        f0 = float(rng.choice([50.0, 60.0]))
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 4))
        x = x / np.abs(x).max()
    else:
        x = colored_noise(n, rng, {"near_silence": 0.0, "white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    level_db = rng.uniform(-70, -60) if kind == "near_silence" else rng.uniform(-40, -15)
    return (x * 10 ** (level_db / 20) / max(1e-9, float(np.sqrt(np.mean(x ** 2))))).clip(-1, 1).astype(np.float32), kind


def render(specs: list[UttSpec], skips: SkipCounter) -> Iterator[Utterance]:
    """Synthesize a shard's utterances (module level: runs in worker processes)."""
    engine = None
    for s in specs:
        rng = np.random.default_rng(s.seed)
        if s.speaker < 0:
            x, kind = nonspeech_clip(rng)
            utt = prepare_utterance(s.key, x, SAMPLE_RATE, "", "none", "none", "synthetic", skips,
                                    max_duration=60.0, allow_empty=True, extra={"nonspeech_kind": kind})
        else:
            engine = engine or ESpeak.instance()
            spk = SPEAKERS[s.speaker]
            x = resample(synthesize_text(engine, s.text, spk), engine.sample_rate, SAMPLE_RATE)
            left, right = (rng.uniform(0, MAX_SILENCE_PAD, 2) * SAMPLE_RATE).astype(int)
            x = np.concatenate([np.zeros(left, np.float32), x.astype(np.float32), np.zeros(right, np.float32)])
            utt = prepare_utterance(s.key, x, SAMPLE_RATE, s.text, s.language, spk.name, "synthetic", skips,
                                    max_duration=60.0)
        if utt is None:
            raise RuntimeError(f"{s.key}: synthesized utterance was rejected ({dict(skips)}); this is a bug")
        yield utt


def fingerprint(n: int, seed: int, shard_size: int) -> str:
    """Identifies a corpus build: settings plus the speaker table."""
    blob = json.dumps([CORPUS_VERSION, n, seed, shard_size, [asdict(s) for s in SPEAKERS]], sort_keys=True)
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
        raise ValueError(f"{out} holds a different synthetic corpus ({info.get('settings')}); use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "building.json"
    if partial.exists() and json.loads(partial.read_text()).get("fingerprint") != fp:
        raise ValueError(f"{out} holds a partial build with other settings; use another --out or delete it")
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
    speakers = {"seen": [s.name for s in SPEAKERS[:-N_UNSEEN_SPEAKERS]],
                "unseen": [s.name for s in SPEAKERS[-N_UNSEEN_SPEAKERS:]]}
    indexes = {split: write_index(out / split, paths[split], meta={"source": "synthetic", "split": split,
                                                                    "speakers": speakers})
               for split in plan}
    info = {
        "version": CORPUS_VERSION,
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


def corpus_dir(root: str | None = None, utterances: int = 2000, seed: int = 0, **_) -> Path:
    """`root`, or the cache dir named by the corpus settings."""
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
    try:
        info = build_corpus(a.out, a.utterances, a.seed, shard_size=a.shard_size, num_workers=a.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps({"out": str(a.out), "seconds": round(time.time() - t0, 1), **info["splits"]}, ensure_ascii=False))
    return info


if __name__ == "__main__":
    main()
