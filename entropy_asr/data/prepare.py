"""Import a real corpus into WebDataset shards: JSONL manifest, Kaldi data dir, LibriSpeech, AISHELL-1.

    python -m entropy_asr.data.prepare jsonl manifest.jsonl --out shards/mine
    python -m entropy_asr.data.prepare kaldi data/train --out shards/train
    python -m entropy_asr.data.prepare librispeech LibriSpeech/dev-clean --out shards/ls-dev-clean
    python -m entropy_asr.data.prepare aishell data_aishell --split dev --out shards/aishell-dev
    python -m entropy_asr.data.prepare jsonl noise.jsonl --nonspeech --out shards/my-nonspeech

A set of clips without speech (silence, noise, music, for training the model to say nothing and
for measuring hallucination) is declared with --nonspeech, or line by line in a JSONL manifest
with "language": "none"; its transcripts must be empty.

Each importer only parses its layout into `Record`s; reading, resampling, validation,
phonemization, CMVN and the tars are the shared writer's (`entropy_asr.data.shards`).
Parallel across processes, resumable (finished shards are skipped), atomic.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf

from entropy_asr.data.audio import TruncatedAudioError, read_audio
from entropy_asr.data.shards import (
    NoUtterancesError,
    SkipCounter,
    Utterance,
    json_lines,
    prepare_utterance,
    read_text,
    safe_key,
    shard_name,
    stats_path,
    write_shards,
)
from entropy_asr.errors import UserError, run_main
from entropy_asr.io import atomic_write_json


@dataclass(frozen=True)
class Record:
    """One utterance of a source corpus: its audio (file or segment of one) and transcript."""

    key: str
    audio: str
    text: str
    language: str | None = None
    speaker: str = "unknown"
    start: float = 0.0
    end: float | None = None


class ManifestError(UserError):
    """An input file is malformed; the message names the file, line and fix."""


def _require_file(audio: str, where: str) -> str:
    if not os.path.isfile(audio):
        raise ManifestError(f"{where}: audio file {audio!r} does not exist; fix the path or remove the line")
    return audio


def read_manifest(path: Path, nonspeech: bool = False) -> list[Record]:
    """A JSONL manifest: {"audio": path, "text": str, optional "id", "language", "speaker", "start", "end"}.

    "language": "none" marks a clip without speech (its text must be empty); `nonspeech` makes every
    line one ("text" may then be left out).
    """
    records = []
    for n, d in json_lines(path, 'write one JSON object per line ({"audio": PATH, "text": ...})', ManifestError):
        where = f"{path}:{n}"
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: expected a JSON object with \"audio\" and \"text\", got {type(d).__name__}")
        for k in ("audio",) if nonspeech else ("audio", "text"):
            if k not in d:
                raise ManifestError(f"{where}: missing key {k!r}; each line needs \"audio\" and \"text\"")
        language = "none" if nonspeech else d.get("language")
        text = "" if d.get("text") is None else str(d["text"])  # null: no transcript (not the word "None")
        if language == "none" and text.strip():
            declared = " from --nonspeech" if nonspeech else ""
            raise ManifestError(f"{where}: a clip without speech (language \"none\"{declared}) "
                                f"must have an empty \"text\", got {text[:40]!r}; give its language, or empty the text")
        if not isinstance(d["audio"], str) or not d["audio"]:
            raise ManifestError(f"{where}: \"audio\" must be a file path, got {d['audio']!r}")
        audio = d["audio"] if os.path.isabs(d["audio"]) else str(path.parent / d["audio"])
        _require_file(audio, where)
        key = str(d.get("id") or Path(d["audio"]).with_suffix("").as_posix().replace("/", "_"))
        try:
            start = float(d.get("start") or 0.0)
            end = None if d.get("end") is None else float(d["end"])
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: \"start\" and \"end\" must be seconds, got {d.get('start')!r} "
                                f"{d.get('end')!r}") from None
        if not (math.isfinite(start) and start >= 0.0 and (end is None or (math.isfinite(end) and end > start))):
            raise ManifestError(f"{where}: needs 0 <= start < end, got {start} {end}")
        records.append(Record(key, audio, text, language, str(d.get("speaker", "unknown")), start, end))
    return records


def _kaldi_table(path: Path, min_fields: int = 2) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a Kaldi table; a repeated first field (id) is refused, as Kaldi's
    validate_data_dir.sh does: which of two lines is right cannot be guessed."""
    seen: dict[str, int] = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1) if min_fields == 2 else line.split()
        if len(parts) < min_fields:
            raise ManifestError(f"{path}:{n}: expected at least {min_fields} fields, got {line!r}")
        if parts[0] in seen:
            raise ManifestError(f"{path}:{n}: id {parts[0]!r} repeats line {seen[parts[0]]}; ids must be unique: "
                                "keep one of the lines")
        seen[parts[0]] = n
        yield n, parts


def read_kaldi(data_dir: Path, skips: SkipCounter | None = None) -> list[Record]:
    """A Kaldi data dir: wav.scp + text (+ optional segments, utt2spk); untranscribed ones counted in `skips`."""
    skips = skips if skips is not None else SkipCounter()
    for name in ("wav.scp", "text"):
        if not (data_dir / name).exists():
            raise ManifestError(f"{data_dir}: no {name}; a Kaldi data dir needs wav.scp and text")
    wavs = {}
    for n, (rec, path) in _kaldi_table(data_dir / "wav.scp"):
        path = path.strip()
        if path.endswith("|"):
            raise ManifestError(f"{data_dir / 'wav.scp'}:{n}: piped commands are not supported ({path!r}); "
                                "convert the audio to files and list their paths")
        wavs[rec] = (path if os.path.isabs(path) else str(data_dir / path), f"{data_dir / 'wav.scp'}:{n}")
    texts, text_lines = {}, {}
    for n, parts in _kaldi_table(data_dir / "text", 1):
        texts[parts[0]], text_lines[parts[0]] = " ".join(parts[1:]), n
    spk = {}
    if (data_dir / "utt2spk").exists():
        spk = {utt: s.strip() for _, (utt, s) in _kaldi_table(data_dir / "utt2spk")}
    records = []
    segmented = (data_dir / "segments").exists()
    audio = set() if segmented else set(wavs)  # the utterance ids that have audio
    if segmented:
        for n, parts in _kaldi_table(data_dir / "segments", 4):
            utt, rec, start, end = parts[:4]
            audio.add(utt)
            where = f"{data_dir / 'segments'}:{n}"
            if rec not in wavs:
                raise ManifestError(f"{where}: recording {rec!r} is not in wav.scp")
            if utt not in texts:  # common (e.g. filtered segments): counted, not imported
                skips.add("no_transcript", f"{where}: segment {utt!r} has no line in text; skipped")
                continue
            _require_file(wavs[rec][0], wavs[rec][1])
            try:
                t0, t1 = float(start), float(end)
            except ValueError:
                raise ManifestError(f"{where}: start and end must be seconds, got {start!r} {end!r}") from None
            if t1 == -1.0:  # Kaldi's "to the end of the recording"
                t1 = None
            elif not (math.isfinite(t1) and 0.0 <= t0 < t1):
                raise ManifestError(f"{where}: segment {utt!r} needs 0 <= start < end (or end -1), got {start} {end}")
            if not (math.isfinite(t0) and t0 >= 0.0):
                raise ManifestError(f"{where}: segment {utt!r} needs a start >= 0, got {start}")
            records.append(Record(utt, wavs[rec][0], texts[utt], None, spk.get(utt, "unknown"), t0, t1))
    else:
        for utt, (path, where) in wavs.items():
            if utt not in texts:
                skips.add("no_transcript", f"{where}: {utt!r} has no line in text; skipped")
                continue
            _require_file(path, where)
            records.append(Record(utt, path, texts[utt], None, spk.get(utt, "unknown")))
    for utt in texts.keys() - audio:  # a transcript with no audio: counted, never a silent drop
        skips.add("no_audio", f"{data_dir / 'text'}:{text_lines[utt]}: {utt!r} has no audio in "
                              f"{'segments' if segmented else 'wav.scp'}; skipped")
    return records


def read_librispeech(split_dir: Path) -> list[Record]:
    """A LibriSpeech split dir: SPK/CHAPTER/SPK-CHAPTER.trans.txt + SPK-CHAPTER-UTT.flac."""
    trans = sorted(split_dir.glob("*/*/*.trans.txt"))
    if not trans:
        raise ManifestError(f"{split_dir}: no SPK/CHAPTER/*.trans.txt; point at a split dir such as "
                            "LibriSpeech/dev-clean")
    records = []
    for t in trans:
        for n, line in enumerate(read_text(t).splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            audio = _require_file(str(t.parent / f"{utt}.flac"), f"{t}:{n}")
            records.append(Record(utt, audio, text, "en", utt.split("-")[0]))
    return records


def read_aishell(root: Path, split: str | None, skips: SkipCounter | None = None) -> list[Record]:
    """An AISHELL-1 root: wav/<split>/SPK/*.wav + transcript/aishell_transcript_v0.8.txt (space-separated words)."""
    skips = skips if skips is not None else SkipCounter()
    transcript = root / "transcript" / "aishell_transcript_v0.8.txt"
    if not transcript.exists():
        raise ManifestError(f"{root}: no transcript/aishell_transcript_v0.8.txt; point at the AISHELL-1 root "
                            "(data_aishell)")
    splits = sorted(p.name for p in (root / "wav").glob("*") if p.is_dir())
    if split is None or split not in splits:
        raise ManifestError(f"{root}: choose the split with --split (found: {', '.join(splits) or 'none'})")
    text = {}
    for line in read_text(transcript).splitlines():
        utt, _, words = line.strip().partition(" ")
        if utt:
            text[utt] = "".join(words.split())  # the transcript is word-segmented with spaces
    records = []
    for wav in sorted((root / "wav" / split).glob("*/*.wav")):
        if wav.stem not in text:  # AISHELL-1 ships some audio without transcripts: counted, not imported
            skips.add("no_transcript", f"{wav}: no line in {transcript.name}; skipped")
            continue
        records.append(Record(wav.stem, str(wav), text[wav.stem], "zh", wav.parent.name))
    return records


def records_to_utterances(job: tuple[list[Record], str, float], skips: SkipCounter) -> Iterator[Utterance]:
    """Read each record's audio and validate it (module level: it runs in worker processes)."""
    records, source, max_duration = job
    for r in records:
        try:
            samples, sr = read_audio(r.audio, r.start, r.end)
        except TruncatedAudioError as e:  # its transcript covers audio that is not there
            skips.add("truncated_audio", f"{e}; skipped")
            continue
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            skips.add("corrupt_audio", f"{r.audio}: cannot decode ({e}); skipped")
            continue
        utt = prepare_utterance(r.key, samples, sr, r.text, r.language, r.speaker, source, skips,
                                max_duration=max_duration, allow_empty=r.language == "none")
        if utt is not None:
            yield utt


def prepare(records: list[Record], out: str | Path, *, source: str, shard_size: int = 1000,
            num_workers: int | None = None, max_duration: float = 60.0, pre_skipped: dict | None = None) -> dict:
    """Shard `records` into `out` (sorted by key, `shard_size` per shard); resumable. Returns the index."""
    if not records:
        raise ManifestError(f"no utterances found for {out}")
    if shard_size < 1:
        raise UserError(f"shard_size must be >= 1, got {shard_size}")
    records = sorted(records, key=lambda r: r.key)
    dups = [(a, b) for a, b in itertools.pairwise(records) if safe_key(a.key) == safe_key(b.key)]
    if dups:  # checked before anything is written: a corrected rerun starts clean
        a, b = dups[0]
        raise ManifestError(f"utterance id {a.key!r} is used more than once ({a.audio} and {b.audio}; {len(dups)} "
                            f"repeat(s) in all); ids must be unique: fix the manifest")
    out = Path(out)
    if (out / "plan.json").exists() is False and ((out / "index.json").exists() or any(out.glob("shard-*.tar"))):
        raise ManifestError(f"{out} already holds shards that this input did not write (no plan.json: another "
                            f"corpus, or a synthetic split); use a new --out or delete {out}")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # The plan fingerprint guards resumption: finished shards are reused only for the same input.
    plan = hashlib.sha256(json.dumps([asdict(r) for r in records]
                                     + [shard_size, max_duration, source]).encode()).hexdigest()[:16]
    plan_file = out / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text())["fingerprint"] != plan:
        raise ManifestError(f"{out} holds shards of a different input or settings; use a new --out or delete {out}")
    atomic_write_json(plan_file, {"fingerprint": plan, "records": len(records), "shard_size": shard_size})
    jobs = [(records[i:i + shard_size], source, max_duration) for i in range(0, len(records), shard_size)]
    try:
        return write_shards(out, jobs, records_to_utterances, num_workers=num_workers or os.cpu_count() or 1,
                            meta={"source": source}, pre_skipped=pre_skipped)
    except NoUtterancesError as e:
        if created:  # nothing usable came of it: leave no half-made shard dir behind
            shutil.rmtree(out, ignore_errors=True)
        else:  # a dir that was there: remove only this plan's (empty) shards and plan, so a corrected rerun
            # (e.g. with --nonspeech) is not refused as "a different input" nor handed these empty shards
            for i in range(len(jobs)):
                (out / shard_name(i)).unlink(missing_ok=True)
                stats_path(out / shard_name(i)).unlink(missing_ok=True)
            plan_file.unlink(missing_ok=True)
        hint = ""
        if e.skipped.get("empty_text"):
            hint = ("; empty transcripts are kept only in a set of clips without speech: pass --nonspeech, or give "
                    "those lines \"language\": \"none\"")
        raise ManifestError(f"{out}: every one of the {len(records)} inputs was skipped ({e.skipped}){hint}") from None


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m entropy_asr.data.prepare", description=__doc__.split("\n")[0])
    p.add_argument("format", choices=["jsonl", "kaldi", "librispeech", "aishell"])
    p.add_argument("input", type=Path, help="manifest file, Kaldi data dir, LibriSpeech split dir or AISHELL-1 root")
    p.add_argument("--out", type=Path, required=True, help="output shard dir")
    p.add_argument("--split", help="AISHELL-1 split (train, dev, test)")
    p.add_argument("--source", help="name recorded in each utterance's JSON (default: the format and input name)")
    p.add_argument("--shard-size", type=int, default=1000, help="utterances per shard")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes")
    p.add_argument("--max-duration", type=float, default=60.0, help="longer clips are skipped and counted (s)")
    p.add_argument("--nonspeech", action="store_true",
                   help="the input is clips without speech (silence, noise, music): empty transcripts, language none "
                        "(jsonl only; for data.nonspeech_dirs and hallucination tests)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not a.input.exists():
        p.error(f"{a.input} does not exist")
    if a.nonspeech and a.format != "jsonl":
        p.error("--nonspeech takes a jsonl manifest (one {\"audio\": path} per line)")
    skips = SkipCounter()
    records = {"jsonl": lambda: read_manifest(a.input, a.nonspeech), "kaldi": lambda: read_kaldi(a.input, skips),
               "librispeech": lambda: read_librispeech(a.input),
               "aishell": lambda: read_aishell(a.input, a.split, skips)}[a.format]()
    source = a.source or f"{a.format}:{a.input.name}" + (f"/{a.split}" if a.split else "")
    index = prepare(records, a.out, source=source, shard_size=a.shard_size, num_workers=a.workers,
                    max_duration=a.max_duration, pre_skipped=dict(skips))
    print(json.dumps({k: index[k] for k in ("utterances", "hours", "languages", "skipped")}, ensure_ascii=False))
    return index


if __name__ == "__main__":
    run_main(main)
