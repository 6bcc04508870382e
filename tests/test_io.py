"""entropy_asr.io: atomic writes (no half file, no temp left behind, no torn file under concurrency) and JSONL logs."""

from __future__ import annotations

import json
import threading

import pytest

import entropy_asr.io
from entropy_asr.io import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_json,
    atomic_write_text,
    atomic_write_via,
    read_jsonl_log,
    replace_dir,
)


class Boom(Exception):
    pass


def test_json_bytes_equal_the_previous_format(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"z": "拼音", "y": True}}
    atomic_write_json(tmp_path / "x.json", obj)  # indent 1, sorted keys, UTF-8 (not \u escapes), final newline
    expected = '{\n "a": {\n  "y": true,\n  "z": "拼音"\n },\n "b": [\n  1,\n  2.5,\n  null\n ]\n}\n'
    assert (tmp_path / "x.json").read_bytes() == expected.encode()
    assert expected == json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # shards' old writer
    atomic_write_text(tmp_path / "t.txt", "拼音\n")
    assert (tmp_path / "t.txt").read_bytes() == "拼音\n".encode()


def _write_then_fail(f):
    f.write(b"half")
    raise Boom


@pytest.mark.parametrize("how", ["open", "via", "fsync"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, how):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(Boom):
        if how == "open":
            with atomic_open(path) as f:
                _write_then_fail(f)
        elif how == "via":
            def write(tmp):
                tmp.write_bytes(b"half")
                raise Boom
            atomic_write_via(path, write, suffix=".png")
        else:  # the data is in the temp file, the fsync before the rename fails
            def fsync(fd):
                raise Boom
            monkeypatch.setattr(entropy_asr.io.os, "fsync", fsync)
            atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_write_via_gives_the_writer_a_temp_path_with_the_suffix(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"new")

    assert atomic_write_via(tmp_path / "p.png", write, suffix=".png") == tmp_path / "p.png"
    assert (tmp_path / "p.png").read_bytes() == b"new"
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".p.png.") and seen[0].suffix == ".png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_concurrent_writers_never_leave_a_torn_file(tmp_path):
    path = tmp_path / "shared.bin"
    payloads = [bytes([65 + i]) * (256 * 1024 + i) for i in range(6)]  # each writer's content is recognisable
    atomic_write_bytes(path, payloads[0])
    stop, bad, errors = threading.Event(), [], []

    def writer(data):
        try:
            for _ in range(15):
                atomic_write_bytes(path, data)
        except BaseException as e:
            errors.append(e)

    def reader():
        while not stop.is_set():
            got = path.read_bytes()
            if got not in payloads:
                bad.append((len(got), got[:1], got[-1:]))

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    r.join()
    assert not errors and not bad
    assert path.read_bytes() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.bin"]  # no temp file left by any thread


def test_atomic_write_dir_swaps_a_whole_dir_and_a_failure_keeps_the_old(tmp_path):
    out = tmp_path / "tok"

    def fill(text):
        def write(tmp):
            (tmp / "a.txt").write_text(text)
            (tmp / "sub").mkdir()
            (tmp / "sub" / "b.txt").write_text(text)
        return write

    assert atomic_write_dir(out, fill("one")) == out
    assert (out / "sub" / "b.txt").read_text() == "one" and (out.stat().st_mode & 0o777) == 0o755
    atomic_write_dir(out, fill("two"))
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "sub"] and (out / "a.txt").read_text() == "two"

    def fail(tmp):
        (tmp / "a.txt").write_text("half")
        raise Boom

    with pytest.raises(Boom):
        atomic_write_dir(out, fail)
    assert (out / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp or old dirs


def test_replace_dir_puts_a_new_dir_in_place(tmp_path):
    new, out = tmp_path / "new", tmp_path / "out"
    new.mkdir()
    (new / "x").write_text("1")
    replace_dir(new, out)
    assert (out / "x").read_text() == "1" and not new.exists()


def test_read_jsonl_log_skips_a_half_written_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n\n{"step": 2, "x": [1]}\n{"step": 3, "x"')
    assert read_jsonl_log(log) == [{"step": 1}, {"step": 2, "x": [1]}]
