"""Hallucination test sets: many kinds of non-speech, and speech with long silence or noise around it.

    python -m entropy_asr.data.stress --corpus DIR --out OUT [--nonspeech 240] [--padded 180] [--paused 180]

Writes three shard dirs next to each other (readable by evaluate.py like any prepared set):
  OUT/nonspeech_wide  `--nonspeech` clips without speech (language "none", empty text), the same
                      number of each kind in synthetic.NONSPEECH_KINDS (silence, near-silence,
                      white/pink/brown noise, hum, tones, clicks, music, babble), drawn from seeds
                      that no corpus split uses, so no clip was heard in training;
  OUT/test_padded     the first `--padded` speech utterances of CORPUS/test, each with 2-6 s of
                      silence, near-silence, coloured noise or hum before and after it (one kind
                      per side, -60..-30 dBFS): an LLM decoder that "fills" long non-speech stretches
                      shows it as insertions here and not on the clean test set;
  OUT/test_paused     the same utterances, each with one pause of 1.5-4 s of those kinds inserted
                      at its quietest point (25 ms energy) in the middle half: a speaker who stops
                      mid-sentence; a decoder that ends its transcript at a long pause deletes the rest.
All are deterministic for equal arguments; finished shards are kept when a build resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import tarfile
from pathlib import Path

import numpy as np

from entropy_asr.data.audio import SAMPLE_RATE, decode_audio
from entropy_asr.data.shards import (
    SkipCounter,
    prepare_utterance,
    read_index,
    write_shards,
)
from entropy_asr.errors import UserError, UserFileNotFound, run_main

log = logging.getLogger(__name__)

PAD_KINDS = ("silence", "near_silence", "white", "pink", "brown", "hum")
PAD_SECONDS = (2.0, 6.0)
PAUSE_SECONDS = (1.5, 4.0)
WINDOW, HOP = 400, 160  # 25 ms energy windows every 10 ms (16 kHz), to find the quietest point
SHARD_SIZE = 60


def pad_clip(rng: np.random.Generator, kind: str, seconds: float) -> np.ndarray:
    """`seconds` of one PAD_KINDS kind at -60..-30 dBFS (near-silence -70..-60; silence: zeros)."""
    from entropy_asr.data.synthetic import nonspeech_clip

    return nonspeech_clip(rng, None, kind=kind, seconds=seconds, level_db=(-60.0, -30.0))[0]


def _nonspeech_job(job: tuple[int, list[int]], skips: SkipCounter):
    """Clips `indices` of the wide non-speech set (module level: runs in worker processes)."""
    from entropy_asr.data.espeak import ESpeak
    from entropy_asr.data.synthetic import NONSPEECH_KINDS, nonspeech_clip, voice_pools

    seed, indices = job
    engine = None
    for i in indices:
        kind = NONSPEECH_KINDS[i % len(NONSPEECH_KINDS)]
        # a fresh generator per clip (resumable, order-free); "stress" keeps it apart from the corpus' seeds
        rng = np.random.default_rng([seed, i, 0x57E55])
        if kind == "babble":
            engine = engine or ESpeak.instance()
        x, got = nonspeech_clip(rng, (engine, voice_pools()[0]) if kind == "babble" else None, kind=kind)
        assert got == kind
        utt = prepare_utterance(f"stress{seed}_nonspeech_{i:06d}", x, SAMPLE_RATE, "", "none", "none", "stress",
                                skips, max_duration=60.0, allow_empty=True, extra={"nonspeech_kind": kind})
        yield utt


def _edited_speech(job: tuple[int, list[tuple[int, dict, bytes]]], skips: SkipCounter, name: str, salt: int, edit):
    """The test utterances of `job`, each changed by `edit(rng, samples) -> (samples, extra metadata)`, keyed
    `<key>_<name>` (module level: runs in worker processes); a fresh generator per utterance (resumable, order-free)."""
    seed, items = job
    for i, meta, flac in items:
        x, sr = decode_audio(flac)
        if sr != SAMPLE_RATE:
            raise UserError(f"test_{name}: {meta.get('key', i)} is {sr} Hz; the corpus is {SAMPLE_RATE} Hz")
        y, extra = edit(np.random.default_rng([seed, i, salt]), x.astype(np.float32))
        utt = prepare_utterance(f"{meta['key']}_{name}", y, SAMPLE_RATE, meta["text"], meta["language"],
                                meta["speaker"], "stress", skips, max_duration=60.0, extra=extra)
        if utt is None:
            raise RuntimeError(f"test_{name}: {meta['key']} was rejected ({dict(skips)}); this is a bug")
        yield utt


def _pad_edges(rng: np.random.Generator, x: np.ndarray) -> tuple[np.ndarray, dict]:
    kinds = [str(k) for k in rng.choice(PAD_KINDS, 2)]
    before, after = (pad_clip(rng, k, float(rng.uniform(*PAD_SECONDS))) for k in kinds)
    return np.concatenate([before, x, after]), {"pad_kinds": kinds, "pad_samples": [len(before), len(after)]}


def _pause_inside(rng: np.random.Generator, x: np.ndarray) -> tuple[np.ndarray, dict]:
    kind = str(rng.choice(PAD_KINDS))
    pause = pad_clip(rng, kind, float(rng.uniform(*PAUSE_SECONDS)))
    at = quietest_point(x)
    return np.concatenate([x[:at], pause, x[at:]]), {"pause_kind": kind, "pause_at": at, "pause_samples": len(pause)}


def quietest_point(x: np.ndarray) -> int:
    """The sample at the centre of the lowest-energy 25 ms window (10 ms hop) in the middle half of `x`."""
    lo, hi = len(x) // 4, 3 * len(x) // 4
    if hi - lo < WINDOW:
        return len(x) // 2
    frames = np.lib.stride_tricks.sliding_window_view(x[lo:hi].astype(np.float64), WINDOW)[::HOP]
    return lo + int(np.argmin((frames ** 2).sum(axis=1))) * HOP + WINDOW // 2


def _padded_job(job, skips: SkipCounter):  # (samples at 16 kHz in the metadata)
    yield from _edited_speech(job, skips, "padded", 0x9ADD, _pad_edges)


def _paused_job(job, skips: SkipCounter):
    yield from _edited_speech(job, skips, "paused", 0x9A05E, _pause_inside)


def _speech_items(test_dir: Path, n: int) -> list[tuple[int, dict, bytes]]:
    """The first `n` speech utterances of a shard dir: (index, metadata with its key, flac bytes)."""
    out: list[tuple[int, dict, bytes]] = []
    for s in read_index(test_dir)["shards"]:
        with tarfile.open(test_dir / s["name"]) as tar:
            members: dict[str, dict] = {}
            for m in tar:
                key, _, ext = m.name.rpartition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key in sorted(members):
            meta = json.loads(members[key]["json"])
            if meta["language"] == "none" or not meta["text"].strip():
                continue
            out.append((len(out), {**meta, "key": key}, members[key]["flac"]))
            if len(out) == n:
                return out
    return out


def build_stress_sets(corpus: str | Path, out: str | Path, *, nonspeech: int = 240, padded: int = 180,
                      paused: int | None = None, seed: int = 0, num_workers: int = 1) -> dict[str, Path]:
    """Build OUT/nonspeech_wide, OUT/test_padded and OUT/test_paused (see the module docstring; `paused` defaults to
    `padded`, 0 leaves the set out); returns {name: dir}."""
    from entropy_asr.data.synthetic import NONSPEECH_KINDS

    corpus, out = Path(corpus), Path(out)
    if nonspeech < len(NONSPEECH_KINDS):
        raise UserError(f"--nonspeech {nonspeech}: give at least one clip of each of the {len(NONSPEECH_KINDS)} kinds")
    test = corpus / "test"
    if not (test / "index.json").is_file():
        raise UserFileNotFound(f"--corpus {corpus}: no test/index.json; give a corpus dir with a test split "
                               "(e.g. the synthetic corpus' cache dir)")
    paused = padded if paused is None else paused
    for flag, n in (("--padded", padded), ("--paused", paused)):
        if n < 0:
            raise UserError(f"{flag} {n}: give a count of test utterances >= 0 (0 leaves the set out)")
    sizes = {"nonspeech_wide": nonspeech, "test_padded": padded, "test_paused": paused}
    dirs = {name: out / name for name, n in sizes.items() if n or name == "nonspeech_wide"}
    for name, d in dirs.items():
        n = sizes[name]
        done = d / "index.json"
        if done.exists() and json.loads(done.read_text()).get("stress") == {"seed": seed, "n": n}:
            continue
        meta = {"source": "stress", "split": name, "stress": {"seed": seed, "n": n}}
        if name == "nonspeech_wide":
            idx = list(range(nonspeech))
            jobs = [(seed, idx[i:i + SHARD_SIZE]) for i in range(0, nonspeech, SHARD_SIZE)]
            write_shards(d, jobs, _nonspeech_job, num_workers=num_workers, meta=meta)
        else:
            items = _speech_items(test, n)
            if len(items) < n:
                flag = "--padded" if name == "test_padded" else "--paused"
                raise UserError(f"{flag} {n}: {test} has only {len(items)} speech utterances")
            jobs = [(seed, items[i:i + SHARD_SIZE]) for i in range(0, n, SHARD_SIZE)]
            write_shards(d, jobs, _padded_job if name == "test_padded" else _paused_job, num_workers=num_workers,
                         meta=meta)
        log.info("%s: built", d)
    return dirs


def main(argv: list[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, required=True, help="a corpus dir holding test/ (a prepared shard dir)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--nonspeech", type=int, default=240, help="non-speech clips (spread evenly over the kinds)")
    p.add_argument("--padded", type=int, default=180, help="speech utterances of test/ to pad (0: none)")
    p.add_argument("--paused", type=int, help="speech utterances of test/ to give a long pause (default: --padded; "
                                              "0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dirs = build_stress_sets(a.corpus, a.out, nonspeech=a.nonspeech, padded=a.padded, paused=a.paused, seed=a.seed,
                             num_workers=a.num_workers)
    for name, d in dirs.items():
        print(f"{name}: {d}")
    return dirs


if __name__ == "__main__":
    run_main(main)
