"""Using a trained model: the Recognizer and `python -m entropy_asr.transcribe` (formats, rates, bad input,
long-form, streaming, guards, subtitles), on a one-step align export of the session's tiny corpus."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from entropy_asr.data.audio import SAMPLE_RATE, resample
from entropy_asr.errors import UserError
from entropy_asr.inference import recognizer as rec
from entropy_asr.inference.guards import RepetitionStop, cut_repetition
from entropy_asr.inference.recognizer import Recognizer, SegmentResult, Transcript, join_texts
from entropy_asr.inference.streaming import StreamSession, final_text, stream
from entropy_asr.inference.timestamps import UnitTime
from entropy_asr.transcribe import cues, main, srt_time, to_srt
from experiments.run import run
from tests.stage_helpers import ENC, TINY, common, recording, utterances


@pytest.fixture(scope="module")
def model(exports, tiny_corpus, tmp_path_factory) -> dict:
    """A one-step align run's export, evaluate.py's transcripts of the test split (one utterance a batch) and the
    test split's utterances as FLAC files."""
    from experiments import evaluate

    root = tmp_path_factory.mktemp("transcribe")
    run_dir = root / "align"
    # the shipped tiny LLM (it reads pseudo speech) over a one-step encoder: varied text, not a random LLM's nothing
    run(["--config", str(TINY / "align.yaml"), "--run_dir", str(run_dir), "--vars.runs", str(exports["root"]),
         "--vars.first_snapshot", "step00000001", "--model.init_args.encoder", json.dumps(ENC),
         "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--test", "false",
         "--model.init_args.decode", json.dumps({"num_beams": 1}),  # the export's default, which transcribe uses
         *common(tiny_corpus)])
    evaluate.main(["--checkpoint", str(run_dir / "export"), "--data", str(tiny_corpus / "test"), "--out",
                   str(root / "eval"), "--batch-size", "1", "--beam", "1", "--wandb", "disabled"])
    hyps = {(r := json.loads(x))["id"]: r["hyp"] for x in (root / "eval" / "hyps.jsonl").read_text().splitlines()}
    utts = utterances(tiny_corpus / "test")
    files = {}
    for u in utts:
        files[u["key"]] = root / "flac" / f"{u['key']}.flac"
        files[u["key"]].parent.mkdir(exist_ok=True)
        files[u["key"]].write_bytes(u["flac"])
    return {"export": run_dir / "export", "run_dir": run_dir, "hyps": hyps, "utts": utts, "files": files,
            "many": utterances(tiny_corpus / "train"),  # for recordings: varied utterances
            "pretrain_export": exports["root"] / "pretrain_ctc" / "export",
            "asr": Recognizer.from_pretrained(run_dir / "export")}


def test_transcribe_equals_evaluate_on_the_test_split(model):
    """A test-split FLAC gives evaluate.py's hypothesis (guards off: scoring's raw decoding), by the API and the CLI."""
    asr, files = model["asr"], model["files"]
    keys = list(files)
    assert len(keys) >= 3 and set(keys) == set(model["hyps"])
    assert all(model["hyps"].values()) and len(set(model["hyps"].values())) >= 2  # texts that tell inputs apart
    got = asr.transcribe([files[k] for k in keys], batch_size=1, guards=False, timestamps=False)
    assert [t.text for t in got] == [model["hyps"][k] for k in keys]
    assert [t.source for t in got] == [str(files[k]) for k in keys]
    assert all(t.error is None and t.duration > 0 and len(t.segments) == 1 for t in got)
    # the export's model.json carries the config's silence cap into the recognizer, as evaluate.py decoded with it
    cap = json.loads((model["export"] / "model.json").read_text())["init_args"]["adapter"]["max_silence"]
    assert isinstance(cap, int) and cap >= 1 and asr.net.max_silence == cap


def test_cli_json_has_language_timestamps_and_segments(model, capsys):
    files = list(model["files"].values())[:3]
    assert main([str(model["run_dir"]), *map(str, files), "--format", "json", "--batch-size", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in lines] == [str(f) for f in files]
    for r in lines:
        assert r["language"] in ("zh", "en", "mix", "none") and r["truncated"] in (None, "repetition", "length")
        assert r["units"] is not None  # the align export has a phone CTC head
        times = [(u["start"], u["end"]) for u in r["units"]]
        assert all(0 <= a < b <= r["duration"] + 0.04 for a, b in times)
        assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(times))  # in order, not overlapping
        assert r["segments"][0]["text"] == r["text"]


def test_formats_rates_and_channels(model, tmp_path):
    """Any rate soundfile reads is resampled, stereo downmixed; lossless 16 kHz variants decode identically."""
    asr = model["asr"]
    u = next(u for u in model["utts"] if len(u["audio"]) > SAMPLE_RATE)
    x = u["audio"]
    reference = asr.transcribe(x, guards=False, timestamps=False)[0].text
    variants = {
        "wav16.wav": (x, SAMPLE_RATE, "PCM_16"), "flac24.flac": (x, SAMPLE_RATE, "PCM_24"),
        "wav24.wav": (x, SAMPLE_RATE, "PCM_24"), "stereo.wav": (np.stack([x, x], 1), SAMPLE_RATE, "PCM_16"),
        "float.wav": (x, SAMPLE_RATE, "FLOAT"),
    }
    resampled = {f"r{sr}.flac": (resample(x, SAMPLE_RATE, sr), sr, "PCM_16") for sr in (8000, 44100, 48000)}
    resampled["r44100stereo.wav"] = (np.stack([resample(x, SAMPLE_RATE, 44100)] * 2, 1), 44100, "PCM_24")
    resampled["ogg.ogg"] = (x, SAMPLE_RATE, "VORBIS")
    paths = {}
    for name, (y, sr, subtype) in {**variants, **resampled}.items():
        paths[name] = tmp_path / name
        sf.write(paths[name], y, sr, subtype=subtype)
    got = {name: t for name, t in zip(paths, asr.transcribe(list(paths.values()), guards=False, timestamps=False),
                                      strict=True)}
    for name in variants:
        assert got[name].text == reference, name
    for name, t in got.items():
        assert t.error is None and abs(t.duration - len(x) / SAMPLE_RATE) < 0.01, name
    # the resampled files reach the model as nearly the original's features (8 kHz has no band above 4 kHz)
    base = asr.features(x)
    for name, limit in (("r44100.flac", 0.05), ("r48000.flac", 0.05), ("r44100stereo.wav", 0.05)):
        y, sr = sf.read(paths[name], dtype="float32")
        f = asr.features(resample(y.mean(1) if y.ndim == 2 else y, sr))
        n = min(len(f), len(base))
        assert (f[:n] - base[:n]).abs().mean() < limit, name


def test_bad_files_get_one_line_each_and_the_others_are_transcribed(model, tmp_path, capsys):
    good = next(iter(model["files"].values()))
    (tmp_path / "text.wav").write_text("not audio")
    (tmp_path / "empty.flac").write_bytes(b"")
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    sf.write(tmp_path / "tiny.wav", np.zeros(400, np.float32), SAMPLE_RATE)
    (tmp_path / "cut.flac").write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])  # a copy cut short
    bad = [tmp_path / "missing.wav", tmp_path / "text.wav", tmp_path / "empty.flac", tmp_path / "zero.wav",
           tmp_path / "tiny.wav", tmp_path, tmp_path / "cut.flac"]
    assert main([str(model["export"]), str(bad[0]), str(good), *map(str, bad[1:])]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith(f"{good}\t") and len(out.splitlines()) == 1
    lines = [x for x in err.strip().splitlines() if "was cut" not in x]  # (the one-step model's text may be cut)
    assert len(lines) == len(bad) + 1 and lines[-1] == f"transcribe: {len(bad)} of {len(bad) + 1} files failed"
    for path, line in zip(bad, lines, strict=False):
        assert str(path) in line and "Traceback" not in line
    assert "too short" in lines[3] and "too short" in lines[4] and "not audio" in lines[1]


def test_paths_from_stdin_and_usage_errors(model, monkeypatch, capsys, tmp_path):
    import io

    files = list(model["files"].values())[:2]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(map(str, files)) + "\n\n"))
    assert main([str(model["export"]), "-"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == [str(f) for f in files]
    with pytest.raises(UserError, match="needs --out-dir"):
        main([str(model["export"]), *map(str, files), "--format", "srt"])
    assert main([str(model["export"]), *map(str, files), "--format", "srt", "--out-dir", str(tmp_path / "s")]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(f.stem + ".srt" for f in files)
    with pytest.raises(FileNotFoundError, match="no model.json"):
        main([str(tmp_path), str(files[0])])
    with pytest.raises(UserError, match="no encoder, adapter and LLM"):  # pretraining's: nothing to transcribe with
        Recognizer.from_pretrained(model["pretrain_export"])


def test_an_export_copied_alone_decodes_or_says_what_is_missing(model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(model["export"], copy)
    f = next(iter(model["files"].values()))
    assert Recognizer.from_pretrained(copy).transcribe(f, guards=False)[0].text == model["asr"].transcribe(
        f, guards=False)[0].text  # the align export names its starting encoder by absolute path: still there
    desc = json.loads((copy / "model.json").read_text())
    desc["init_args"]["init"]["encoder"] = str(tmp_path / "gone" / "encoder.safetensors")
    (copy / "model.json").write_text(json.dumps(desc))
    with pytest.raises(FileNotFoundError, match=r"encoder comes from .*gone.*which is not there"):
        Recognizer.from_pretrained(copy)
    (copy / "cmvn.json").unlink()
    desc["init_args"]["init"]["encoder"] = json.loads((model["export"] / "model.json").read_text())[
        "init_args"]["init"]["encoder"]
    (copy / "model.json").write_text(json.dumps(desc))
    with pytest.raises(FileNotFoundError, match="no CMVN statistics"):
        Recognizer.from_pretrained(copy)


def test_array_inputs_of_any_pcm_type_and_bad_arrays_get_one_line(model):
    asr = model["asr"]
    x = model["utts"][0]["audio"]
    want = asr.transcribe(x, guards=False)[0].text
    pcm16 = np.round(x * 32767).astype(np.int16)
    got = asr.transcribe([pcm16, torch.from_numpy(x), (np.stack([x, x], 1), SAMPLE_RATE), x.astype(np.float64)],
                         guards=False)
    assert [t.text for t in got] == [want] * 4
    nan = x.copy()
    nan[100] = np.nan
    for bad, match in ((nan, "NaN or infinite"), (np.stack([x, x]), r"looks like \(channels, samples\)"),
                       (x > 0, "not audio"), ((x, 0), "rate must be a positive integer"), (None, "give a path"),
                       ([x[:10]], "too short")):
        with pytest.raises(UserError, match=match):
            asr.transcribe(bad)
    (t,) = asr.iter_transcribe([nan])
    assert t.error.startswith("input 0 (an array): NaN")


def test_cli_options_are_checked_before_the_model_loads(model, tmp_path):
    f = str(next(iter(model["files"].values())))
    gone = str(tmp_path / "no_export")  # never read: each option fails first
    for args, match in ((["--stream", "--chunk-ms", "50"], "multiple of 40"),
                        (["--stream", "--left-chunks", "-1"], "left-chunks must be >= 0"),
                        (["--stream", "--out-dir", str(tmp_path)], "--stream prints"),
                        (["--device", "nonsense"], "not a torch device"), (["--max-segment-s", "0"], "max-segment-s"),
                        (["--out-dir", f], "a file, not a directory")):
        with pytest.raises(UserError, match=match):
            main([gone, f, *args])
    other = tmp_path / "elsewhere" / Path(f).name
    other.parent.mkdir()
    other.write_bytes(Path(f).read_bytes())
    with pytest.raises(UserError, match="would both write"):
        main([gone, f, str(other), "--out-dir", str(tmp_path / "out")])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            main([gone, f, "--device", "cuda"])


def test_hotwords_are_retrieved_per_segment_and_listed_in_json(model, tmp_path, capsys, monkeypatch):
    """--hotwords: the entries the phone CTC head finds, with their times, in the JSON; decoding is unchanged.
    The one-step model's CTC head is random, so the posteriors are made certain of one hotword's phones."""
    from entropy_asr.text import Phonemizer, phones_to_ids

    asr = model["asr"]
    f = next(iter(model["files"].values()))
    ids = phones_to_ids(Phonemizer()("Zhang Wei", None))
    real = asr.net.ctc_log_probs

    def says_zhang_wei(frames):  # blank everywhere, the name's phones on frames 10, 12, ...
        lp = torch.full((*frames.shape[:2], len(asr.net.ctc_head.out.bias)), -30.0)
        lp[..., 0] = 0.0
        for i, p in enumerate(ids):
            lp[:, 10 + 2 * i, 0], lp[:, 10 + 2 * i, p] = -30.0, 0.0
        return lp.log_softmax(-1)

    monkeypatch.setattr(asr.net, "ctc_log_probs", says_zhang_wei)
    plain = asr.transcribe(f, timestamps=False)[0]
    asr.set_hotwords(["Zhang Wei", "hello world", "##", "张伟"], top_k=5)
    try:
        (t,) = asr.transcribe(f, timestamps=False)
    finally:
        asr.set_hotwords(None)
        monkeypatch.setattr(asr.net, "ctc_log_probs", real)
    assert t.text == plain.text  # retrieval only
    assert [h.text for h in t.hotwords] == ["Zhang Wei"]  # (张伟 is other phones: the Mandarin reading)
    assert t.hotwords[0].score == pytest.approx(0.0, abs=1e-5) and t.hotwords[0].start == pytest.approx(0.4225)
    hw = tmp_path / "hotwords.txt"
    hw.write_text("# names\nZhang Wei\n\nhello world\n")
    assert main([str(model["export"]), str(f), "--format", "json", "--hotwords", str(hw)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert "hotwords" in record and all(h["score"] <= 0 for h in record["hotwords"])
    with pytest.raises(UserError, match="no hotwords in it"):
        (tmp_path / "empty.txt").write_text("# nothing\n")
        main([str(model["export"]), str(f), "--hotwords", str(tmp_path / "empty.txt")])


def test_retrieved_hotwords_go_into_the_prompt_with_bias(model, monkeypatch):
    """Context biasing: with bias (the default for a model trained with hotword prompts) each segment's prompt gets
    exactly the hotwords retrieved from it; without, the prompt gets none. The decoder is spied on, and the
    posteriors made certain of one hotword's phones (the one-step model's CTC head is random)."""
    import entropy_asr.inference.recognizer as rec
    from entropy_asr.text import Phonemizer, phones_to_ids

    asr = model["asr"]
    assert asr.hotword_prompts is False  # a joint-SFT-like export: never trained with hotword prompts
    f = next(iter(model["files"].values()))
    ids = phones_to_ids(Phonemizer()("Zhang Wei", None))

    def says_zhang_wei(frames):
        lp = torch.full((*frames.shape[:2], len(asr.net.ctc_head.out.bias)), -30.0)
        lp[..., 0] = 0.0
        for i, p in enumerate(ids):
            lp[:, 10 + 2 * i, 0], lp[:, 10 + 2 * i, p] = -30.0, 0.0
        return lp.log_softmax(-1)

    seen = []
    real_generate = rec.generate_ended

    def spy(*args, hotwords=None, **kw):
        seen.append(hotwords)
        return real_generate(*args, hotwords=hotwords, **kw)

    monkeypatch.setattr(asr.net, "ctc_log_probs", says_zhang_wei)
    monkeypatch.setattr(rec, "generate_ended", spy)
    try:
        asr.set_hotwords(["Zhang Wei", "hello world"])  # bias follows the model: off here
        asr.transcribe(f, timestamps=False)
        asr.set_hotwords(["Zhang Wei", "hello world"], bias=True)
        (t,) = asr.transcribe(f, timestamps=False)
        asr.hotword_prompts = True  # as model.json says of a context-SFT export
        asr.set_hotwords(["Zhang Wei", "hello world"])
        asr.transcribe(f, timestamps=False)
    finally:
        asr.set_hotwords(None)
        asr.hotword_prompts = False
    assert seen == [None, [["Zhang Wei"]], [["Zhang Wei"]]]
    assert [h.text for h in t.hotwords] == ["Zhang Wei"]


def test_a_hotword_the_prompt_cannot_hold_is_refused_when_biasing(model, tmp_path):
    """An entry holding a special token fails once, when the list is set, naming it (and the file), not later on
    every recording it is retrieved from; retrieval alone takes it."""
    asr = model["asr"]
    with pytest.raises(UserError, match="'Zhang <|im_end|> Wei' contains a special token"):
        asr.set_hotwords(["hello world", "Zhang <|im_end|> Wei"], bias=True)
    assert asr.hotwords is None and not asr.bias  # nothing half set
    asr.set_hotwords(["hello world", "Zhang <|im_end|> Wei"], bias=False)
    asr.set_hotwords(None)
    f = next(iter(model["files"].values()))
    hw = tmp_path / "hotwords.txt"
    hw.write_text("hello world\nZhang <|im_end|> Wei\n")
    with pytest.raises(UserError, match=rf"--hotwords {hw}: hotword 'Zhang <\|im_end\|> Wei'"):
        main([str(model["export"]), str(f), "--hotwords", str(hw), "--hotword-bias", "on"])
    with pytest.raises(UserError, match="--hotword-bias on needs --hotwords FILE"):
        main([str(model["export"]), str(f), "--hotword-bias", "on"])


def test_a_segment_that_fails_to_decode_fails_its_own_input_only(model, monkeypatch):
    """A batch holding several inputs' segments: one that cannot be decoded marks its own input, the others are
    transcribed, in order, and nothing hangs."""
    asr = model["asr"]
    x = model["utts"][0]["audio"]
    poison = np.concatenate([x, np.zeros(1234, np.float32)])  # a length that marks the bad one
    real = asr.decode_audio

    def decode(audios, *a, **k):
        if any(len(v) == len(poison) for v in audios):
            raise UserError("this segment cannot be decoded")
        return real(audios, *a, **k)

    monkeypatch.setattr(asr, "decode_audio", decode)
    got = list(asr.iter_transcribe([x, poison, x, x], batch_size=4))
    assert [t.error for t in got] == [None, "this segment cannot be decoded", None, None]
    assert got[0].text == got[2].text == got[3].text
    with pytest.raises(UserError, match="cannot be decoded"):
        asr.transcribe([x, poison])


def test_a_few_milliseconds_left_after_a_forced_cut_still_decode():
    from entropy_asr.inference.recognizer import _at_least

    assert len(_at_least(np.ones(50, np.float32))) == 1600 and _at_least(np.ones(50, np.float32))[:50].all()
    assert len(_at_least(np.ones(2000, np.float32))) == 2000


# ---- long-form ---------------------------------------------------------------------------------------------------
class OracleRecognizer(Recognizer):
    """The Recognizer's long-form path with a decoder that knows the recording: it checks that each segment's audio
    is the recording's at its offset, and answers with the texts of the utterances the segment holds."""

    def __init__(self, audio: np.ndarray, truth: list, max_segment_s: float = 20.0):
        self.audio, self.truth, self.max_segment_s, self.calls = audio, truth, max_segment_s, []

    def decode_audio(self, audios, timestamps=True, guards=True, offsets=None):
        self.calls.append(len(audios))
        out = []
        for a, o in zip(audios, offsets, strict=True):
            first = round(o * SAMPLE_RATE)
            assert np.abs(self.audio[first:first + len(a)] - a).max() < 1e-4  # (FLAC's 16 bits)
            end = o + len(a) / SAMPLE_RATE
            texts = [text for s, e, text in self.truth if min(e, end) - max(s, o) > 0.5 * (e - s)]  # mostly inside
            out.append(SegmentResult(o, end, " ".join(texts)))
        return out


def test_ten_minutes_long_form_keeps_every_utterance_in_order_with_its_time(model, tmp_path):
    """No silent truncation: every utterance of a 10-minute recording (pauses, noise) comes back, once, in order,
    from a segment starting within 0.5 s of it; segments are decoded in batches across the recording."""
    x, truth = recording(model["many"], 600.0)
    path = tmp_path / "long.flac"
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_16")
    oracle = OracleRecognizer(sf.read(path, dtype="float32")[0], truth)
    (t,) = oracle.transcribe(path, batch_size=8)
    assert t.duration == pytest.approx(len(x) / SAMPLE_RATE, abs=1e-3) and len(t.segments) == len(truth)
    assert t.text == join_texts(text for _, _, text in truth)
    for (start, end, text), seg in zip(truth, t.segments, strict=True):
        assert seg.text == text and abs(seg.start - start) < 0.5 and seg.end >= end - 0.05
        assert seg.end - seg.start <= oracle.max_segment_s
    assert max(oracle.calls) == 8 and sum(oracle.calls) == len(truth)


def test_long_form_with_the_model_decodes_each_segment_as_alone(model, tmp_path):
    """A recording past the training maximum: cut at its pauses, each segment's text is the model's text of that
    segment decoded alone, the timestamps are in the recording's time."""
    asr = model["asr"]
    x, truth = recording(model["many"], asr.max_segment_s + 8)
    (t,) = asr.transcribe(x, batch_size=4, guards=False)
    assert len(t.segments) == len(truth)
    for (start, _end, _), seg in zip(truth, t.segments, strict=True):
        assert abs(seg.start - start) < 0.5
        alone = asr.decode_audio([x[round(seg.start * SAMPLE_RATE):round(seg.end * SAMPLE_RATE)]], guards=False,
                                 offsets=[seg.start])[0]
        assert seg.text == alone.text
        assert all(seg.start <= u.start < u.end <= seg.end + 0.04 for u in seg.units)
    assert t.text == join_texts(s.text for s in t.segments)


def test_a_long_recording_of_noise_only_is_empty(model):
    rng = np.random.default_rng(1)
    (t,) = model["asr"].transcribe(rng.standard_normal(30 * SAMPLE_RATE).astype(np.float32) * 1e-4)
    assert t.text == "" and t.language == "none" and t.duration == pytest.approx(30.0)


# ---- streaming ---------------------------------------------------------------------------------------------------
def test_streaming_features_equal_the_whole_recordings(model):
    asr = model["asr"]
    x = model["utts"][0]["audio"]
    session = StreamSession(asr, chunk_s=19.2)  # a chunk longer than the audio: nothing is encoded yet
    rng = np.random.default_rng(0)
    i = 0
    while i < len(x):
        n = int(rng.integers(1, 3000))
        assert session.accept(x[i:i + n]) == []
        i += n
    whole = asr.features(x)
    assert session.n_feats == len(whole) and torch.allclose(session.feats, whole, atol=1e-5)


def test_streaming_with_one_chunk_equals_offline_decoding(model):
    asr = model["asr"]
    for u in model["utts"][:3]:
        offline = asr.decode_audio([u["audio"]])[0]
        events = list(stream(asr, u["audio"], chunk_s=19.2))  # one chunk (the utterances are shorter)
        assert [e.final for e in events] == [True] and events[0].text == offline.text
        assert [(v.text, v.start, v.end) for v in events[0].units] == [(v.text, v.start, v.end) for v in offline.units]


def test_streaming_encoder_matches_the_chunk_masked_offline_encoder(exports):
    """With a causal-conv encoder and the whole past in the window, streaming's frames are exactly those of the
    offline encoder under the same chunk mask: the chunking, the look-ahead and the left context are right."""
    from entropy_asr.model.encoder import EncoderConfig
    from entropy_asr.model.llm import LLMConfig
    from entropy_asr.model.speech_llm import AdapterConfig, CTCHeadConfig, DecodeConfig, PromptConfig, SpeechLLM
    from tests.stage_helpers import ENC

    torch.manual_seed(0)
    net = SpeechLLM(EncoderConfig(**{**ENC, "num_layers": 2, "causal_conv": True}), CTCHeadConfig(dropout=0.0),
                    AdapterConfig(), LLMConfig(name_or_path=str(exports["llm"])), PromptConfig(system=None))
    asr = Recognizer(net, (torch.zeros(80), torch.ones(80) * 0.2), DecodeConfig())
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(5 * SAMPLE_RATE) * 0.1).astype(np.float32)
    session = StreamSession(asr, chunk_s=0.64, left_chunks=100, partial_every=10_000, endpoint_s=1000.0)
    for i in range(0, len(x), 700):
        session.accept(x[i:i + 700])
    got = torch.cat(session.utt_frames)  # the chunks complete so far
    feats = asr.features(x)[None]
    want, _ = net.encode(feats, torch.tensor([feats.shape[1]]), chunk_size=16, left_chunks=-1)
    assert got.shape[0] >= 96 and torch.allclose(got, want[0, :got.shape[0]], atol=1e-5)
    # a bounded window keeps bounded state: the features it holds, whatever the stream's length
    short = StreamSession(asr, chunk_s=0.64, left_chunks=2, partial_every=10_000, endpoint_s=1000.0)
    for i in range(0, len(x), 700):
        short.accept(x[i:i + 700])
        assert len(short.feats) <= 4 * 16 * 3 + 3 + 64 + 4


def test_streaming_partials_then_finals_and_endpoints(model, monkeypatch):
    """The CTC head hears speech in chunks 0-4 and 9-12 (and blank elsewhere): an utterance ends 0.8 s into each
    blank stretch (the second blank chunk), so two finals, at 4.48 s and 9.6 s; partials come before them."""
    asr = model["asr"]
    x, _truth = recording(model["many"][:4], 12.0)
    speech = iter([True] * 5 + [False] * 4 + [True] * 4 + [False] * 100)  # one entry per 640 ms chunk

    def heard(frames):  # called once per chunk (timestamps off)
        lp = torch.full((*frames.shape[:2], 100), -30.0)
        lp[..., 5 if next(speech) else 0] = 0.0
        return lp

    monkeypatch.setattr(asr.net, "ctc_log_probs", heard)
    events = list(stream(asr, x, chunk_s=0.64, left_chunks=4, timestamps=False))
    finals = [e for e in events if e.final]
    assert [(f.start, f.end) for f in finals] == [(0.0, pytest.approx(7 * 0.64)), (pytest.approx(7 * 0.64),
                                                                                 pytest.approx(15 * 0.64))]
    assert all(a.audio_s <= b.audio_s for a, b in itertools.pairwise(events))
    assert all(e.start <= e.end <= len(x) / SAMPLE_RATE + 0.04 for e in events)
    partials = [e for e in events if not e.final]
    assert all(p.text for p in partials) and all(a.text != b.text for a, b in itertools.pairwise(partials)
                                                  if a.start == b.start)  # only news
    assert final_text(events) == join_texts(e.text for e in finals)
    with pytest.raises(UserError, match="multiple of 40 ms"):
        StreamSession(asr, chunk_s=0.05)
    with pytest.raises(UserError, match="left_chunks"):
        StreamSession(asr, left_chunks=2.5)


def test_stream_blocks_of_any_pcm_type_and_a_finished_session(model):
    asr = model["asr"]
    x = model["utts"][0]["audio"]
    want = final_text(stream(asr, x))
    pcm16 = np.round(x * 32767).astype(np.int16)
    assert final_text(stream(asr, [pcm16[i:i + 999] for i in range(0, len(x), 999)])) == want
    assert final_text(stream(asr, [np.stack([x, x], 1)])) == want  # (samples, channels)
    assert final_text(stream(asr, model["files"][model["utts"][0]["key"]])) == want  # a path
    session = asr.stream_session()
    session.accept(x)
    session.finish()
    with pytest.raises(UserError, match="after finish"):
        session.accept(x)
    with pytest.raises(UserError, match="NaN"):
        asr.stream_session().accept(np.full(100, np.nan, np.float32))


def test_a_stream_the_ctc_head_hears_nothing_in_sends_no_finals(model, monkeypatch):
    """45 s the CTC head calls blank throughout: no partials, no empty finals each time the utterance reaches the
    training maximum, nothing at the end either."""
    asr = model["asr"]
    blank = torch.full((1, 1, 100), -30.0)
    blank[..., 0] = 0.0
    monkeypatch.setattr(asr.net, "ctc_log_probs", lambda frames: blank.expand(*frames.shape[:2], -1))
    rng = np.random.default_rng(0)
    session = asr.stream_session(timestamps=False)
    events = [e for i in range(45) for e in session.accept(rng.standard_normal(SAMPLE_RATE).astype(np.float32) * .01)]
    assert events == [] and len(torch.cat(session.utt_blank)) < asr.max_segment_s / 0.04  # reset on the way
    assert session.finish() == []


# ---- guards ------------------------------------------------------------------------------------------------------
def test_cut_repetition_on_words_and_characters():
    assert cut_repetition("I said the cat the cat the cat the cat sat", 4, 4) == "I said the cat"
    assert cut_repetition("好的好的好的好的", 4, 4) == "好的"
    assert cut_repetition("no no no", 4, 4) is None  # three copies: below the guard
    assert cut_repetition("a b c d e f", 4, 4) is None
    assert cut_repetition("Go, go, go, go!", 4, 4) == "Go"
    # a hypothesis that ended by itself keeps what follows; the loop keeps min_repeats - 1 copies
    assert cut_repetition("对对对对，我知道了，明天见。", 4, 4, ended=True) == "对对对，我知道了，明天见。"
    assert cut_repetition("that is very very very very very good news", 4, 4, ended=True) == \
        "that is very very very good news"


def test_repetition_stop_fires_per_row_on_loops_of_16_tokens_or_more():
    stop = RepetitionStop(4)
    loop = [5, 6] * 8  # 16 tokens
    number = [7, 8, 9, 1, 1, 1, 1, 1, 1, 1, 9, 9, 9, 9, 3, 2]  # a long number's digits: 7 ones are not a runaway
    ids = torch.tensor([loop, list(range(16)), number, [4] * 16])
    assert stop(ids, None).tolist() == [True, False, False, True]
    assert stop(ids[:, :12], None).tolist() == [False, False, False, False]  # under 16 tokens: never
    assert stop.fired_at.tolist() == [16, -1, -1, 16]  # when it first fired


@pytest.mark.parametrize("raw,ended,guards,want", [
    ("the cat the cat the cat the cat the", False, True, ("the cat", "repetition")),
    ("the cat the cat the cat the cat the", False, False, ("the cat the cat the cat the cat the", "length")),
    ("a long sentence cut", False, True, ("a long sentence cut", "length")),
    ("a sentence.", True, True, ("a sentence.", None)),
    ("two\nlines", True, True, ("two lines", None)),
    ("对对对对，我知道了。", True, True, ("对对对，我知道了。", "repetition")),
    ("对对对对，我知道了。", True, False, ("对对对对，我知道了。", None)),
])
def test_guards_report_what_they_cut(model, monkeypatch, raw, ended, guards, want):
    monkeypatch.setattr(rec, "generate_ended", lambda *a, **k: [(raw, ended)])
    asr = model["asr"]
    speech = torch.zeros(1, 3, asr.net.llm.get_input_embeddings().embedding_dim)
    assert asr._generate(speech, torch.tensor([3]), [1.0], guards) == [want]


# ---- output formats ----------------------------------------------------------------------------------------------
def test_srt_cues_follow_the_word_times_and_keep_punctuation():
    words = ["Hello", "there,", "my", "friend.", "This", "is", "a", "rather", "long", "sentence", "that", "will",
             "not", "fit", "on", "one", "line."]
    units = [UnitTime(w.strip(",."), 1.0 + i * 0.5, 1.0 + i * 0.5 + 0.4, -0.1) for i, w in enumerate(words)]
    t = Transcript("x", 10.0, [SegmentResult(1.0, 9.0, " ".join(words), None, units)])
    got = cues(t)
    assert " ".join(text for _, _, text in got) == " ".join(words)  # every word, punctuation kept
    assert all(len(text) <= 42 for _, _, text in got) and len(got) >= 2
    assert got[0][0] == 1.0 and all(a < b for a, b, _ in got)
    assert srt_time(3723.5) == "01:02:03,500" and to_srt(t).startswith("1\n00:00:01,000 --> ")
    zh = Transcript("y", 3.0, [SegmentResult(0.0, 3.0, "你好。", None, [UnitTime("你", 0.1, 0.3, 0.0),
                                                                         UnitTime("好", 0.3, 0.6, 0.0)])])
    assert cues(zh) == [(0.1, 0.6, "你好。")]
    assert join_texts(["你好", "世界", "hello", "世界"]) == "你好世界 hello 世界"
    assert join_texts(["你好。", "我们走吧。", "OK."]) == "你好。我们走吧。 OK."  # full-width punctuation: no space
