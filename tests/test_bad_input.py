"""Bad values fail at once with one line naming the file or key: optimizer settings, CMVN, index.json."""

from __future__ import annotations

import json
import shutil

import pytest

from entropy_asr.data.audio import load_cmvn
from entropy_asr.data.shards import read_index
from entropy_asr.errors import UserError, one_line
from lightning_modules.base import OptimConfig


@pytest.mark.parametrize("bad", [{"lr": float("nan")}, {"lr": float("inf")}, {"lr": 0.0}, {"weight_decay": -5.0},
                                 {"weight_decay": float("nan")}, {"betas": (0.9, 1.5)}, {"eps": 0.0},
                                 {"lr_scale": {"encoder": 0.0}}, {"lr_scale": {"encoder": float("inf")}},
                                 {"lr_scale": {"encoder": "10"}}, {"lr_scale": {"encodr": 10.0}}])
def test_optimizer_settings_that_cannot_train_are_refused(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=f"optim.{key}"):
        OptimConfig(**bad)


def test_cmvn_with_nan_is_refused_naming_the_file(tiny_corpus, tmp_path):
    d = json.loads((tiny_corpus / "train" / "cmvn.json").read_text())
    d["sum"][3] = float("nan")
    bad = tmp_path / "cmvn.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=f"{bad}: the CMVN statistics hold NaN"):
        load_cmvn(bad)
    assert load_cmvn(tiny_corpus / "train" / "cmvn.json")[0].isfinite().all()


@pytest.mark.parametrize("name", ["../../other/shard-000000.tar", "/etc/shard.tar", "..", ""])
def test_an_index_naming_shards_outside_its_dir_is_refused(tiny_corpus, tmp_path, name):
    d = tmp_path / "set"
    shutil.copytree(tiny_corpus / "dev", d)
    index = json.loads((d / "index.json").read_text())
    index["shards"][0]["name"] = name
    (d / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="shard names must be file names inside"):
        read_index(d)


def test_a_missing_test_dir_is_reported_before_training_starts(tiny_corpus, tmp_path):
    from datamodules.speech import SpeechDataModule

    data = SpeechDataModule(train_dir=str(tiny_corpus / "train"), val_dir=str(tiny_corpus / "dev"),
                            test_dirs=[str(tiny_corpus / "test"), str(tmp_path / "tset")], batches_per_epoch=1)
    with pytest.raises(FileNotFoundError, match=r"data.init_args.test_dirs\[1\] = .*tset: no index.json"):
        data.setup("fit")


def test_a_digits_only_transcript_without_a_language_is_skipped_and_counted_not_made_silent():
    import numpy as np

    from entropy_asr.data.shards import SkipCounter, prepare_utterance

    skips = SkipCounter()
    x = np.zeros(16000, np.float32)
    for text in ("911", "3.14", "100%"):
        assert prepare_utterance(f"k{text}", x, 16000, text, None, "s", "t", skips, max_duration=30.0) is None
    assert skips["no_language"] == 3
    kept = prepare_utterance("k4", x, 16000, "911", "en", "s", "t", skips, max_duration=30.0)
    assert kept is not None and kept.language == "en" and kept.text == "911"  # a given language keeps it
    silent = prepare_utterance("k5", x, 16000, "", None, "s", "t", skips, max_duration=30.0, allow_empty=True)
    assert silent.language == "none"


def test_a_training_set_where_nothing_survives_loading_fails_instead_of_spinning(tiny_corpus, monkeypatch):
    from datamodules.speech import SpeechDataModule
    from entropy_asr.data import pipeline
    from entropy_asr.data.pipeline import BatchConfig

    monkeypatch.setattr(pipeline, "MAX_DROPPED_IN_ROW", 100)
    # every clip is longer than max_duration: each is skipped, and the endless stream would never give a batch
    data = SpeechDataModule(train_dir=str(tiny_corpus / "train"), val_dir=str(tiny_corpus / "dev"), num_workers=0,
                            batches_per_epoch=2, batch=BatchConfig(max_batch_seconds=0.5, max_duration=0.5))
    data.setup("fit")
    with pytest.raises(UserError, match=r"the last 100 samples were all skipped .*too_long.*max_duration \(0.5 s\)"):
        next(iter(data.train_dataloader()))


def _cut(path, keep: float) -> None:
    """Keep the first `keep` share of a file's bytes (a copy that stopped early)."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_a_truncated_wav_is_skipped_and_counted_not_imported_with_its_whole_transcript(tmp_path):
    from entropy_asr.data.audio import TruncatedAudioError, read_audio
    from entropy_asr.data.prepare import prepare, read_manifest
    from tests.conftest import write_audio

    for name in ("cut.wav", "ok.wav", "cut.flac"):
        write_audio(tmp_path / name, 1.0)
    _cut(tmp_path / "cut.wav", 0.33)  # the header still says 1 s
    _cut(tmp_path / "cut.flac", 0.5)
    with pytest.raises(TruncatedAudioError, match=r"cut\.wav: truncated: its header declares 32000 bytes"):
        read_audio(tmp_path / "cut.wav")
    assert len(read_audio(tmp_path / "ok.wav")[0]) == 16000
    with pytest.raises(TruncatedAudioError, match=r"ok\.wav: the segment \[0.2, 1.6\] s ends past the audio"):
        read_audio(tmp_path / "ok.wav", 0.2, 1.6)
    assert len(read_audio(tmp_path / "ok.wav", 0.5, 1.3)[0]) == 8000  # within Kaldi's 0.5 s overshoot: clipped
    lines = [{"audio": n, "text": "hello there", "id": n.replace(".", "_"), "language": "en"}
             for n in ("cut.wav", "ok.wav", "cut.flac")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    index = prepare(read_manifest(tmp_path / "m.jsonl"), tmp_path / "out", source="jsonl", num_workers=1)
    assert index["utterances"] == 1
    assert index["skipped"]["truncated_audio"] == 1 and index["skipped"]["corrupt_audio"] == 1


def test_kaldi_repeated_ids_are_refused_and_transcripts_without_audio_counted(tmp_path):
    from entropy_asr.data.prepare import ManifestError, read_kaldi
    from entropy_asr.data.shards import SkipCounter
    from tests.conftest import write_audio

    d = tmp_path / "k"
    d.mkdir()
    for r in ("r1", "r2"):
        write_audio(tmp_path / f"{r}.wav", 1.0)
    scp = f"r1 {tmp_path / 'r1.wav'}\nr2 {tmp_path / 'r2.wav'}\n"
    (d / "wav.scp").write_text(scp + f"r1 {tmp_path / 'r2.wav'}\n")
    (d / "text").write_text("r1 one\nr2 two\nr3 three\n")
    with pytest.raises(ManifestError, match=r"wav\.scp:3: id 'r1' repeats line 1"):
        read_kaldi(d)
    (d / "wav.scp").write_text(scp)
    (d / "text").write_text("r1 one\nr2 two\nr3 three\nr1 uno\n")
    with pytest.raises(ManifestError, match=r"text:4: id 'r1' repeats line 1"):
        read_kaldi(d)
    (d / "text").write_text("r1 one\nr2 two\nr3 three\n")
    skips = SkipCounter()
    assert [r.key for r in read_kaldi(d, skips)] == ["r1", "r2"]
    assert skips == {"no_audio": 1}  # r3: a transcript with no recording is counted
    (d / "segments").write_text("s1 r1 0 0.5\ns1 r2 0 0.5\n")
    with pytest.raises(ManifestError, match=r"segments:2: id 's1' repeats line 1"):
        read_kaldi(d)
    (d / "segments").write_text("s1 r1 0 zero\n")
    (d / "text").write_text("s1 one\n")
    with pytest.raises(ManifestError, match=r"segments:1: start and end must be seconds"):
        read_kaldi(d)


@pytest.mark.parametrize("layout", ["jsonl", "kaldi"])
def test_a_transcript_file_that_is_not_utf8_names_its_line(tmp_path, layout):
    from entropy_asr.data.prepare import read_kaldi, read_manifest
    from tests.conftest import write_audio

    write_audio(tmp_path / "a.wav", 1.0)
    gbk = "今天天气".encode("gb18030")
    if layout == "jsonl":
        path = tmp_path / "m.jsonl"
        path.write_bytes(b'{"audio": "a.wav", "text": "ok"}\n{"audio": "a.wav", "text": "' + gbk + b'"}\n')
        call = lambda: read_manifest(path)
    else:
        path = tmp_path / "text"
        (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\n")
        path.write_bytes(b"a " + gbk + b"\n")
        call = lambda: read_kaldi(tmp_path)
    with pytest.raises(UserError, match=rf"{path.name}:{2 if layout == 'jsonl' else 1}: not UTF-8 "
                                            r"\(byte 0x[0-9a-f]{2} at column \d+\); convert the file to UTF-8"):
        call()


@pytest.mark.parametrize("field", ['"start": "zero"', '"end": 0.1, "start": 0.5', '"end": NaN'])
def test_a_manifest_with_bad_segment_times_names_the_line(tmp_path, field):
    from entropy_asr.data.prepare import ManifestError, read_manifest
    from tests.conftest import write_audio

    write_audio(tmp_path / "a.wav", 1.0)
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "text": "ok", ' + field + "}\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: "):
        read_manifest(path)


def _garbled_copy(src, dst):
    """A copy of a shard dir whose every shard is unreadable (same names, garbage bytes)."""
    shutil.copytree(src, dst)
    for s in read_index(dst)["shards"]:
        (dst / s["name"]).write_bytes(b"not a tar " * 100)
    return dst


def test_a_training_stream_of_unreadable_shards_fails_instead_of_spinning(tiny_corpus, tmp_path):
    from datamodules.speech import SpeechDataModule
    from entropy_asr.data.benchmark import measure

    bad = _garbled_copy(tiny_corpus / "train", tmp_path / "train")
    data = SpeechDataModule(train_dir=str(bad), val_dir=str(tiny_corpus / "dev"), num_workers=1, batches_per_epoch=2,
                            nonspeech_dirs=[])
    data.setup("fit")
    with pytest.raises(UserError, match=r"the last 100 shards read were all unreadable .*re-copy or re-prepare") as e:
        next(iter(data.train_dataloader()))  # raised in a loader worker, re-raised here
    assert one_line(e.value).startswith("training data: the last 100 shards read were all unreadable")
    with pytest.raises(UserError, match=r"the last 100 shards read were all unreadable"):
        measure(bad, seconds=1.0)  # the data benchmark reads the same stream


def test_a_shard_dir_listing_no_shards_says_so_not_to_reshard(tiny_corpus, tmp_path):
    from entropy_asr.data.benchmark import main

    empty = tmp_path / "empty"
    shutil.copytree(tiny_corpus / "dev", empty)
    index = json.loads((empty / "index.json").read_text())
    (empty / "index.json").write_text(json.dumps({**index, "shards": []}))
    with pytest.raises(UserError, match=r"empty: index.json lists no shards .*prepare the set again") as e:
        main(["--data", str(empty), "--seconds", "1"])
    assert "shard-size" not in str(e.value)


def test_streamed_wav_lengths_and_kaldi_open_ended_segments_are_not_refused(tmp_path):
    import struct

    from entropy_asr.data.audio import read_audio
    from entropy_asr.data.prepare import read_kaldi
    from tests.conftest import write_audio

    wav = write_audio(tmp_path / "piped.wav", 1.0)
    data = bytearray(wav.read_bytes())
    at = data.index(b"data") + 4
    for unknown in (0x7FFFF000, 0xFFFFFFFF):  # SoX to a pipe, other streaming writers: the length is unknown
        data[at:at + 4] = struct.pack("<I", unknown)
        wav.write_bytes(bytes(data))
        assert len(read_audio(wav)[0]) == 16000
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text(f"r1 {tmp_path / 'ok.wav'}\n")
    write_audio(tmp_path / "ok.wav", 1.0)
    (d / "segments").write_text("s1 r1 0.25 -1\n")  # Kaldi: to the end of the recording
    (d / "text").write_text("s1 hello\n")
    (rec,) = read_kaldi(d)
    assert rec.start == 0.25 and rec.end is None and len(read_audio(rec.audio, rec.start, rec.end)[0]) == 12000
