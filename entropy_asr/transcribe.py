"""Transcribe audio files with a trained model: text, JSON (timestamps) or SRT; offline or streaming.

python -m entropy_asr.transcribe EXPORT_DIR FILE [FILE ...] [--format text|json|srt] [--batch-size B] [--device D]
python -m entropy_asr.transcribe EXPORT_DIR - < list_of_paths.txt
python -m entropy_asr.transcribe EXPORT_DIR FILE --stream [--chunk-ms 640] [--left-chunks 4]

EXPORT_DIR: a speech stage's export dir (runs/tiny/joint_sft/export) or its run dir. FILE: anything
soundfile reads (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1), any rate, stereo downmixed; `-` reads
paths from stdin, one a line. Recordings longer than the model's training maximum are cut on pauses
and stitched (entropy_asr.inference.recognizer). A file that cannot be read gets one line on stderr;
the others are still transcribed, and the exit status is 1 if any failed.

--format text: the transcript (with several files, `PATH<TAB>transcript` a line); json: a JSON
object a file, a line each, with language, per-word/character timestamps, segments and `truncated`;
srt: subtitles (with several files, --out-dir). --out-dir writes PATH's stem + .txt/.json/.srt there.
--stream reads each file as if it arrived live, chunk by chunk, and prints the partial hypotheses
as they come and the final one per utterance, with the audio time each was emitted at.
--no-guards turns off the repetition stop (the length cap stays: it is the model's decoding config).
--hotwords FILE (one a line, thousands are fine): the entries the audio probably holds, by matching their
phones against the phone CTC head's posteriors (entropy_asr.inference.hotwords), listed in the json output
with score and time. With a model trained with hotword prompts (a context-SFT export) the ones found in a
segment also go into its prompt, biasing the decoding toward them; --hotword-bias on/off overrides that.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from entropy_asr.errors import UserError, run_main
from entropy_asr.io import atomic_write_text

FORMATS = {"text": ".txt", "json": ".json", "srt": ".srt"}
CUE_CHARS, CUE_SECONDS = 42, 7.0  # a subtitle line's usual limits


def srt_time(seconds: float) -> str:
    """SRT's HH:MM:SS,mmm."""
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def cues(transcript) -> list[tuple[float, float, str]]:
    """(start, end, text) subtitle cues: a segment's words grouped into lines of <= 42 characters and <= 7 s (by
    their timestamps, punctuation kept with the word before it), or the segment whole when it has no timestamps."""
    from entropy_asr.inference.recognizer import unit_starts

    out = []
    for seg in transcript.segments:
        if not seg.text:
            continue
        at = unit_starts(seg.text, seg.units) if seg.units else []
        if not at or min(at) < 0:  # no times, or a unit not written as is: the segment whole
            out.append((seg.start, seg.end, seg.text))
            continue
        first = 0  # index of the current cue's first unit
        for i in range(1, len(seg.units) + 1):
            last = i == len(seg.units)
            if not last:
                line = seg.text[at[first]:at[i] + len(seg.units[i].text)].strip()
                if len(line) <= CUE_CHARS and seg.units[i].end - seg.units[first].start <= CUE_SECONDS:
                    continue
            text = seg.text[at[first]:at[i] if not last else len(seg.text)].strip()
            out.append((seg.units[first].start, seg.units[i - 1].end, text))
            first = i
    return out


def to_srt(transcript) -> str:
    """The transcript as SRT subtitles."""
    blocks = [f"{i}\n{srt_time(a)} --> {srt_time(b)}\n{text}\n" for i, (a, b, text) in enumerate(cues(transcript), 1)]
    return "\n".join(blocks)


def render(transcript, fmt: str, several: bool) -> str:
    """One transcript in the output format (text with several files: PATH<TAB>text)."""
    if fmt == "json":
        return json.dumps(transcript.to_json(), ensure_ascii=False)
    if fmt == "srt":
        return to_srt(transcript)
    return f"{transcript.source}\t{transcript.text}" if several else transcript.text


def read_paths(files: list[str]) -> list[str]:
    """The files named, `-` replaced by the paths on stdin (one a line, blank lines skipped)."""
    out = []
    for f in files:
        if f == "-":
            out += [line.strip() for line in sys.stdin if line.strip()]
        else:
            out.append(f)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m entropy_asr.transcribe", description=__doc__.split("\n")[0])
    p.add_argument("export", type=Path, help="a speech stage's export dir (or its run dir)")
    p.add_argument("files", nargs="+", help="audio files; - reads paths from stdin")
    p.add_argument("--format", choices=sorted(FORMATS), default="text")
    p.add_argument("--out-dir", type=Path, help="write each file's output to OUT_DIR/<stem>.<txt|json|srt>")
    p.add_argument("--batch-size", type=int, default=16, help="segments decoded together")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cmvn", type=Path, help="cmvn.json of the training data (default: the export's)")
    p.add_argument("--max-segment-s", type=float, help="recordings longer than this are cut on pauses into segments of "
                                                        "at most this (default: the model's training maximum)")
    p.add_argument("--hotwords", type=Path, help="a text file of hotwords (names, terms), one a line: those the "
                                                  "audio probably holds are listed per file (json), found with the "
                                                  "phone CTC head, and go into the prompt of a context-SFT model")
    p.add_argument("--hotword-bias", choices=["auto", "on", "off"], default="auto",
                   help="put the retrieved hotwords into the prompt: auto = when the model was trained with hotword "
                        "prompts (context SFT); off = retrieval only")
    p.add_argument("--hotword-threshold", type=float, default=-1.0,
                   help="log-likelihood ratio per phone a hotword must reach (<= 0; nearer 0 = stricter)")
    p.add_argument("--no-guards", action="store_true", help="no repetition stop (raw decoding)")
    p.add_argument("--no-timestamps", action="store_true", help="skip the forced alignment")
    p.add_argument("--progress", action="store_true", help="a progress bar on stderr (default: several files on a "
                                                           "terminal)")
    p.add_argument("--stream", action="store_true", help="read each file as if live; print partials and finals")
    p.add_argument("--chunk-ms", type=int, default=640, help="streaming chunk (a multiple of 40 ms)")
    p.add_argument("--left-chunks", type=int, default=4, help="streaming: previous chunks the encoder sees")
    return p


def read_hotwords(path: Path) -> list[str]:
    """A hotword file's entries: one a line, blank lines and lines starting with # skipped."""
    if not path.is_file():
        raise UserError(f"--hotwords {path}: no such file; give a text file with one hotword a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"--hotwords {path}: not UTF-8 text; save it as UTF-8, one hotword a line") from None
    words = [w.strip() for w in lines if w.strip() and not w.lstrip().startswith("#")]
    if not words:
        raise UserError(f"--hotwords {path}: no hotwords in it (one a line)")
    return words


def check_options(a, files: list[str]) -> None:
    """Every option a user can get wrong, checked before the model loads: one line each."""
    if not files:
        raise UserError("no files to transcribe (stdin gave no paths)")
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.max_segment_s is not None and not a.max_segment_s >= 1:
        raise UserError(f"--max-segment-s must be >= 1 (seconds), got {a.max_segment_s}")
    try:
        device = torch.device(a.device)
    except RuntimeError:
        raise UserError(f"--device {a.device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {a.device}: no CUDA device on this machine; use --device cpu")
    if a.hotword_bias != "auto" and not a.hotwords:
        raise UserError(f"--hotword-bias {a.hotword_bias} needs --hotwords FILE (the list to retrieve from)")
    if not a.hotword_threshold <= 0:
        raise UserError(f"--hotword-threshold must be <= 0 (a log-likelihood ratio), got {a.hotword_threshold}")
    if a.stream:
        if a.hotwords:
            raise UserError("--hotwords works offline (per segment); drop --stream to list them")
        if a.chunk_ms < 40 or a.chunk_ms % 40:
            raise UserError(f"--chunk-ms must be a positive multiple of 40 (the encoder's frame), got {a.chunk_ms}")
        if a.left_chunks < 0:
            raise UserError(f"--left-chunks must be >= 0, got {a.left_chunks}")
        if a.out_dir or a.format == "srt":
            raise UserError("--stream prints partial and final hypotheses as they come (text or json); drop --out-dir "
                            "and --format srt, or transcribe without --stream")
        return
    if a.format == "srt" and len(files) > 1 and not a.out_dir:
        raise UserError("--format srt with several files needs --out-dir (one .srt a file)")
    if a.out_dir:
        if a.out_dir.exists() and not a.out_dir.is_dir():
            raise UserError(f"--out-dir {a.out_dir}: a file, not a directory; give a directory")
        seen: dict[str, str] = {}
        for f in files:
            name = Path(f).stem + FORMATS[a.format]
            if name in seen and seen[name] != f:
                raise UserError(f"--out-dir: {seen[name]} and {f} would both write {a.out_dir / name}; give files with "
                                f"distinct names, or transcribe them in separate runs")
            seen[name] = f


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from entropy_asr.inference.recognizer import Recognizer

    hf_logging.disable_progress_bar()  # "Loading weights" bars: not the user's files
    files = read_paths(a.files)
    check_options(a, files)
    hotwords = read_hotwords(a.hotwords) if a.hotwords else None
    asr = Recognizer.from_pretrained(a.export, device=a.device, cmvn=a.cmvn, max_segment_s=a.max_segment_s)
    if hotwords is not None:
        try:
            asr.set_hotwords(hotwords, threshold=a.hotword_threshold,
                             bias={"auto": None, "on": True, "off": False}[a.hotword_bias])
        except UserError as e:
            raise UserError(f"--hotwords {a.hotwords}: {e}") from None
    if a.stream:
        return stream_files(asr, files, a)
    several = len(files) > 1
    failed = 0
    progress = a.progress or (several and sys.stderr.isatty())
    for t in asr.iter_transcribe(files, a.batch_size, timestamps=not a.no_timestamps, guards=not a.no_guards,
                                 progress=progress):
        if t.error:
            failed += 1
            print(f"transcribe: {t.error}" if t.error.startswith(t.source) else f"transcribe: {t.source}: {t.error}",
                  file=sys.stderr, flush=True)
            continue
        if t.truncated:
            print(f"transcribe: {t.source}: a hypothesis was cut ({t.truncated})", file=sys.stderr, flush=True)
        out = render(t, a.format, several)
        if a.out_dir:
            a.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(a.out_dir / (Path(t.source).stem + FORMATS[a.format]), out + "\n")
        else:
            print(out, flush=True)
    if failed:
        print(f"transcribe: {failed} of {len(files)} files failed", file=sys.stderr)
    return 1 if failed else 0


def stream_files(asr, files: list[str], a) -> int:
    """--stream: each file fed chunk by chunk; one line per partial/final event (JSON with --format json)."""
    from entropy_asr.errors import one_line
    from entropy_asr.inference.segment import iter_audio
    from entropy_asr.inference.streaming import stream

    failed = 0
    for path in files:
        try:
            blocks = iter_audio(path, block_s=a.chunk_ms / 1000)  # as if it arrived live, chunk by chunk
        except UserError as e:
            failed += 1
            print(f"transcribe: {one_line(e)}", file=sys.stderr, flush=True)
            continue
        try:
            for ev in stream(asr, blocks, chunk_s=a.chunk_ms / 1000, left_chunks=a.left_chunks,
                             guards=not a.no_guards, timestamps=not a.no_timestamps):
                if a.format == "json":
                    print(json.dumps({"source": path, "final": ev.final, "text": ev.text, "start": round(ev.start, 3),
                                      "end": round(ev.end, 3), "audio_s": round(ev.audio_s, 3),
                                      "truncated": ev.truncated}, ensure_ascii=False), flush=True)
                else:
                    kind = "final  " if ev.final else "partial"
                    print(f"{path} [{ev.audio_s:7.2f}s] {kind} {ev.text}", flush=True)
        except UserError as e:  # (a file cut short shows at its end)
            failed += 1
            print(f"transcribe: {one_line(e)}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
