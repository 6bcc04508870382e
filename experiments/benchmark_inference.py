"""Inference benchmark of a trained export: offline vs streaming accuracy, speed and latency; long-form time and memory.

    python experiments/benchmark_inference.py [--export runs/tiny/joint_sft/export] [--data DIR] [--utterances 100]
        [--chunk-ms 640] [--left-chunks 4] [--lengths 60,300,600] [--out results.json]

1. Offline vs streaming on the first `--utterances` utterances of a test shard dir (default: the tiny
   recipe's synthetic corpus, $ENTROPY_ASR_CACHE/synthetic-v5-n6000-s0/test):
   - offline: Recognizer.decode_audio in batches of `--batch-size` (16), guards on, timestamps off;
   - streaming: a fresh StreamSession per utterance (chunk `--chunk-ms`, `--left-chunks` of left context,
     guards on, timestamps off like the offline decode; `--timestamps` turns them on in both), the audio fed in
     40 ms blocks as a live source would send it; the transcript is its finals joined (streaming.final_text).
   Reported: CER (zh), WER (en), MER (mix) and overall error rate of each, and the gap streaming - offline in
   points; RTFx (audio seconds / wall seconds) of each; per utterance, median and p90 of: the first non-empty
   partial (audio seconds into the utterance when it was emitted, and the session's compute seconds up to it),
   the final latency (wall seconds from the start of the `accept` call holding the last sample to the end of
   `finish()`, i.e. the compute a live stream waits for after its last sample; `finish()` alone is reported
   too) and a live final latency (the same, with the measured compute of every call replayed against 40 ms
   real-time arrivals, so a session slower than real time shows its backlog). One utterance of each mode is
   decoded first, untimed (lazy initialisation).
2. Long-form: for each `--lengths` value, a recording of that many seconds made of test utterances in order,
   each after a random pause of 0.3-1.5 s, with white noise at -50 dBFS (--noise-dbfs) over all of it (seeded),
   written as 16 kHz FLAC in a temp dir and transcribed with Recognizer.transcribe(path) (defaults: timestamps
   and guards on; cut on pauses, decoded in batches) in a fresh subprocess per length, after loading the model
   and an untimed warm-up transcription of one utterance. Reported per length: wall seconds, RTFx, the RSS
   after loading and after the warm-up (the baseline), the peak RSS of the transcription (the kernel's
   high-water mark, reset after the warm-up where /proc/self/clear_refs allows, else the process' peak) and
   its increase over the baseline, segments, the share of utterances whose speech onset has a segment start
   within 0.5 s, and the MER of the whole transcript against the references joined. Flat memory and time
   linear in the length are what this shows.

Prints readable lines, then, as the last line, one JSON object with every figure (written to --out too).
Uses the CPU (--device to change) with torch's threads (--threads). Figures depend on the machine's load: record
them on an idle one (with another process busy, several torch threads each can slow decoding many times over).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from itertools import cycle
from pathlib import Path

import numpy as np

from entropy_asr.errors import UserError, UserFileNotFound, run_main
from entropy_asr.io import atomic_write_json

DEFAULT_EXPORT = "runs/tiny/joint_sft/export"  # what the README's main command writes
CORPUS = {"utterances": 6000, "seed": 0}  # the tiny recipe's synthetic corpus (experiments/tiny)
SR = 16000
BLOCK_S = 0.04  # the live source's block: 40 ms
PAUSE_S = (0.3, 1.5)  # between utterances of a long-form recording
NOISE_DBFS = -50.0  # RMS of the white noise over a long-form recording
ONSET_DBFS = -40.0  # an utterance's speech starts at its first sample this loud (the clips have silent edges)
START_TOLERANCE_S = 0.5  # a segment start this close to an utterance's onset counts as finding it
MIB = 2**20


def default_data() -> Path:
    """The test split of the tiny recipe's synthetic corpus in the cache (entropy_asr.data.synthetic's naming)."""
    from entropy_asr.data.synthetic import corpus_dir

    return corpus_dir(**CORPUS) / "test"


# ---- data -----------------------------------------------------------------------------------------------------
def iter_utterances(data: Path):
    """(key, 16 kHz float32 audio, text, language) of a shard dir's utterances, in index order."""
    from entropy_asr.data.shards import read_utterances

    for u in read_utterances(data):
        yield u["key"], u["audio"], u["text"], u["language"]


def take(data: Path, n: int) -> list[tuple]:
    """The first n utterances of the shard dir (fewer if it holds fewer)."""
    out = []
    for u in iter_utterances(data):
        if len(out) >= n:
            break
        out.append(u)
    return out


# ---- statistics -----------------------------------------------------------------------------------------------
def quantiles(values: list[float]) -> dict:
    """Median, p90, mean and count of the values (None when empty)."""
    if not values:
        return {"median": None, "p90": None, "mean": None, "n": 0}
    v = np.asarray(values, float)
    return {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "mean": float(v.mean()), "n": len(v)}


def rates(summary: dict) -> dict:
    """The error rate of each group of a metrics summary (CER zh, WER en, MER mix, overall)."""
    return {group: row.get("error_rate") for group, row in summary.items()}


def score(rows: list[dict]) -> dict:
    """experiments/evaluate.py's summary of rows {ref, hyp, language}: per-language rates and counts."""
    from entropy_asr.metrics.scoring import HallucinationParams
    from experiments.evaluate import score_rows

    return score_rows(rows, HallucinationParams())[0]


# ---- 1. offline vs streaming ----------------------------------------------------------------------------------
def bench_offline(asr, utts: list[tuple], batch_size: int, timestamps: bool) -> dict:
    """Batched offline decoding (decode_audio, guards on): hypotheses, wall seconds, RTFx."""
    asr.decode_audio([utts[0][1]], timestamps=timestamps, guards=True)  # warm-up, untimed
    hyps: list[str] = []
    t0 = time.perf_counter()
    for i in range(0, len(utts), batch_size):
        batch = utts[i:i + batch_size]
        hyps += [r.text for r in asr.decode_audio([u[1] for u in batch], timestamps=timestamps, guards=True)]
    wall = time.perf_counter() - t0
    audio = sum(len(u[1]) for u in utts) / SR
    return {"hyps": hyps, "audio_s": audio, "wall_s": wall, "rtfx": audio / wall}


def stream_one(asr, audio: np.ndarray, chunk_s: float, left_chunks: int, timestamps: bool) -> dict:
    """One utterance through a fresh StreamSession fed 40 ms blocks: its transcript, first partial and latencies."""
    from entropy_asr.inference.streaming import final_text

    session = asr.stream_session(chunk_s=chunk_s, left_chunks=left_chunks, guards=True, timestamps=timestamps)
    step = round(BLOCK_S * SR)
    events, calls = [], []  # calls: (arrival of the block's last sample, compute seconds) per accept call
    t_last = start = time.perf_counter()
    for i in range(0, len(audio), step):
        block = audio[i:i + step]
        t_last = time.perf_counter()
        events += session.accept(block)
        calls.append(((i + len(block)) / SR, time.perf_counter() - t_last))
    t = time.perf_counter()
    events += session.finish()
    end = time.perf_counter()
    # replay the calls against real-time arrivals: a call starts when its block arrived and the previous one ended
    clock = 0.0
    for arrival, compute in calls:
        clock = max(clock, arrival) + compute
    live = clock + (end - t) - len(audio) / SR
    first = next((e for e in events if not e.final and e.text.strip()), None)
    return {"text": final_text(events), "wall_s": end - start, "finals": sum(e.final for e in events),
            "partials": sum(not e.final for e in events),
            "first_partial_audio_s": None if first is None else first.audio_s,
            "first_partial_compute_s": None if first is None else first.compute_s,
            "final_latency_s": end - t_last, "finish_s": end - t, "live_final_latency_s": live}


def bench_streaming(asr, utts: list[tuple], chunk_s: float, left_chunks: int, timestamps: bool) -> dict:
    """Every utterance through its own session: hypotheses, wall seconds, RTFx, first-partial and final latencies."""
    stream_one(asr, utts[0][1], chunk_s, left_chunks, timestamps)  # warm-up, untimed
    per = [stream_one(asr, u[1], chunk_s, left_chunks, timestamps) for u in utts]
    wall = sum(p["wall_s"] for p in per)
    audio = sum(len(u[1]) for u in utts) / SR
    have = [p for p in per if p["first_partial_audio_s"] is not None]
    return {"hyps": [p["text"] for p in per], "audio_s": audio, "wall_s": wall, "rtfx": audio / wall,
            "first_partial_audio_s": quantiles([p["first_partial_audio_s"] for p in have]),
            "first_partial_compute_s": quantiles([p["first_partial_compute_s"] for p in have]),
            "no_partial": len(per) - len(have),
            "final_latency_s": quantiles([p["final_latency_s"] for p in per]),
            "finish_s": quantiles([p["finish_s"] for p in per]),
            "live_final_latency_s": quantiles([p["live_final_latency_s"] for p in per]),
            "finals_per_utterance": float(np.mean([p["finals"] for p in per])),
            "partials_per_utterance": float(np.mean([p["partials"] for p in per]))}


def offline_vs_streaming(asr, utts: list[tuple], chunk_s: float, left_chunks: int, batch_size: int,
                         timestamps: bool) -> dict:
    """Section 1: both modes on the same utterances, scored, with the gap in points."""
    out: dict = {"utterances": len(utts), "audio_s": sum(len(u[1]) for u in utts) / SR}
    for name, run in (("offline", lambda: bench_offline(asr, utts, batch_size, timestamps)),
                      ("streaming", lambda: bench_streaming(asr, utts, chunk_s, left_chunks, timestamps))):
        r = run()
        summary = score([{"ref": u[2], "hyp": h, "language": u[3]} for u, h in zip(utts, r.pop("hyps"))])
        out[name] = {**r, "error_rates": rates(summary), "summary": summary}
        print(f"{name}: RTFx {r['rtfx']:.1f} ({r['audio_s']:.1f} s of audio in {r['wall_s']:.2f} s); "
              f"{format_rates(out[name]['error_rates'])}", flush=True)
    off, st = out["offline"]["error_rates"], out["streaming"]["error_rates"]
    out["gap_points"] = {g: 100 * (st[g] - off[g]) for g in off if off[g] is not None and st.get(g) is not None}
    print("gap (streaming - offline, points): " + ", ".join(f"{g} {v:+.2f}" for g, v in out["gap_points"].items()))
    s = out["streaming"]
    print(f"first partial: at {fmt_q(s['first_partial_audio_s'])} s of audio, after "
          f"{fmt_q(s['first_partial_compute_s'])} s of compute ({s['no_partial']} utterances without a partial)")
    print(f"final latency: {fmt_q(s['final_latency_s'])} s (finish() alone {fmt_q(s['finish_s'])} s; "
          f"live, with backlog: {fmt_q(s['live_final_latency_s'])} s)", flush=True)
    return out


UNITS = {"zh": "CER zh", "en": "WER en", "mix": "MER mix", "overall": "overall"}


def format_rates(r: dict) -> str:
    """'CER zh 12.34%, ...' of a rates dict."""
    return ", ".join(f"{UNITS.get(g, g)} {100 * v:.2f}%" for g, v in r.items() if v is not None)


def pct(v: float | None, digits: int = 2) -> str:
    """A fraction as a percentage, '-' for None."""
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def fmt_q(q: dict) -> str:
    """'median / p90' of a quantiles dict."""
    return "-" if q["median"] is None else f"{q['median']:.3f} / {q['p90']:.3f} (median / p90)"


# ---- 2. long-form ---------------------------------------------------------------------------------------------
def build_recording(utts, length_s: float, rng: np.random.Generator,
                    noise_dbfs: float = NOISE_DBFS) -> tuple[np.ndarray, list[dict]]:
    """`length_s` seconds of utterances (cycled, in order), each after a random pause, with light noise; and where
    each utterance lies (onset: its first loud sample)."""
    n = round(length_s * SR)
    x = np.zeros(n, np.float32)
    placed, pos = [], 0
    onset_level = 10 ** (ONSET_DBFS / 20)
    for _key, audio, text, language in cycle(utts):
        pos += round(rng.uniform(*PAUSE_S) * SR)
        if pos + len(audio) > n:
            break
        x[pos:pos + len(audio)] = audio
        loud = np.flatnonzero(np.abs(audio) >= onset_level)
        onset = pos + (int(loud[0]) if loud.size else 0)
        placed.append({"start": pos / SR, "onset": onset / SR, "end": (pos + len(audio)) / SR, "text": text,
                       "language": language})
        pos += len(audio)
    x += (rng.standard_normal(n) * 10 ** (noise_dbfs / 20)).astype(np.float32)
    return np.clip(x, -1.0, 1.0), placed


def write_flac(path: Path, x: np.ndarray) -> None:
    """16 kHz 16-bit FLAC."""
    from entropy_asr.data.audio import encode_flac

    path.write_bytes(encode_flac(x, SR))


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """The process' resident memory now (MiB)."""
    now = _status_mib("VmRSS")
    if now is not None:
        return now
    try:
        import psutil

        return psutil.Process().memory_info().rss / MIB
    except ImportError:
        return peak_rss_mib()


def peak_rss_mib() -> float:
    """The process' peak resident memory (MiB): the kernel's high-water mark VmHWM, which reset_peak_rss resets
    (ru_maxrss is not always reset: it keeps the peak recorded when a thread exited), else ru_maxrss (KiB)."""
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child(export: str, device: str, audio: str, warmup: str, batch_size: int, threads: int | None) -> dict:
    """The subprocess of one length: load, warm up, transcribe the file; time, memory and the segments."""
    quiet_transformers()
    set_threads(threads)
    from entropy_asr.inference.recognizer import Recognizer

    asr = Recognizer.from_pretrained(export, device=device)
    loaded = rss_mib()
    asr.transcribe(warmup, batch_size=batch_size)
    baseline, load_peak = rss_mib(), peak_rss_mib()
    reset = reset_peak_rss()
    t = time.perf_counter()
    transcript = asr.transcribe(audio, batch_size=batch_size)[0]
    wall = time.perf_counter() - t
    peak = peak_rss_mib()
    units = transcript.units
    return {"wall_s": wall, "duration_s": transcript.duration, "rss_loaded_mib": loaded, "rss_baseline_mib": baseline,
            "peak_before_mib": load_peak, "peak_rss_mib": peak, "peak_reset": reset,
            "segments": [[s.start, s.end] for s in transcript.segments], "text": transcript.text,
            "truncated_segments": sum(s.truncated is not None for s in transcript.segments),
            "units": None if units is None else len(units), "threads": torch_threads()}


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads (None: its default, one per core)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def torch_threads() -> int:
    """torch's intra-op threads."""
    import torch

    return torch.get_num_threads()


def quiet_transformers() -> None:
    """No progress bar while transformers loads the LLM's weights."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def run_child(export: str, device: str, audio: Path, warmup: Path, batch_size: int, threads: int | None) -> dict:
    """Run `child` in a fresh interpreter (its peak RSS is that run's alone); its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--export", export, "--device", device,
           "--batch-size", str(batch_size), "--child-audio", str(audio), "--child-warmup", str(warmup)]
    if threads:
        cmd += ["--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise RuntimeError(f"the long-form child for {audio.name} failed (exit {p.returncode}); its stderr is above")
    return json.loads(p.stdout.strip().splitlines()[-1])


def long_form(export: str, device: str, data: Path, lengths: list[float], batch_size: int, seed: int,
              noise_dbfs: float, threads: int | None) -> list[dict]:
    """Section 2: per length, a recording built, written and transcribed in a fresh subprocess; time and memory."""
    needed, utts = max(lengths), []
    for u in iter_utterances(data):  # enough utterances for the longest recording (cycled if the set is short)
        utts.append(u)
        if sum(len(v[1]) for v in utts) / SR >= needed:
            break
    if not utts:
        raise UserError(f"{data}: no utterances")
    rows = []
    with tempfile.TemporaryDirectory(prefix="entropy-asr-longform-") as tmp:
        warmup = Path(tmp) / "warmup.flac"
        write_flac(warmup, utts[0][1])
        for length in lengths:
            x, placed = build_recording(utts, length, np.random.default_rng(seed), noise_dbfs)
            path = Path(tmp) / f"long-{length:g}s.flac"
            write_flac(path, x)
            del x
            r = run_child(export, device, path, warmup, batch_size, threads)
            starts = np.asarray([s for s, _ in r.pop("segments")])
            found = [bool(starts.size and np.min(np.abs(starts - p["onset"])) <= START_TOLERANCE_S) for p in placed]
            text = r.pop("text")
            ref = " ".join(p["text"] for p in placed)
            mer = score([{"ref": ref, "hyp": text, "language": "mix"}])["overall"].get("error_rate")
            row = {"length_s": length, **r, "rtfx": r["duration_s"] / r["wall_s"],
                   "s_per_audio_min": 60 * r["wall_s"] / r["duration_s"],
                   "rss_increase_mib": r["peak_rss_mib"] - r["rss_baseline_mib"],
                   "segments": len(starts), "utterances": len(placed),
                   "starts_found": float(np.mean(found)) if found else None, "mer": mer}
            rows.append(row)
            print(f"{length:g} s: {row['wall_s']:.2f} s wall (RTFx {row['rtfx']:.1f}, "
                  f"{row['s_per_audio_min']:.2f} s per audio minute); RSS loaded {row['rss_loaded_mib']:.0f} MiB, "
                  f"baseline {row['rss_baseline_mib']:.0f} MiB, peak {row['peak_rss_mib']:.0f} MiB "
                  f"(+{row['rss_increase_mib']:.0f}{'' if row['peak_reset'] else ', process peak'}); "
                  f"{row['segments']} segments for {row['utterances']} utterances, {pct(row['starts_found'], 0)} of "
                  f"onsets have a segment start within {START_TOLERANCE_S} s; MER {pct(mer)}", flush=True)
    if len(rows) > 1:
        per_min = [r["s_per_audio_min"] for r in rows]
        inc = [r["rss_increase_mib"] for r in rows]
        print(f"time per audio minute {min(per_min):.2f}-{max(per_min):.2f} s over {rows[0]['length_s']:g}-"
              f"{rows[-1]['length_s']:g} s (linear if flat); RSS increase {min(inc):.0f}-{max(inc):.0f} MiB "
              f"(flat memory if it does not grow with the length)", flush=True)
    return rows


# ---- main -----------------------------------------------------------------------------------------------------
def parse_lengths(text: str) -> list[float]:
    """'60,300,600' -> [60.0, 300.0, 600.0] (positive seconds; empty: no long-form section)."""
    try:
        out = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--lengths: expected seconds separated by commas, e.g. 60,300,600, got {text!r}") from None
    if any(not v > 0 for v in out):
        raise UserError(f"--lengths: every length must be > 0 seconds, got {text!r}")
    return out


def main(argv: list[str] | None = None) -> dict:
    """Parse the options, run both sections, print the figures and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", default=DEFAULT_EXPORT, help="a speech stage's export dir (or its run dir)")
    p.add_argument("--data", type=Path, help="a test shard dir (default: the tiny recipe's synthetic test split)")
    p.add_argument("--utterances", type=int, default=100, help="utterances for offline vs streaming (0 skips it)")
    p.add_argument("--chunk-ms", type=int, default=640, help="streaming chunk, a multiple of 40 ms")
    p.add_argument("--left-chunks", type=int, default=4, help="streaming left context, in chunks")
    p.add_argument("--batch-size", type=int, default=16, help="offline and long-form decoding batch")
    p.add_argument("--timestamps", action="store_true", help="word/char timestamps in section 1 (both modes)")
    p.add_argument("--lengths", default="60,300,600", help="long-form recording lengths in seconds ('' skips it)")
    p.add_argument("--seed", type=int, default=0, help="pauses and noise of the long-form recordings")
    p.add_argument("--noise-dbfs", type=float, default=NOISE_DBFS, help="RMS of the long-form recordings' noise")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core); 1 suits a busy machine")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    p.add_argument("--child-audio", help=argparse.SUPPRESS)  # internal: one long-form run (run_child)
    p.add_argument("--child-warmup", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_audio:
        result = child(a.export, a.device, a.child_audio, a.child_warmup, a.batch_size, a.threads)
        print(json.dumps(result), flush=True)
        return result
    lengths = parse_lengths(a.lengths)
    if a.utterances < 0 or a.batch_size < 1 or (a.threads is not None and a.threads < 1):
        raise UserError(f"--utterances must be >= 0, --batch-size and --threads >= 1, got {a.utterances}, "
                        f"{a.batch_size}, {a.threads}")
    data = a.data or default_data()
    if not (data / "index.json").is_file():
        raise UserFileNotFound(f"{data}: not a shard dir (no index.json); give the test split with --data, or build "
                               f"the tiny corpus (the README's main command)")
    quiet_transformers()
    set_threads(a.threads)
    from entropy_asr.inference.recognizer import Recognizer

    t = time.perf_counter()
    rss0 = rss_mib()
    asr = Recognizer.from_pretrained(a.export, device=a.device)
    load_s, rss_loaded = time.perf_counter() - t, rss_mib()
    params = sum(p.numel() for p in asr.net.parameters())
    print(f"model: {a.export} ({params / 1e6:.1f}M parameters), loaded in {load_s:.1f} s; RSS {rss0:.0f} MiB before, "
          f"{rss_loaded:.0f} MiB after; {torch_threads()} torch threads on {platform.machine()} "
          f"({os.cpu_count()} CPUs)", flush=True)
    result: dict = {"export": a.export, "data": str(data), "device": a.device, "machine": platform.machine(),
                    "cpus": os.cpu_count(), "threads": torch_threads(), "params_M": params / 1e6, "load_s": load_s,
                    "rss_loaded_mib": rss_loaded, "date": time.strftime("%Y-%m-%d"),
                    "command": "python experiments/benchmark_inference.py "
                               + " ".join(argv if argv is not None else sys.argv[1:]),
                    "options": {"utterances": a.utterances, "chunk_ms": a.chunk_ms, "left_chunks": a.left_chunks,
                                "batch_size": a.batch_size, "timestamps": a.timestamps, "lengths": lengths,
                                "seed": a.seed, "block_ms": BLOCK_S * 1000, "pause_s": PAUSE_S,
                                "noise_dbfs": a.noise_dbfs, "threads": a.threads}}
    if a.utterances:
        utts = take(data, a.utterances)
        if not utts:
            raise UserError(f"{data}: no utterances")
        long = [u[0] for u in utts if len(u[1]) / SR > asr.max_segment_s]
        if long:
            raise UserError(f"{data}: {len(long)} of the first {len(utts)} utterances are longer than the model's "
                            f"{asr.max_segment_s:g} s (e.g. {long[0]}); offline decoding takes whole clips")
        print(f"== offline vs streaming: {len(utts)} utterances, {sum(len(u[1]) for u in utts) / SR:.1f} s; "
              f"chunk {a.chunk_ms} ms, {a.left_chunks} left chunks, {BLOCK_S * 1000:.0f} ms blocks", flush=True)
        result["offline_vs_streaming"] = offline_vs_streaming(asr, utts, a.chunk_ms / 1000, a.left_chunks,
                                                              a.batch_size, a.timestamps)
        del utts
    del asr
    if lengths:
        print(f"== long-form: {', '.join(f'{v:g}' for v in lengths)} s, each transcribed in a fresh process",
              flush=True)
        result["long_form"] = long_form(a.export, a.device, data, lengths, a.batch_size, a.seed,
                                       a.noise_dbfs, a.threads)
    if a.out:
        atomic_write_json(a.out, result)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    run_main(main)
