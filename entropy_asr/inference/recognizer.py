"""A trained model as a recognizer: audio files or arrays in, text with timestamps and a language tag out.

    from entropy_asr import Recognizer
    asr = Recognizer.from_pretrained("runs/tiny/joint_sft/export")
    for t in asr.transcribe(["a.flac", "meeting.wav"]):
        print(t.text, t.language, [(u.text, u.start, u.end) for u in t.units])

Any speech stage's export dir (align, IA-SFT, joint SFT) describes itself: model.json (the stage's
configs, written by the stage) and cmvn.json (the statistics its features were normalized with);
the Recognizer builds the backbone from them with plain torch (no Lightning, no config files).

- Audio: any format and rate soundfile reads, downmixed to mono, resampled to 16 kHz; or arrays.
- A recording up to the training maximum (the export's batch.max_duration, 20 s for the tiny
  model) is decoded whole, exactly as experiments/evaluate.py decodes a shard; a longer one is cut
  on pauses (entropy_asr.inference.segment: energy VAD, flat memory) into segments no longer than
  that, decoded in batches and stitched with their times. Nothing is truncated silently.
- Timestamps: per English word and Mandarin character, by forced alignment of the text against the
  phone CTC head's posteriors (entropy_asr.inference.timestamps), when the export has a phone CTC head.
- Guards (on by default, entropy_asr.inference.guards): the length cap and the repetition stop, each
  reported in `truncated`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import StoppingCriteriaList

from entropy_asr.data.audio import SAMPLE_RATE, fbank, load_cmvn, read_audio, resample, to_mono
from entropy_asr.errors import UserError, UserFileNotFound
from entropy_asr.inference.guards import RepetitionStop, cut_repetition, guard_repeats
from entropy_asr.inference.hotwords import DEFAULT_THRESHOLD, HotwordHit, HotwordIndex
from entropy_asr.inference.segment import Segmenter, iter_audio
from entropy_asr.inference.timestamps import ENCODER_FRAME_DELAY_S, UnitTime, unit_times
from entropy_asr.metrics.scoring import HallucinationParams
from entropy_asr.model.encoder import EncoderConfig
from entropy_asr.model.export import CMVN_FILE, FILE_COMPONENTS, MODEL_FILE, load_component
from entropy_asr.model.llm import LLMConfig
from entropy_asr.model.prompt import generate_ended, max_new_tokens_for
from entropy_asr.model.pseudo_speech import PhoneFramesConfig
from entropy_asr.model.speech_llm import AdapterConfig, CTCHeadConfig, DecodeConfig, PromptConfig, SpeechLLM
from entropy_asr.text import detect_language

MIN_SECONDS = 0.1  # shorter input gives the encoder no frame to read
SEGMENT_PAD_S = 0.3  # context kept around a long recording's segments: speech fading into noise is not clipped
CONFIGS = {"encoder": EncoderConfig, "ctc_head": CTCHeadConfig, "adapter": AdapterConfig, "llm": LLMConfig,
           "prompt": PromptConfig, "phone_frames": PhoneFramesConfig, "decode": DecodeConfig}


@dataclass
class SegmentResult:
    """One decoded stretch of a recording (the whole of a short one)."""

    start: float  # seconds from the start of the recording
    end: float
    text: str
    truncated: str | None = None  # "repetition" or "length" when a guard cut the hypothesis
    units: list[UnitTime] | None = None  # per word / character; None: no timestamps (see Transcript.units)
    hotwords: list[HotwordHit] | None = None  # entries of the hotword list the audio probably holds (with one)

    def to_json(self) -> dict:
        """JSON types (units as {text, start, end, score})."""
        d = dataclasses.asdict(self)
        d["start"], d["end"] = round(self.start, 3), round(self.end, 3)
        d["units"] = None if self.units is None else [dataclasses.asdict(u) for u in self.units]
        if self.hotwords is None:
            d.pop("hotwords")
        return d


@dataclass
class Transcript:
    """What a recording says: its segments' text joined, with times, a language tag and any guard's cut."""

    source: str  # the path, or "array N"
    duration: float = 0.0  # seconds
    segments: list[SegmentResult] = field(default_factory=list)
    error: str | None = None  # one line, when the input could not be transcribed (then nothing else is set)

    @property
    def text(self) -> str:
        """The segments' text, joined with a space except between two Han characters."""
        return join_texts([s.text for s in self.segments])

    @property
    def language(self) -> str:
        """zh, en, mix, or none (no words: silence or noise)."""
        return detect_language(self.text)

    @property
    def truncated(self) -> str | None:
        """The first guard that cut a segment ("repetition", "length"), or None."""
        return next((s.truncated for s in self.segments if s.truncated), None)

    @property
    def units(self) -> list[UnitTime] | None:
        """Every word / character with its times; None if some segment has none (no phone CTC head, or a text
        the alignment could not place)."""
        if any(s.units is None for s in self.segments):
            return None
        return [u for s in self.segments for u in s.units]

    @property
    def hotwords(self) -> list[HotwordHit] | None:
        """The hotwords found in any segment (best score first, each once), or None without a hotword list."""
        if all(s.hotwords is None for s in self.segments):
            return None
        best: dict[str, HotwordHit] = {}
        for h in (h for s in self.segments for h in s.hotwords or []):
            if h.text not in best or h.score > best[h.text].score:
                best[h.text] = h
        return sorted(best.values(), key=lambda h: -h.score)

    def to_json(self) -> dict:
        """The record `transcribe --format json` writes."""
        if self.error:
            return {"source": self.source, "error": self.error}
        units, hotwords = self.units, self.hotwords
        out = {"source": self.source, "text": self.text, "language": self.language,
               "duration": round(self.duration, 3), "truncated": self.truncated,
               "units": None if units is None else [dataclasses.asdict(u) for u in units],
               "segments": [s.to_json() for s in self.segments]}
        if hotwords is not None:
            out["hotwords"] = [{"text": h.text, "score": round(h.score, 4), "start": round(h.start, 3),
                                "end": round(h.end, 3)} for h in hotwords]
        return out


def join_texts(texts: Iterable[str]) -> str:
    """Texts joined with a space, except where a Han character meets a Han character (Mandarin has no spaces)."""
    out = ""
    for t in (t.strip() for t in texts):
        if not t:
            continue
        if out and not (_is_han(out[-1]) and _is_han(t[0])):
            out += " "
        out += t
    return out


def _is_han(ch: str) -> bool:
    """A Han character or CJK / full-width punctuation (no space next to another such)."""
    return detect_language(ch) == "zh" or "\u3000" <= ch <= "\u303f" or "\uff00" <= ch <= "\uffef"


def _config(cls, value, where: str):
    """A component config from its JSON (fields this version no longer has are dropped), or None."""
    if value is None:
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) and k in _TUPLE_FIELDS else v
                      for k, v in value.items() if k in known})
    except TypeError as e:
        raise UserError(f"{where}: {cls.__name__} cannot be built from {value} ({e}); re-export the stage") from None


_TUPLE_FIELDS = {"frames_per_phone", "edge_silence", "pause_frames", "silence_frames", "betas"}


def read_export(path: str | Path) -> tuple[Path, dict]:
    """(export dir, its model.json) of an export dir or a stage's run dir (its export/), checked."""
    path = Path(path)
    if not path.exists():
        raise UserFileNotFound(f"{path}: no such export dir; give a speech stage's export dir (with {MODEL_FILE}) or "
                               f"its run dir (the README's main command writes runs/tiny/joint_sft/export)")
    export = path / "export" if not (path / MODEL_FILE).is_file() and (path / "export" / MODEL_FILE).is_file() \
        else path
    if not (export / MODEL_FILE).is_file():
        raise UserFileNotFound(f"{path}: no {MODEL_FILE} there; give a speech stage's export dir (run_dir/export of "
                               f"align, ia_sft or joint_sft) or its run dir")
    try:
        desc = json.loads((export / MODEL_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{export / MODEL_FILE}: not valid JSON ({e}); re-export the stage") from None
    if not isinstance(desc, dict) or not isinstance(desc.get("init_args"), dict):
        raise UserError(f"{export / MODEL_FILE}: no init_args object; re-export the stage")
    args = desc["init_args"]
    if not args.get("llm") or not args.get("adapter") or not args.get("encoder"):
        raise UserError(f"{export / MODEL_FILE}: a {desc.get('stage', '?')} export has no encoder, adapter and LLM to "
                        f"transcribe with; give a speech stage's export (align, ia_sft, joint_sft)")
    return export, desc


class Recognizer:
    """Encoder -> adapter -> LLM decoding of audio, with long-form segmentation, timestamps and guards.

    One Recognizer serves one caller at a time (its hotword list is its state); give each thread its own."""

    def __init__(self, net: SpeechLLM, cmvn: tuple[torch.Tensor, torch.Tensor], decode: DecodeConfig,
                 max_segment_s: float = 20.0, device: str | torch.device = "cpu",
                 params: HallucinationParams | None = None, hotword_prompts: bool = False):
        self.net = net.eval().to(device)
        self.mean, self.inv_std = cmvn
        self.decode = decode
        if not max_segment_s >= 1:
            raise UserError(f"max_segment_s must be >= 1 s (the longest segment a recording is cut into), got "
                            f"{max_segment_s}")
        self.max_segment_s = max_segment_s
        self.device = torch.device(device)
        self.params = params or HallucinationParams()
        self.hotwords: HotwordIndex | None = None  # set_hotwords: retrieval from the phone CTC head, per segment
        self.hotword_threshold, self.hotword_top_k = DEFAULT_THRESHOLD, 10
        # trained with hotword lists in its prompts (context SFT; model.json's hotword_prompts): retrieved hotwords
        # then go into the prompt of their segment (set_hotwords' `bias`)
        self.hotword_prompts = hotword_prompts
        self.bias = False

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", cmvn: str | Path | None = None,
                        max_segment_s: float | None = None, **kw) -> Recognizer:
        """Build from a speech stage's export dir (or its run dir): model.json's configs, the exported weights
        (components it did not export from where model.json says), cmvn.json (or `cmvn`). Recordings longer than
        `max_segment_s` (default: the run's batch.max_duration, the longest clip it trained on) are cut on pauses."""
        from entropy_asr.assets import check_if_asset

        export, desc = read_export(path)
        args, where = desc["init_args"], str(export / MODEL_FILE)
        configs = {name: _config(c, args.get(name), where) for name, c in CONFIGS.items()}
        llm = configs["llm"]
        source = llm.name_or_path
        if source is not None and not Path(source).is_absolute() and (export / source).exists():
            source = str(export / source)
        # an exported LoRA run's llm/ holds the merged weights: no adapters to add again
        lora = None if (export / "llm").is_dir() else llm.lora
        tokenizer = llm.tokenizer
        if tokenizer is not None and not Path(tokenizer).is_absolute() and (export / tokenizer).exists():
            tokenizer = str(export / tokenizer)
        configs["llm"] = dataclasses.replace(llm, name_or_path=source, tokenizer=tokenizer, lora=lora,
                                             gradient_checkpointing=False)
        configs["encoder"] = dataclasses.replace(configs["encoder"], activation_checkpointing=False)
        init = dict(args.get("init") or {})
        for path_ in [source, *init.values()]:
            check_if_asset(path_)
        net = SpeechLLM(configs["encoder"], configs["ctc_head"], configs["adapter"], configs["llm"],
                        configs["prompt"], configs["phone_frames"])
        for component, file in init.items():
            if component not in FILE_COMPONENTS or getattr(net, component, None) is None:
                continue
            file = Path(file) if Path(file).is_absolute() else export / file
            if not file.is_file():
                raise UserFileNotFound(f"{where}: {component} comes from {file}, which is not there (an export copied "
                                       f"without the files its stage started from); copy it there, or use the export "
                                       f"of a later stage (IA-SFT and joint SFT export every component)")
            load_component(getattr(net, component), file, component)
        cmvn_path = Path(cmvn) if cmvn else export / CMVN_FILE
        if not cmvn_path.is_file():
            raise UserFileNotFound(f"{cmvn_path}: no CMVN statistics; give the cmvn.json of the data the stage trained "
                                   f"on (--cmvn PATH; from_pretrained(cmvn=PATH))")
        batch = (desc.get("data") or {}).get("batch") or {}
        kw.setdefault("hotword_prompts", bool(desc.get("hotword_prompts", False)))
        return cls(net, load_cmvn(cmvn_path), configs["decode"] or DecodeConfig(),
                   max_segment_s=max_segment_s or float(batch.get("max_duration", 20.0)), device=device, **kw)

    def set_hotwords(self, hotwords: list[str] | HotwordIndex | None, threshold: float = DEFAULT_THRESHOLD,
                     top_k: int = 10, bias: bool | None = None) -> None:
        """A hotword list (names, terms; thousands are fine) to retrieve from each segment with the phone CTC head
        (entropy_asr.inference.hotwords); results in SegmentResult.hotwords / Transcript.hotwords. None: off.

        bias: put each segment's retrieved hotwords into its prompt (context biasing). Default: when the model
        was trained with hotword prompts (a context-SFT export, or a later stage from one); a model that never
        saw them may ignore or misuse them. False: retrieval only, the decoding is unchanged."""
        if isinstance(hotwords, str):
            raise UserError("set_hotwords takes a list of hotwords (or a HotwordIndex), not one string")
        if not threshold <= 0:
            raise UserError(f"the hotword threshold is a log-likelihood ratio per phone, <= 0; got {threshold}")
        if hotwords is not None and not self.phone_ctc:
            raise UserError("hotword retrieval needs a phone CTC head; this export has none (a character head, or "
                            "none)")
        index = hotwords if hotwords is None or isinstance(hotwords, HotwordIndex) else HotwordIndex(hotwords)
        biased = index is not None and (self.hotword_prompts if bias is None else bool(bias))
        if biased:  # an entry the prompt cannot hold fails here, naming it, not later on every file it is found in
            for entry in index.texts:
                self.net.prompt.context_ids([entry])
        self.hotwords, self.bias = index, biased
        self.hotword_threshold, self.hotword_top_k = threshold, top_k

    # ---- features and decoding ----------------------------------------------------------------------
    def features(self, audio: np.ndarray) -> torch.Tensor:
        """(T,) 16 kHz samples -> (frames, 80) normalized fbank, as the training data pipeline computes them."""
        return (fbank(audio) - self.mean) * self.inv_std

    @torch.no_grad()
    def decode_audio(self, audios: list[np.ndarray], timestamps: bool = True, guards: bool = True,
                     offsets: list[float] | None = None,
                     prompt_hotwords: list[list[str]] | None = None) -> list[SegmentResult]:
        """One batch of 16 kHz clips (each <= max_segment_s) -> a SegmentResult each (times from `offsets`).

        prompt_hotwords: per clip, the hotword list for its prompt as given (no retrieval decides it; for
        evaluations that control the list); None: set_hotwords' retrieval and bias decide."""
        offsets = offsets or [0.0] * len(audios)
        feats = [self.features(a) for a in audios]
        lens = torch.tensor([f.shape[0] for f in feats])
        x = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1])
        for i, f in enumerate(feats):
            x[i, :f.shape[0]] = f
        durations = [len(a) / SAMPLE_RATE for a in audios]
        net = self.net
        frames, frame_lens = net.encode(x.to(self.device), lens.to(self.device))
        speech, speech_lens = net.adapt(frames, frame_lens)
        wants_ctc = self.phone_ctc and (timestamps or self.hotwords is not None)
        log_probs = net.ctc_log_probs(frames) if wants_ctc else None
        lps = [log_probs[i, :int(frame_lens[i])].cpu() if log_probs is not None else None for i in range(len(audios))]
        ats = [o + ENCODER_FRAME_DELAY_S for o in offsets]  # (where the encoder's frames sit in time)
        hits = [self.hotwords.search(lp, self.hotword_top_k, self.hotword_threshold, offset=at)
                if lp is not None and self.hotwords is not None else None for lp, at in zip(lps, ats)]
        prompts = [[h.text for h in found] for found in hits] if self.bias else None  # context biasing
        if prompt_hotwords is not None:
            if len(prompt_hotwords) != len(audios):
                raise ValueError(f"got {len(prompt_hotwords)} hotword lists for {len(audios)} clips")
            prompts = prompt_hotwords
        results = self._generate(speech.to(net.llm.dtype), speech_lens, durations, guards, prompts)
        out = []
        for i, (text, truncated) in enumerate(results):
            units = None
            if lps[i] is not None and timestamps:
                units = with_original_case(text, unit_times(lps[i], text, detect_language(text), offset=ats[i]))
            out.append(SegmentResult(offsets[i], offsets[i] + durations[i], text, truncated, units, hits[i]))
        return out

    @property
    def phone_ctc(self) -> bool:
        """Whether the model has a phone CTC head (timestamps need one; a character head gives none)."""
        from entropy_asr.text import PHONES

        return self.net.ctc_head is not None and self.net.ctc_head.vocab_size == len(PHONES)

    def _generate(self, speech: torch.Tensor, speech_lens: torch.Tensor, durations: list[float],
                  guards: bool, hotwords: list[list[str]] | None = None) -> list[tuple[str, str | None]]:
        """(text, truncated) per row: the length cap always; with `guards` the repetition stop and cut too;
        `hotwords`: per row, a hotword list for its prompt."""
        net, d = self.net, self.decode
        limits = max_new_tokens_for(durations, d.tokens_per_second, d.max_new_tokens_floor)
        extra: dict = {"cache_implementation": "static"} if d.static_cache else {}
        stop = RepetitionStop(guard_repeats(self.params)) if guards else None
        if stop is not None:
            extra["stopping_criteria"] = StoppingCriteriaList([stop])
        rows = generate_ended(net.llm, net.tokenizer, net.prompt, speech, speech_lens, limits,
                              num_beams=d.num_beams, hotwords=hotwords, **extra)
        out = []
        for i, (text, ended) in enumerate(rows):
            text = " ".join(text.split())  # one line: a newline or tab the LLM wrote is a space
            # stopped within its own limit (a row decodes on to the batch's longest limit, then is cut to its own);
            # with beams the criterion sees B x beams rows: only the text's own loop counts then
            stopped = (stop is not None and stop.fired_at is not None and d.num_beams == 1
                       and 0 <= int(stop.fired_at[i]) <= limits[i])
            ended = ended and not stopped  # (a tokenizer without a pad token pads a stopped row with the EOS)
            truncated = None if ended else "length"
            if guards:
                cut = cut_repetition(text, guard_repeats(self.params), self.params.max_ngram, ended=ended)
                if cut is not None:
                    text, truncated = cut, "repetition"
                elif stopped:
                    truncated = "repetition"
            out.append((text, truncated))
        return out

    # ---- recordings ---------------------------------------------------------------------------------
    def stream_session(self, chunk_s: float = 0.64, left_chunks: int = 4, **kw):
        """A StreamSession (entropy_asr.inference.streaming): push audio chunks, get partial and final hypotheses."""
        from entropy_asr.inference.streaming import StreamSession

        return StreamSession(self, chunk_s=chunk_s, left_chunks=left_chunks, **kw)

    def transcribe(self, inputs, batch_size: int = 16, timestamps: bool = True, guards: bool = True,
                   progress: bool = False) -> list[Transcript]:
        """Transcripts of `inputs` (a path or array, or a list of them; arrays are 16 kHz mono, or (array, rate)),
        in order. An input that cannot be read raises; `iter_transcribe` reports it in `error` and goes on."""
        single = isinstance(inputs, (str, Path, np.ndarray, tuple, torch.Tensor))
        if not single and not isinstance(inputs, Iterable):
            raise UserError(f"inputs: give a path, an array, (array, rate), or a list of them; got "
                            f"{type(inputs).__name__}")
        out = list(self.iter_transcribe([inputs] if single else inputs, batch_size, timestamps, guards, progress,
                                        raise_errors=True))
        return out

    def iter_transcribe(self, inputs: Iterable, batch_size: int = 16, timestamps: bool = True, guards: bool = True,
                        progress: bool = False, raise_errors: bool = False) -> Iterator[Transcript]:
        """Transcripts in input order, decoding segments of several inputs together in batches of `batch_size`."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        inputs = list(inputs)
        bar = _progress(len(inputs)) if progress else None
        pending: list[tuple[int, float, np.ndarray]] = []  # (input index, offset, audio) waiting for a batch
        transcripts: dict[int, Transcript] = {}
        open_segments: dict[int, int] = {}  # input index -> segments not decoded yet
        done_reading: set[int] = set()
        next_out = 0

        def fail(k: int, e: UserError) -> None:
            """Input k cannot be transcribed: its error replaces its transcript, its other segments are dropped."""
            if raise_errors:
                raise e
            from entropy_asr.errors import one_line

            transcripts[k] = Transcript(transcripts[k].source, error=one_line(e))
            pending[:] = [p for p in pending if p[0] != k]
            open_segments[k] = 0

        def decode(batch: list[tuple[int, float, np.ndarray]]) -> None:
            """Decode a batch into its inputs' transcripts; a batch that fails is retried a segment at a time, so
            an error lands on the input it belongs to, never on the others sharing the batch."""
            try:
                results = self.decode_audio([a for _, _, a in batch], timestamps, guards, [o for _, o, _ in batch])
            except UserError as e:
                if len(batch) == 1:
                    fail(batch[0][0], e)
                else:
                    for item in batch:
                        decode([item])
                return
            for (k, _, _), r in zip(batch, results, strict=True):
                if transcripts[k].error is None:
                    transcripts[k].segments.append(r)
                    open_segments[k] -= 1

        def flush(all_: bool) -> None:
            while pending and (all_ or len(pending) >= batch_size):
                batch = sorted(pending[:batch_size], key=lambda p: len(p[2]))
                del pending[:batch_size]
                decode([p for p in batch if transcripts[p[0]].error is None])

        def finished() -> Iterator[Transcript]:
            nonlocal next_out
            while next_out in transcripts and next_out in done_reading and not open_segments.get(next_out):
                t = transcripts.pop(next_out)
                t.segments.sort(key=lambda s: s.start)
                if bar is not None:
                    bar.update(1)
                next_out += 1
                yield t

        for k, item in enumerate(inputs):
            name = str(item) if isinstance(item, (str, Path)) else f"input {k} (an array)"
            transcripts[k], open_segments[k] = Transcript(name), 0
            try:
                for offset, audio, total in self._pieces(item, name):
                    if transcripts[k].error is not None:
                        break
                    transcripts[k].duration = total
                    if len(audio):
                        pending.append((k, offset, audio))
                        open_segments[k] += 1
                    flush(False)
                    yield from finished()
            except UserError as e:  # reading it (decoding errors are decode's)
                fail(k, e)
            done_reading.add(k)
            yield from finished()
        flush(True)
        yield from finished()
        if bar is not None:
            bar.close()

    def _pieces(self, item, name: str) -> Iterator[tuple[float, np.ndarray, float]]:
        """(offset s, 16 kHz audio, recording duration s) to decode for one input: the whole recording when it is
        at most max_segment_s long, else its segments (silence left out); a file libsndfile cannot decode to its end
        (damaged, cut short) is a UserError naming it."""
        try:
            yield from self._read_pieces(item, name)
        except sf.LibsndfileError as e:  # (libsndfile's own errors only: anything else is a bug and keeps its trace)
            if not isinstance(item, (str, Path)):
                raise
            raise UserError(f"{item}: cannot be decoded ({' '.join(str(e).split())}); the file is damaged or cut "
                            f"short: re-copy or re-export it") from None

    def _read_pieces(self, item, name: str) -> Iterator[tuple[float, np.ndarray, float]]:
        if isinstance(item, (str, Path)):
            path = Path(item)
            blocks = iter_audio(path)  # (checks the file: there, audio, not cut short)
            info = sf.info(str(path))
            duration = info.frames / info.samplerate
            if duration <= self.max_segment_s:  # whole, as evaluate.py decodes a shard's utterance
                x, sr = read_audio(path)
                audio = resample(x, sr)
                _check_audio(audio, str(path))
                yield 0.0, audio, len(audio) / SAMPLE_RATE
                return
        else:
            audio = as_16k_mono(item, name)
            duration = len(audio) / SAMPLE_RATE
            _check_audio(audio, name)
            if duration <= self.max_segment_s:
                yield 0.0, audio, duration
                return
            step = 30 * SAMPLE_RATE
            blocks = (audio[i:i + step] for i in range(0, len(audio), step))
        segmenter = Segmenter(max_segment_s=self.max_segment_s, pad_s=min(SEGMENT_PAD_S, self.max_segment_s / 4))
        yielded = False
        for block in blocks:
            if not np.isfinite(block).all():
                raise UserError(f"{name}: NaN or infinite samples; the audio is corrupt, fix or drop it")
            for s in segmenter.feed(block):
                yielded = True
                yield s.start, _at_least(s.audio), duration
        for s in segmenter.flush():
            yielded = True
            yield s.start, _at_least(s.audio), duration
        if not yielded:  # no speech anywhere: an empty transcript of the recording's length
            yield 0.0, np.zeros(0, np.float32), duration


def unit_starts(text: str, units: list[UnitTime]) -> list[int]:
    """Where each unit starts in `text`, found in order ignoring case; -1 for a unit not written there as is (the
    phonemizer reads some text differently, e.g. digits as Chinese numerals)."""
    lower, cursor, out = text.lower(), 0, []
    for u in units:
        i = lower.find(u.text.lower(), cursor)
        out.append(i)
        if i >= 0:
            cursor = i + len(u.text)
    return out


def with_original_case(text: str, units: list[UnitTime] | None) -> list[UnitTime] | None:
    """Units with their text as written in `text` (the phonemizer lowercases English words), times rounded to the
    millisecond; a unit not found as written keeps the phonemizer's form."""
    if units is None:
        return None
    return [UnitTime(text[i:i + len(u.text)] if i >= 0 else u.text, round(u.start, 3), round(u.end, 3),
                     round(u.score, 4)) for u, i in zip(units, unit_starts(text, units), strict=True)]


def _at_least(x: np.ndarray) -> np.ndarray:
    """A segment padded with silence to the shortest clip the encoder reads (a forced cut can leave a few ms)."""
    short = round(MIN_SECONDS * SAMPLE_RATE) - len(x)
    return np.pad(x, (0, short)) if short > 0 else x


def _check_audio(x: np.ndarray, where: str) -> None:
    """Audio a model can read: long enough, finite."""
    if len(x) < MIN_SECONDS * SAMPLE_RATE:
        raise UserError(f"{where}: {len(x) / SAMPLE_RATE:.3f} s of audio, too short to transcribe (at least "
                        f"{MIN_SECONDS} s)")
    if not np.isfinite(x).all():
        raise UserError(f"{where}: NaN or infinite samples; the audio is corrupt, fix or drop it")


def float_samples(item, where: str) -> np.ndarray:
    """Samples as a float numpy array: a numpy array or torch tensor, float in [-1, 1] or integer PCM (scaled by its
    type's range, as soundfile reads PCM files)."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise UserError(f"{where}: expected a numpy array or torch tensor of samples, got {type(item).__name__}")
    if item.dtype.kind in "iu":  # integer PCM: full scale is the type's range
        info = np.iinfo(item.dtype)
        return (item.astype(np.float64) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    if item.dtype.kind != "f":
        raise UserError(f"{where}: samples of type {item.dtype} are not audio; give float samples in [-1, 1] or "
                        f"integer PCM")
    return item


def as_16k_mono(item, where: str = "the array") -> np.ndarray:
    """An array input as 16 kHz mono float32: samples (T,) or (T, channels) at 16 kHz, or (samples, rate)
    (float_samples' types)."""
    sr = SAMPLE_RATE
    if isinstance(item, tuple):
        if len(item) != 2:
            raise UserError(f"{where}: an array input is samples or (samples, rate), got a tuple of {len(item)}")
        item, sr = item
        if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
            raise UserError(f"{where}: the rate must be a positive integer (Hz), got {sr!r}")
    x = float_samples(item, where)
    if x.ndim == 2 and x.shape[1] > x.shape[0]:
        raise UserError(f"{where}: shape {x.shape} looks like (channels, samples); give (samples, channels): x.T")
    if x.ndim not in (1, 2):
        raise UserError(f"{where}: an array input is (samples,) or (samples, channels), got shape {x.shape}")
    return resample(to_mono(x), int(sr))


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", dynamic_ncols=True)
