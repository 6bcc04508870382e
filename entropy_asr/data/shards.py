"""The one shard writer every source goes through: WebDataset tars + index.json + cmvn.json.

Layout of an output dir:
    shard-000000.tar         KEY.flac (16 kHz mono, 16-bit) + KEY.json per utterance
    shard-000000.stats.json  written after the tar: the shard is finished (resume skips it)
    index.json               shard list, utterance count, hours, skip counts, phone inventory
    cmvn.json                global mean/std of the 80-dim fbank over every frame written
Every file is written to a temp name and renamed, so a crash never leaves a half file under a
final name; `write_shards` run again skips finished shards and redoes the rest.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from entropy_asr.data.audio import (
    SAMPLE_RATE,
    CMVNStats,
    decode_audio,
    encode_flac,
    fbank,
    resample,
    to_pcm16,
)
from entropy_asr.errors import UserError, UserFileNotFound
from entropy_asr.io import atomic_open, atomic_write_json
from entropy_asr.text import (
    INVENTORY_VERSION,
    Phonemizer,
    detect_language,
    inventory_fingerprint,
    normalize_text,
)

log = logging.getLogger(__name__)

LANGUAGES = ("zh", "en", "mix", "none")
INDEX_VERSION = 1
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")


def safe_key(key: str) -> str:
    """A WebDataset key: no dots (they split key from extension) or path characters."""
    return _KEY_BAD.sub("_", key)


@dataclass
class Utterance:
    """One utterance ready to write: 16 kHz mono samples and its metadata."""

    key: str
    samples: np.ndarray  # (T,) float32 at 16 kHz
    text: str
    language: str
    speaker: str
    source: str
    extra: dict = field(default_factory=dict)  # more JSON fields (e.g. voice, template)

    def metadata(self, phonemizer: Phonemizer) -> dict:
        """The KEY.json fields (text as given, normalized text, phones, duration, ...)."""
        lang = self.language
        return {
            **self.extra,
            "text": self.text,
            "norm_text": normalize_text(self.text, lang) if lang != "none" else "",
            "language": lang,
            "phones": phonemizer(self.text, lang) if lang != "none" else [],
            "duration": round(len(self.samples) / SAMPLE_RATE, 4),
            "speaker": self.speaker,
            "source": self.source,
        }


def read_text(path: Path) -> str:
    """A transcript or manifest file as text: UTF-8 (a byte-order mark allowed), or one line naming where it is not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column {col}); convert the file "
                        "to UTF-8, e.g. iconv -f GB18030 -t UTF-8") from None


def json_lines(path: Path, fix: str, error: type[UserError] = UserError) -> Iterator[tuple[int, object]]:
    """(line number, value) for each non-blank line of a JSONL file; a line that is not JSON raises `error` naming
    the file and line, with `fix`, the one thing to do about it."""
    for n, line in enumerate(read_text(Path(path)).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{n}: not valid JSON ({e.msg}); {fix}") from None


class SkipCounter(Counter):
    """Counts skipped/adjusted inputs by kind, warning once per kind and stream (never a silent drop).

    `warned` is the set of kinds already warned about in the stream: the counters of one run's shards share
    one (run_shard_jobs); by default a counter has its own. A `quiet` counter warns about nothing and keeps each
    kind's first detail in `details` for its caller to report (a worker process's: the parent warns).
    """

    def __init__(self, iterable=None, /, *, warned: set[str] | None = None, quiet: bool = False):
        super().__init__(iterable)
        self.warned = set() if warned is None else warned
        self.quiet = quiet
        self.details: dict[str, str] = {}  # the first detail of each kind

    def add(self, kind: str, detail: str) -> None:
        """Count one occurrence of `kind`; log a warning with `detail` the first time in this stream."""
        self.details.setdefault(kind, detail)
        if not self.quiet:
            warn_skips({kind: detail}, self.warned)
        self[kind] += 1


def warn_skips(details: dict[str, str], warned: set[str]) -> None:
    """Log each kind's detail unless `warned` (the kinds already warned about in this stream) has it; add it."""
    for kind, detail in details.items():
        if kind not in warned:
            warned.add(kind)
            log.warning("%s: %s (further '%s' cases are counted in index.json, not logged)", kind, detail, kind)


def prepare_utterance(
    key: str,
    samples: np.ndarray,
    sr: int,
    text: str,
    language: str | None,
    speaker: str,
    source: str,
    skips: SkipCounter,
    *,
    max_duration: float,
    allow_empty: bool = False,
    extra: dict | None = None,
) -> Utterance | None:
    """Validate and convert one input utterance; None (and a count in `skips`) if it is unusable."""
    if sr != SAMPLE_RATE:
        skips.add("resampled", f"{key}: {sr} Hz resampled to {SAMPLE_RATE} Hz")
        samples = resample(samples, sr, SAMPLE_RATE)
    duration = len(samples) / SAMPLE_RATE
    if duration <= 0.0:
        skips.add("empty_audio", f"{key}: audio has no samples; skipped")
        return None
    if duration > max_duration:
        skips.add("too_long", f"{key}: {duration:.1f} s > max_duration {max_duration} s; skipped")
        return None
    text = text.strip()
    if not text and not allow_empty:  # checked before the language: a given "zh" does not excuse it
        skips.add("empty_text", f"{key}: empty transcript outside a non-speech set; skipped")
        return None
    lang = (language or detect_language(text)) if text else "none"
    if text and lang == "none":  # digits or symbols only ("911", "100%"): a transcript, but in which language?
        skips.add("no_language", f"{key}: transcript {text[:30]!r} has no letters or Han characters to tell its "
                                 "language (a number is read differently in zh and en); give \"language\"; skipped")
        return None
    if lang not in LANGUAGES:
        raise UserError(f"{key}: language {lang!r} is not one of {LANGUAGES}")
    return Utterance(safe_key(key), samples, text, lang, speaker, source, extra or {})


@dataclass
class ShardStats:
    """What one shard holds; persisted as shard-XXXXXX.stats.json once the tar is final."""

    count: int
    seconds: float
    cmvn: CMVNStats
    skipped: dict[str, int]
    languages: dict[str, int]

    def to_json(self) -> dict:
        """JSON-able form."""
        return {"count": self.count, "seconds": round(self.seconds, 4), "cmvn": self.cmvn.to_json(),
                "skipped": dict(sorted(self.skipped.items())), "languages": dict(sorted(self.languages.items()))}

    @classmethod
    def from_json(cls, d: dict) -> ShardStats:
        """Inverse of to_json."""
        return cls(d["count"], d["seconds"], CMVNStats.from_json(d["cmvn"]), d["skipped"], d["languages"])


def write_shard(path: Path, utterances: Iterable[Utterance], phonemizer: Phonemizer,
                skips: SkipCounter) -> ShardStats:
    """Write `utterances` into the tar `path` (atomically) and its stats file; return the stats."""
    cmvn, seconds, count, langs = CMVNStats.zeros(), 0.0, 0, Counter()
    seen: set[str] = set()
    with atomic_open(path) as f:  # nothing half-written stays behind (e.g. a duplicate key)
        # mtime/user fixed and members sorted per key: equal input gives byte-identical tars.
        sink = wds.TarWriter(f, user="entropy-asr", group="entropy-asr", mtime=0.0, encoder=False)
        for utt in utterances:
            if utt.key in seen:
                raise UserError(f"{path.name}: duplicate utterance key {utt.key!r}; keys must be unique")
            seen.add(utt.key)
            meta = utt.metadata(phonemizer)
            pcm = to_pcm16(utt.samples)
            sink.write({"__key__": utt.key, "flac": encode_flac(utt.samples),
                        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()})
            cmvn.add(fbank(pcm / 32768.0))  # statistics of exactly what a reader decodes
            seconds += meta["duration"]
            count += 1
            langs[meta["language"]] += 1
        sink.close()
    if phonemizer.unk_counts:
        skips["unk_phone_tokens"] += sum(phonemizer.unk_counts.values())
        phonemizer.unk_counts.clear()
    stats = ShardStats(count, seconds, cmvn, dict(skips), dict(langs))
    atomic_write_json(stats_path(path), stats.to_json())
    return stats


def shard_name(i: int) -> str:
    """File name of shard i."""
    return f"shard-{i:06d}.tar"


def stats_path(shard: Path) -> Path:
    """The stats file that marks `shard` finished."""
    return shard.with_name(shard.name[: -len(".tar")] + ".stats.json")


def is_finished(shard: Path) -> bool:
    """A shard is finished when both its tar and its stats file (written last) exist."""
    return shard.exists() and stats_path(shard).exists()


# One Phonemizer per worker process (it lazily loads CMUdict and the G2P model).
_PHONEMIZER: Phonemizer | None = None


def _phonemizer() -> Phonemizer:
    global _PHONEMIZER
    if _PHONEMIZER is None:
        _PHONEMIZER = Phonemizer()
    return _PHONEMIZER


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _run_job(args: tuple[Callable[..., Iterator[Utterance]], Path, Any],
             warned: set[str] | None = None) -> tuple[str, ShardStats, dict[str, str]]:
    """Write one shard; its skips are warned about against `warned`, or (None: in a worker) returned to report."""
    make, path, job = args
    skips = SkipCounter(warned=warned, quiet=warned is None)
    stats = write_shard(path, make(job, skips), _phonemizer(), skips)
    return f"{path.parent.name}/{path.name}", stats, skips.details


def write_shards(
    out_dir: str | Path,
    jobs: list[Any],
    make_utterances: Callable[[Any, SkipCounter], Iterator[Utterance]],
    *,
    num_workers: int = 1,
    meta: dict | None = None,
    pre_skipped: dict[str, int] | None = None,
) -> dict:
    """Write shard i from `make_utterances(jobs[i], skips)` in parallel; then index.json + cmvn.json.

    `make_utterances` must be a module-level function (it is sent to worker processes) and
    deterministic per job, so that a resumed run equals an uninterrupted one. Finished shards
    are skipped. Returns the index dict.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / shard_name(i) for i in range(len(jobs))]
    todo = [(make_utterances, p, j) for p, j in zip(paths, jobs) if not is_finished(p)]
    if len(todo) < len(jobs):
        log.info("%s: %d of %d shards already finished; resuming", out, len(jobs) - len(todo), len(jobs))
    run_shard_jobs(todo, num_workers)
    return write_index(out, paths, meta=meta, pre_skipped=pre_skipped)


def run_shard_jobs(items: list[tuple[Callable[..., Iterator[Utterance]], Path, Any]], num_workers: int) -> None:
    """Write each (make_utterances, shard path, job) item, in a process pool when num_workers > 1.

    Each kind of skipped input is warned about once in the run (by this process, for the workers' shards too).
    """
    warned: set[str] = set()
    if num_workers > 1 and len(items) > 1:
        # spawn, not fork: a child forked after torch ran an OpenMP region hangs in its first
        # parallel op (libgomp is not fork-safe); one torch thread per worker process.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(num_workers, len(items)), mp_context=ctx, initializer=_init_worker) as pool:
            for name, st, details in pool.map(_run_job, items):
                warn_skips(details, warned)
                log.info("%s: %d utterances, %.1f s", name, st.count, st.seconds)
    else:
        for item in items:
            _run_job(item, warned)


class NoUtterancesError(UserError):
    """Every input was skipped; `skipped` counts why."""

    def __init__(self, message: str, skipped: dict[str, int]):
        super().__init__(message)
        self.skipped = skipped


def write_index(out: Path, paths: list[Path], *, meta: dict | None = None,
                pre_skipped: dict[str, int] | None = None) -> dict:
    """Merge the shard stats into index.json and cmvn.json (atomically)."""
    stats = [ShardStats.from_json(json.loads(stats_path(p).read_text())) for p in paths]
    cmvn = CMVNStats.zeros()
    skipped: Counter = Counter(pre_skipped or {})
    langs: Counter = Counter()
    for st in stats:
        cmvn = cmvn.merge(st.cmvn)
        skipped.update(st.skipped)
        langs.update(st.languages)
    count = sum(st.count for st in stats)
    if count == 0:
        raise NoUtterancesError(f"{out}: no usable utterances were written (skipped: {dict(skipped)})", dict(skipped))
    atomic_write_json(out / "cmvn.json", cmvn.to_json())
    index = {
        "version": INDEX_VERSION,
        "shards": [{"name": p.name, "count": st.count, "seconds": round(st.seconds, 4)} for p, st in zip(paths, stats)],
        "utterances": count,
        "hours": round(sum(st.seconds for st in stats) / 3600.0, 6),
        "languages": dict(sorted(langs.items())),
        "skipped": dict(sorted(skipped.items())),
        "phone_inventory": {"version": INVENTORY_VERSION, "fingerprint": inventory_fingerprint()},
        "sample_rate": SAMPLE_RATE,
        "cmvn": "cmvn.json",
        **(meta or {}),
    }
    atomic_write_json(out / "index.json", index)
    if skipped:
        log.warning("%s: skipped or adjusted inputs: %s", out, dict(skipped))
    return index


def read_index(data_dir: str | Path) -> dict:
    """Load DIR/index.json with a clear error when DIR is not a prepared shard dir."""
    path = Path(data_dir) / "index.json"
    if not path.exists():
        raise UserFileNotFound(
            f"{path} not found: {data_dir} is not a shard dir; build one with "
            "`python -m entropy_asr.data.prepare ...` or `python -m entropy_asr.data.synthetic ...`"
        )
    index = json.loads(path.read_text())
    outside = [s.get("name") for s in index.get("shards", [])
               if not isinstance(s.get("name"), str) or Path(s["name"]).name != s["name"]
               or s["name"] in ("", ".", "..")]
    if outside:
        raise UserError(f"{path}: shard names must be file names inside {data_dir}, got {outside[:3]}; "
                        "rebuild the index (entropy_asr.data.prepare)")
    missing = [s["name"] for s in index["shards"] if not (Path(data_dir) / s["name"]).exists()]
    if missing:
        raise UserFileNotFound(f"{data_dir}: index.json lists shards that are missing: {missing[:5]}")
    return index


def read_transcripts(data_dir: str | Path) -> list[dict]:
    """Every utterance's metadata (text, language, ...; key: its key in the shard) of a shard dir, without decoding
    audio."""
    out = []
    for s in read_index(data_dir)["shards"]:
        with tarfile.open(Path(data_dir) / s["name"]) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    meta.setdefault("key", member.name.partition(".")[0])
                    out.append(meta)
    return out


def read_utterances(data_dir: str | Path) -> Iterator[dict]:
    """A shard dir's utterances in index order: {key, text, language, audio (16 kHz mono float32), flac (the member's
    bytes)}, decoded as the data pipeline decodes them (for tools and tests that need the audio, not training)."""
    for s in read_index(data_dir)["shards"]:
        with tarfile.open(Path(data_dir) / s["name"]) as tar:
            pending: dict[str, dict] = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                if not member.isfile() or ext not in ("flac", "json"):
                    continue
                item = pending.setdefault(key, {})
                item[ext] = tar.extractfile(member).read()
                if "flac" in item and "json" in item:
                    del pending[key]
                    meta = json.loads(item["json"])
                    x, sr = decode_audio(item["flac"])
                    yield {"key": key, "text": meta["text"], "language": meta.get("language", "none"),
                           "audio": x if sr == SAMPLE_RATE else resample(x, sr), "flac": item["flac"]}
