"""One error style for user errors: one line naming the file, line, key or value and the fix, exit code 2,
the traceback only with --debug; anything else keeps its traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from entropy_asr.errors import (
    UserError,
    UserFileNotFound,
    one_line,
    run_main,
    user_error_of,
)
from tests.stage_helpers import ROOT


def test_a_user_error_wrapped_by_a_config_parser_is_found_in_the_chain():
    try:
        try:
            raise UserError("optim.lr must be a finite number > 0, got -1.0")
        except UserError as inner:
            raise TypeError("Problem with given class_path 'lightning_modules.PretrainCTC'") from inner
    except TypeError as outer:
        assert str(user_error_of(outer)) == "optim.lr must be a finite number > 0, got -1.0"
    assert user_error_of(KeyError("x")) is None
    assert isinstance(UserFileNotFound("x"), FileNotFoundError) and isinstance(UserError("x"), ValueError)
    assert one_line(UserError("a\nb\nc")) == "a (+2 more lines: --debug shows them)"
    worker = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                       '  File "x.py", line 1, in f\nentropy_asr.errors.UserError: train: the last 100 shards failed')
    assert one_line(worker) == "train: the last 100 shards failed"  # as a DataLoader worker re-raises it


def test_run_main_prints_one_line_and_exits_2_and_debug_reraises(capsys, monkeypatch):
    def main(argv):
        assert "--debug" not in argv  # run_main's own flag never reaches the entry point
        raise UserError(f"{argv[0]}:3: bad value; fix it")

    with pytest.raises(SystemExit) as e:
        run_main(main, ["m.jsonl"])
    assert e.value.code == 2 and capsys.readouterr().err == "error: m.jsonl:3: bad value; fix it\n"
    with pytest.raises(UserError, match="m.jsonl:3"):
        run_main(main, ["m.jsonl", "--debug"])
    monkeypatch.setenv("ENTROPY_ASR_DEBUG", "1")
    with pytest.raises(UserError):
        run_main(main, ["m.jsonl"])
    monkeypatch.delenv("ENTROPY_ASR_DEBUG")

    def bug(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):  # not bad input: the traceback stays
        run_main(bug, [])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"})


@pytest.mark.parametrize("case", ["negative lr", "synthetic typo", "missing init export"])
def test_run_py_bad_config_values_end_in_one_line_with_exit_code_2(case, tmp_path):
    override = {"negative lr": ["--model.init_args.optim", '{"lr": -1}'],
                "synthetic typo": ["--data.init_args.synthetic", '{"utterance": 60}'],
                "missing init export": ["--model.init_args.init",
                                        json.dumps({"encoder": str(tmp_path / "no.safetensors")})],
                }[case]
    expect = {"negative lr": "error: optim.lr must be a finite number > 0, got -1.0",
              "synthetic typo": "error: data.synthetic: unknown key(s) ['utterance']; the keys are root, utterances",
              "missing init export": f"error: encoder: export {tmp_path / 'no.safetensors'} not found"}[case]
    out = _cli("experiments/run.py", "--config", "experiments/tiny/pretrain_ctc.yaml", "--run_dir",
               str(tmp_path / "run"), "--wandb", "disabled", *override)
    err = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and err[-1].startswith(expect), err[-3:]
    if case == "negative lr":  # --debug: the traceback, exit code 1
        debug = _cli("experiments/run.py", "--config", "experiments/tiny/pretrain_ctc.yaml", "--run_dir",
                     str(tmp_path / "run"), "--wandb", "disabled", *override, "--debug")
        assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_damaged_init_export_names_its_file_and_component(tmp_path):
    import torch

    from entropy_asr.model.export import load_component, save_component

    path = save_component(torch.nn.Linear(4, 4), tmp_path / "adapter.safetensors", "adapter")
    path.write_bytes(b"\x00" * 8 + path.read_bytes()[8:])  # its header length overwritten
    with pytest.raises(UserError, match=r"adapter: .*adapter\.safetensors is not a readable safetensors file "
                                        r"\(SafetensorError: .*\); re-export it or point `init.adapter`"):
        load_component(torch.nn.Linear(4, 4), path, "adapter")


@pytest.mark.parametrize(("line", "message"), [
    ({"ref": "你好", "hyp": None, "language": "zh"},
     r"h\.jsonl:2: hyp must be a string, got null; write \"\" for no output"),
    ({"ref": 12345, "hyp": "x", "language": "en"}, r"h\.jsonl:2: ref must be a string, got 12345"),
    ({"ref": "hello", "hyp": "", "language": "none"}, r"h\.jsonl:2: language none .* has the reference 'hello'"),
    ({"id": "u1", "ref": "b", "hyp": "b", "language": "en"}, r"h\.jsonl:2: id 'u1' repeats line 1"),
    (["not", "an", "object"], r"h\.jsonl:2: expected a JSON object"),
])
def test_score_refuses_bad_hypothesis_lines_naming_the_line(tmp_path, capsys, line, message):
    from experiments.evaluate import main

    hyps = tmp_path / "h.jsonl"
    hyps.write_text(json.dumps({"id": "u1", "ref": "a", "hyp": "a", "language": "en"}) + "\n"
                    + json.dumps(line, ensure_ascii=False) + "\n")
    with pytest.raises(UserError, match=message):
        main(["--score", str(hyps), "--out", str(tmp_path / "o"), "--wandb", "disabled"])
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_score_of_a_file_that_is_not_utf8_names_the_line_and_exits_2(tmp_path):
    hyps = tmp_path / "h.jsonl"
    hyps.write_bytes(b'{"ref": "a", "hyp": "a", "language": "en"}\n{"ref": "' + "好".encode("gb18030")
                     + b'", "hyp": "", "language": "zh"}\n')
    out = _cli("experiments/evaluate.py", "--score", str(hyps), "--out", str(tmp_path / "o"), "--wandb", "disabled")
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(
        f"error: {hyps}:2: not UTF-8 (byte 0x"), out.stderr[-2000:]


def test_an_error_raised_while_handling_a_user_error_is_not_reported_as_it():
    try:
        try:
            raise UserError("marker x: bad step")
        except UserError:
            raise OSError("stat failed")  # noqa: B904 (no `from` on purpose: the case under test)
    except OSError as e:
        assert user_error_of(e) is None  # (a cause is followed: the first test of this module)


def test_score_without_ids_numbers_the_lines(tmp_path):
    from experiments.evaluate import read_hyps

    hyps = tmp_path / "h.jsonl"
    hyps.write_text("".join(json.dumps({"id": None, "ref": "a", "hyp": "a", "language": "en"}) + "\n"
                            for _ in range(2)))
    assert [r["id"] for r in read_hyps(hyps)] == ["h-1", "h-2"]
