"""Importers on fixtures built in each real layout, the shared shard writer, resumption, bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from entropy_asr.data.audio import CMVNStats, fbank, resample
from entropy_asr.data.prepare import (
    ManifestError,
    main,
    prepare,
    read_aishell,
    read_kaldi,
    read_librispeech,
    read_manifest,
)
from entropy_asr.data.shards import SkipCounter, read_index
from entropy_asr.errors import run_main
from tests.conftest import tone, write_audio


def read_shards(out: Path) -> dict[str, dict]:
    """All utterances of a shard dir: key -> {"json": dict, "audio": (samples, sr)}."""
    utts: dict[str, dict] = {}
    for s in read_index(out)["shards"]:
        with tarfile.open(out / s["name"]) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                d = utts.setdefault(key, {})
                if ext == "json":
                    d["json"] = json.loads(data)
                else:
                    d["audio"] = sf.read(io.BytesIO(data), dtype="float32")
    return utts


def make_librispeech(root: Path) -> Path:
    split = root / "dev-clean"
    for spk, chap, n in (("84", "121123", 3), ("174", "50561", 2)):
        d = split / spk / chap
        lines = []
        for i in range(n):
            utt = f"{spk}-{chap}-{i:04d}"
            write_audio(d / f"{utt}.flac", 1.0 + 0.25 * i, seed=i)
            lines.append(f"{utt} HELLO WORLD NUMBER {i} IT'S FINE")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return split


def make_aishell(root: Path) -> Path:
    base = root / "data_aishell"
    lines = []
    for spk in ("S0724", "S0725"):
        for i in range(2):
            utt = f"BAC009{spk}W{i:04d}"
            write_audio(base / "wav" / "dev" / spk / f"{utt}.wav", 1.2, seed=i)
            lines.append(f"{utt} 而 对 楼市 成交 抑制 作用 最 大 的")
    write_audio(base / "wav" / "dev" / "S0725" / "BAC009S0725W9999.wav", 1.0)  # audio without a transcript
    write_audio(base / "wav" / "train" / "S0002" / "BAC009S0002W0001.wav", 1.0)
    (base / "transcript").mkdir(parents=True)
    (base / "transcript" / "aishell_transcript_v0.8.txt").write_text("\n".join(lines) + "\n")
    return base


def make_kaldi(root: Path) -> Path:
    d = root / "kaldi"
    d.mkdir()
    write_audio(root / "rec1.wav", 4.0, sr=8000)  # 8 kHz: must be resampled and counted
    write_audio(root / "rec2.wav", 1.5)
    (d / "wav.scp").write_text(f"rec1 {root / 'rec1.wav'}\nrec2 {root / 'rec2.wav'}\n")
    (d / "segments").write_text("rec1-a rec1 0.0 1.5\nrec1-b rec1 2.0 3.5\nrec2-a rec2 0.1 1.2\nrec2-x rec2 0 1\n")
    (d / "text").write_text("rec1-a 今天 天气 很好\nrec1-b hello 世界\nrec2-a good morning\n")
    (d / "utt2spk").write_text("rec1-a spk1\nrec1-b spk1\nrec2-a spk2\n")
    return d


def test_librispeech_roundtrip(tmp_path):
    split = make_librispeech(tmp_path)
    records = read_librispeech(split)
    assert len(records) == 5 and {r.speaker for r in records} == {"84", "174"}
    out = tmp_path / "out"
    index = prepare(records, out, source="librispeech:dev-clean", shard_size=2, num_workers=2)
    assert index["utterances"] == 5 and len(index["shards"]) == 3
    assert index["hours"] == pytest.approx((3 * 1.25 + 2 * 1.125) / 3600, abs=1e-5)
    utts = read_shards(out)
    meta = utts["84-121123-0001"]["json"]
    assert meta["text"] == "HELLO WORLD NUMBER 1 IT'S FINE"
    assert meta["norm_text"] == "hello world number one it is fine"  # Whisper keeps a lone 1 as "one"
    assert meta["language"] == "en" and meta["speaker"] == "84" and meta["source"] == "librispeech:dev-clean"
    assert meta["duration"] == pytest.approx(1.25) and meta["phones"][:3] == ["HH", "AH0", "L"]
    samples, sr = utts["84-121123-0001"]["audio"]
    assert sr == 16000
    np.testing.assert_allclose(samples, tone(1.25, seed=1), atol=1.0 / 32767)  # 16-bit FLAC round trip
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temp files


def test_aishell_split_and_spaces(tmp_path):
    root = make_aishell(tmp_path)
    with pytest.raises(ManifestError, match="--split.*dev, train"):
        read_aishell(root, None)
    skips = SkipCounter()
    records = read_aishell(root, "dev", skips)
    assert len(records) == 4 and skips == {"no_transcript": 1}  # audio without a transcript line: counted
    assert records[0].text == "而对楼市成交抑制作用最大的" and records[0].speaker == "S0724"
    out = tmp_path / "out"
    index = prepare(records, out, source="aishell", num_workers=1, pre_skipped=dict(skips))
    assert index["skipped"] == {"no_transcript": 1}
    meta = next(iter(read_shards(out).values()))["json"]
    assert meta["language"] == "zh" and meta["norm_text"] == "而对楼市成交抑制作用最大的"
    assert meta["phones"][:4] == ["er2", "d", "uei4", "l"]


def test_kaldi_segments_resample_and_speakers(tmp_path):
    d = make_kaldi(tmp_path)
    skips = SkipCounter()
    records = read_kaldi(d, skips)
    assert [r.key for r in records] == ["rec1-a", "rec1-b", "rec2-a"]
    assert skips == {"no_transcript": 1}  # rec2-x
    out = tmp_path / "out"
    index = prepare(records, out, source="kaldi", num_workers=1)
    assert index["skipped"]["resampled"] == 2  # both 8 kHz segments
    utts = read_shards(out)
    assert utts["rec1-b"]["json"]["language"] == "mix" and utts["rec1-b"]["json"]["speaker"] == "spk1"
    assert utts["rec1-a"]["json"]["duration"] == pytest.approx(1.5, abs=1e-3)
    samples, _ = utts["rec1-a"]["audio"]
    expected = resample(tone(4.0, sr=8000)[:12000], 8000, 16000)
    np.testing.assert_allclose(samples, expected, atol=2e-4)


def test_kaldi_rejects_pipes(tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text("r1 sox a.wav -t wav - |\n")
    (d / "text").write_text("r1 hi\n")
    with pytest.raises(ManifestError, match=r"wav.scp:1: piped commands"):
        read_kaldi(d)


def test_jsonl_missing_file_names_file_and_line(tmp_path):
    write_audio(tmp_path / "a.wav", 1.0)
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav", "text": "hi"}\n\n{"audio": "nope.wav", "text": "x"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: audio file .*nope\.wav.* does not exist"):
        read_manifest(m)
    m.write_text('{"audio": "a.wav"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: missing key 'text'"):
        read_manifest(m)
    m.write_text('{"audio": "a.wav", "text": "hi"\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: not valid JSON"):
        read_manifest(m)


def test_cli_missing_file_exits_with_message(tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "gone.flac", "text": "x"}\n')
    with pytest.raises(SystemExit) as e:
        run_main(main, ["jsonl", str(m), "--out", str(tmp_path / "o")])  # as `python -m entropy_asr.data.prepare` runs
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "m.jsonl:1" in err and "Traceback" not in err


def test_bad_inputs_are_skipped_and_counted(tmp_path):
    write_audio(tmp_path / "ok.wav", 1.0)
    write_audio(tmp_path / "ok2.flac", 1.0, sr=22050)
    write_audio(tmp_path / "long.wav", 5.0)
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC" + b"\x00garbage" * 50)
    lines = [
        {"audio": "ok.wav", "text": "好的", "id": "ok"},
        {"audio": "ok2.flac", "text": "fine", "id": "ok2"},
        {"audio": "long.wav", "text": "too long", "id": "long"},
        {"audio": "corrupt.flac", "text": "broken", "id": "corrupt"},
        {"audio": "ok.wav", "text": "  ", "id": "empty"},
        {"audio": "ok.wav", "text": "", "id": "empty_zh", "language": "zh"},  # a language does not excuse it
    ]
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    out = tmp_path / "out"
    index = prepare(read_manifest(m), out, source="jsonl", max_duration=3.0, num_workers=1)
    assert index["utterances"] == 2
    assert index["skipped"] == {"corrupt_audio": 1, "empty_text": 2, "resampled": 1, "too_long": 1}
    assert set(read_shards(out)) == {"ok", "ok2"}


def test_resume_skips_finished_shards_and_rejects_other_input(tmp_path):
    split = make_librispeech(tmp_path)
    out = tmp_path / "out"
    first = prepare(read_librispeech(split), out, source="ls", shard_size=2, num_workers=1)
    kept = out / "shard-000000.tar"
    before = kept.stat().st_mtime_ns
    blob_1 = (out / "shard-000001.tar").read_bytes()
    (out / "shard-000001.tar").unlink()  # as if the job died while writing shard 1
    (out / "shard-000001.stats.json").unlink()
    (out / "shard-000002.stats.json").unlink()  # tar renamed, stats not yet written: redo
    again = prepare(read_librispeech(split), out, source="ls", shard_size=2, num_workers=1)
    assert kept.stat().st_mtime_ns == before  # finished shard untouched
    assert (out / "shard-000001.tar").read_bytes() == blob_1  # redone identically
    assert again == first
    with pytest.raises(ManifestError, match="different input"):
        prepare(read_librispeech(split)[:3], out, source="ls", shard_size=2, num_workers=1)


def test_cmvn_matches_direct_computation(tmp_path):
    split = make_librispeech(tmp_path)
    out = tmp_path / "out"
    prepare(read_librispeech(split), out, source="ls", shard_size=2, num_workers=2)
    cmvn = json.loads((out / "cmvn.json").read_text())
    feats = torch.cat([fbank(u["audio"][0]) for u in read_shards(out).values()]).double()
    assert cmvn["count"] == feats.shape[0]
    np.testing.assert_allclose(cmvn["mean"], feats.mean(0).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cmvn["std"], feats.std(0, unbiased=False).numpy(), rtol=1e-5, atol=1e-5)
    assert CMVNStats.from_json(cmvn).count == feats.shape[0]


def test_fbank_floors_digital_silence_at_the_dither_level(tmp_path):
    from entropy_asr.data.audio import FEATURE_VERSION, fbank_floor, load_cmvn

    silence = fbank(np.zeros(16000, np.float32))
    assert torch.equal(silence, fbank_floor().expand_as(silence))  # not log(eps) = -15.9
    assert fbank_floor().min() > -5  # unit-variance noise on the int16 scale
    loud = fbank(np.sin(np.arange(16000) / 3).astype(np.float32) * 0.5)
    assert (loud >= fbank_floor()).all() and loud.max() > fbank_floor().max() + 5
    stats = CMVNStats.zeros()
    stats.add(loud)
    d = stats.to_json()
    assert d["feature"]["version"] == FEATURE_VERSION
    (tmp_path / "cmvn.json").write_text(json.dumps(d))
    load_cmvn(tmp_path / "cmvn.json")
    d["feature"]["version"] = 1
    (tmp_path / "old.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="feature version 1.*rebuild the shard dir"):
        load_cmvn(tmp_path / "old.json")


def write_manifest(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    return path


def test_nonspeech_flag_writes_a_set_of_language_none(tmp_path, capsys):
    for i in range(3):
        write_audio(tmp_path / f"n{i}.wav", 1.0, seed=i)
    m = write_manifest(tmp_path / "noise.jsonl", [
        {"audio": "n0.wav", "id": "n0"},  # no "text": allowed with --nonspeech
        {"audio": "n1.wav", "text": None, "id": "n1"},  # null: no transcript either
        {"audio": "n2.wav", "text": "  ", "id": "n2", "language": "en"},  # --nonspeech overrides the language
    ])
    out = tmp_path / "out"
    index = main(["jsonl", str(m), "--nonspeech", "--out", str(out), "--workers", "1"])
    assert index["utterances"] == 3 and index["languages"] == {"none": 3} and index["skipped"] == {}
    assert read_index(out)["languages"] == {"none": 3}  # as written to index.json
    for key, u in read_shards(out).items():
        assert u["json"]["language"] == "none" and u["json"]["text"] == "" and u["json"]["phones"] == [], key
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["languages"] == {"none": 3}


def test_nonspeech_flag_rejects_a_transcript_naming_file_and_line(tmp_path):
    write_audio(tmp_path / "n.wav", 1.0)
    m = write_manifest(tmp_path / "noise.jsonl", [{"audio": "n.wav"}, {"audio": "n.wav", "text": "hello"}])
    with pytest.raises(ManifestError, match=r"noise\.jsonl:2: .*without speech.*--nonspeech.*'hello'"):
        read_manifest(m, nonspeech=True)
    with pytest.raises(SystemExit) as e:
        run_main(main, ["jsonl", str(m), "--nonspeech", "--out", str(tmp_path / "o"), "--workers", "1"])
    assert e.value.code == 2 and not (tmp_path / "o").exists()


def test_nonspeech_flag_is_jsonl_only(tmp_path, capsys):
    d = make_kaldi(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["kaldi", str(d), "--nonspeech", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--nonspeech takes a jsonl manifest" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_language_none_lines_mix_non_speech_into_a_speech_set(tmp_path):
    write_audio(tmp_path / "a.wav", 1.0)
    write_audio(tmp_path / "n.wav", 1.0, seed=3)
    m = write_manifest(tmp_path / "m.jsonl", [
        {"audio": "a.wav", "text": "hello world", "id": "speech"},
        {"audio": "n.wav", "text": "", "language": "none", "id": "quiet"},
    ])
    records = read_manifest(m)
    assert [(r.key, r.language) for r in records] == [("speech", None), ("quiet", "none")]
    index = prepare(records, tmp_path / "out", source="jsonl", num_workers=1)
    assert index["languages"] == {"en": 1, "none": 1} and index["skipped"] == {}
    utts = read_shards(tmp_path / "out")
    assert utts["quiet"]["json"]["language"] == "none" and utts["quiet"]["json"]["text"] == ""
    nulled = write_manifest(tmp_path / "m3.jsonl", [{"audio": "a.wav", "text": None, "id": "null"}])
    assert [r.text for r in read_manifest(nulled)] == [""]  # skipped as empty later, never the transcript "None"
    m2 = write_manifest(tmp_path / "m2.jsonl", [{"audio": "n.wav", "text": "not empty", "language": "none"}])
    with pytest.raises(ManifestError, match=r"m2\.jsonl:1: a clip without speech .*must have an empty \"text\""):
        read_manifest(m2)


def test_all_inputs_skipped_is_one_clear_error_and_leaves_no_dir(tmp_path, capsys):
    write_audio(tmp_path / "n.wav", 1.0)
    m = write_manifest(tmp_path / "m.jsonl", [{"audio": "n.wav", "text": "", "id": f"e{i}"} for i in range(2)])
    out = tmp_path / "made" / "out"
    with pytest.raises(SystemExit) as e:
        run_main(main, ["jsonl", str(m), "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "every one of the 2 inputs was skipped" in err[0] and "'empty_text': 2" in err[0]
    assert "--nonspeech" in err[0] and "\"language\": \"none\"" in err[0]
    assert not out.exists()  # created by prepare: removed again
    # A dir that existed before is the user's: kept, with whatever else it holds.
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ManifestError, match="every one of the 2 inputs was skipped") as ei:
        prepare(read_manifest(m), out, source="jsonl", num_workers=1)
    assert "--nonspeech" in str(ei.value)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]  # only prepare's own (empty) files went
    # so following the hint in the same dir works (not refused as "a different input", no stale empty shards)
    index = main(["jsonl", str(m), "--nonspeech", "--out", str(out), "--workers", "1"])
    assert index["languages"] == {"none": 2} and (out / "mine.txt").read_text() == "keep"


def test_all_inputs_skipped_without_empty_texts_has_no_nonspeech_hint(tmp_path):
    write_audio(tmp_path / "long.wav", 3.0)
    m = write_manifest(tmp_path / "m.jsonl", [{"audio": "long.wav", "text": "too long"}])
    with pytest.raises(ManifestError, match=r"skipped \(\{'too_long': 1\}\)$"):
        prepare(read_manifest(m), tmp_path / "out", source="jsonl", max_duration=1.0, num_workers=1)
    assert not (tmp_path / "out").exists()


def test_prepare_cli_subprocess_nonspeech(tmp_path):
    import subprocess
    import sys

    write_audio(tmp_path / "n.wav", 1.0)
    m = write_manifest(tmp_path / "m.jsonl", [{"audio": "n.wav", "text": ""}])
    cmd = [sys.executable, "-m", "entropy_asr.data.prepare", "jsonl", str(m), "--workers", "1", "--out"]
    bad = subprocess.run(cmd + [str(tmp_path / "bad")], check=False, capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")] == [bad.stderr.strip().splitlines()[-1]]
    assert "Traceback" not in bad.stderr and "--nonspeech" in bad.stderr
    ok = subprocess.run(cmd + [str(tmp_path / "ok"), "--nonspeech"], check=False, capture_output=True, text=True,
                        cwd=Path(__file__).parents[1])
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["languages"] == {"none": 1}
    assert read_index(tmp_path / "ok")["languages"] == {"none": 1}


def test_duplicate_ids_are_refused_before_anything_is_written_and_a_fixed_rerun_works(tmp_path):
    for name in ("a", "b"):
        write_audio(tmp_path / f"{name}.wav", 1.0)
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav", "text": "hello there", "id": "u1"}\n'
                 '{"audio": "b.wav", "text": "good day", "id": "u1"}\n')
    out = tmp_path / "out"
    with pytest.raises(ManifestError, match=r"utterance id 'u1' is used more than once .*a\.wav.*b\.wav"):
        prepare(read_manifest(m), out, source="t", num_workers=1)
    assert not out.exists() or not any(out.iterdir())  # no plan.json, no *.tmp
    m.write_text('{"audio": "a.wav", "text": "hello there", "id": "u1"}\n'
                 '{"audio": "b.wav", "text": "good day", "id": "u2"}\n')
    assert prepare(read_manifest(m), out, source="t", num_workers=1)["utterances"] == 2


def test_a_dir_with_shards_this_input_did_not_write_is_not_reused(tiny_corpus, tmp_path):
    import shutil

    write_audio(tmp_path / "a.wav", 1.0)
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav", "text": "hello there"}\n')
    foreign = tmp_path / "dev"
    shutil.copytree(tiny_corpus / "dev", foreign)  # a synthetic split: shards, index.json, no plan.json
    with pytest.raises(ManifestError, match="already holds shards that this input did not write"):
        prepare(read_manifest(m), foreign, source="t", num_workers=1)
    assert (foreign / "index.json").read_text() == (tiny_corpus / "dev" / "index.json").read_text()


def _skipping(job: int, skips: SkipCounter):
    """A shard's input where every utterance is skipped: `job` too long ones and one resampled."""
    for i in range(job):
        skips.add("too_long", f"u{i}: too long; skipped")
    skips.add("resampled", "r: 8000 Hz resampled to 16000 Hz")
    return iter(())


def test_each_kind_of_skip_is_warned_about_once_per_run_not_once_per_shard(tmp_path, caplog):
    import logging

    from entropy_asr.data.shards import run_shard_jobs, stats_path, warn_skips

    with caplog.at_level(logging.WARNING, logger="entropy_asr.data.shards"):
        run_shard_jobs([(_skipping, tmp_path / f"shard-{i:06d}.tar", 2) for i in range(3)], num_workers=1)
        assert [r.getMessage().split(":")[0] for r in caplog.records] == ["too_long", "resampled"]
        assert json.loads(stats_path(tmp_path / "shard-000002.tar").read_text())["skipped"] == {"resampled": 1,
                                                                                              "too_long": 2}
        caplog.clear()  # a worker process's counter is quiet: the parent warns from its first details
        quiet = SkipCounter(quiet=True)
        quiet.add("too_long", "a")
        quiet.add("too_long", "b")
        assert not caplog.records and quiet == {"too_long": 2} and quiet.details == {"too_long": "a"}
        warned = {"resampled"}  # the run's: resampled was warned about already
        warn_skips({**quiet.details, "resampled": "r2"}, warned)
        assert [r.getMessage() for r in caplog.records] == [
            "too_long: a (further 'too_long' cases are counted in index.json, not logged)"]
        assert warned == {"resampled", "too_long"}
