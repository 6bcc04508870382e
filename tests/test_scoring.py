"""Scoring against hand-worked cases, each hallucination flag on crafted pairs, and `evaluate.py --score`."""

from __future__ import annotations

import json

import pytest

from entropy_asr.metrics.scoring import (
    HallucinationParams,
    longest_loop,
    score_utterance,
    summarize,
)
from experiments import evaluate


def ops(s):
    return s.ref_units, s.hits, s.substitutions, s.deletions, s.insertions


def test_hand_worked_operations_in_each_language():
    # the cat [sat->sit] on [the] mat: 1 S, 1 D over 6 words
    assert ops(score_utterance("The cat sat on the mat.", "the cat sit on mat", "en")) == (6, 4, 1, 1, 0)
    # 今天天[气]很好[+啊]: one deleted and one inserted character over 6; punctuation is not a unit
    assert ops(score_utterance("今天天气很好。", "今天天很好啊", "zh")) == (6, 5, 0, 1, 1)
    # mixed: Han characters and English words are the units: [python->java] over 6
    assert ops(score_utterance("我喜欢 python 编程", "我喜欢 java 编程", "mix")) == (6, 5, 1, 0, 0)


def test_empty_reference_and_empty_hypothesis():
    silent = score_utterance("", "谢谢观看", "none")  # text on a non-speech clip: all insertions
    assert ops(silent) == (0, 0, 0, 0, 4) and silent.emitted_chars == 4 and silent.flags == []
    assert ops(score_utterance("hello world", "", "en")) == (2, 0, 0, 2, 0)  # nothing said: all deletions
    assert ops(score_utterance("", "", "none")) == (0, 0, 0, 0, 0)


def test_hallucination_flag_needs_length_and_negligible_overlap():
    assert score_utterance("hello world", "thank you for watching please subscribe", "en").flags == ["hallucination"]
    # as long, but it says the reference: not a hallucination (and 2 repeats are no loop)
    assert score_utterance("hello world", "hello world hello world and more", "en").flags == []
    # overlapping barely: 1 of 10 reference words; "negligible" is a parameter
    ref = "apple banana cherry grape lemon mango olive peach pear plum"
    hyp = "apple red blue green black white brown pink gray gold silver orange purple violet amber cyan"
    assert score_utterance(ref, hyp, "en").flags == ["hallucination"]
    assert score_utterance(ref, hyp, "en", HallucinationParams(max_overlap=0.05)).flags == []
    # not longer by over 50%: an error, not a hallucination
    assert score_utterance("hello world", "foo bar baz", "en").flags == []


def test_repetition_flag_is_a_loop_the_reference_does_not_have():
    assert score_utterance("hello world", "hello hello hello hello world", "en").flags == ["repetition"]
    assert score_utterance("very very very good", "very very very good", "en").flags == []  # it was said
    assert "repetition" in score_utterance("今天天气很好", "哈哈哈哈哈哈哈哈哈哈", "zh").flags
    assert (longest_loop(["a", "b", "c", "a", "b", "c", "a", "b", "c", "d"], 4) == 3
            and longest_loop(["a", "b", "c", "d"], 4) == 1)


def test_summary_rates_per_language_and_overall():
    scores = [score_utterance("the cat sat on the mat", "the cat sit on mat", "en"),
              score_utterance("今天天气很好", "今天天很好啊", "zh"),
              score_utterance("hello world", "thank you for watching please subscribe", "en"),
              score_utterance("", "谢谢观看", "none"), score_utterance("", "", "none")]
    out = summarize(scores)
    assert out["en"]["wer"] == pytest.approx((2 + 6) / 8) and out["zh"]["cer"] == pytest.approx(2 / 6)
    assert out["en"]["hallucination_rate"] == 0.5 and out["en"]["insertion_rate"] == pytest.approx(4 / 8)
    assert out["none"] == {"utterances": 2, "ref_units": 0, "substitutions": 0, "deletions": 0, "insertions": 4,
                           "nonspeech_emission_rate": 0.5, "nonspeech_mean_chars": 2.0}
    overall = out["overall"]
    assert overall["utterances"] == 5 and overall["error_rate"] == pytest.approx((2 + 2 + 6 + 4) / 14)
    assert overall["hallucination_rate"] == pytest.approx(1 / 3)  # over the 3 clips with a reference


def test_score_end_to_end(tmp_path):
    hyps = tmp_path / "sys.jsonl"
    rows = [{"id": "a", "ref": "the cat sat on the mat", "hyp": "the cat sit on mat", "language": "en"},
            {"ref": "今天天气很好", "hyp": "今天天很好啊", "language": "zh"},
            {"id": "n", "ref": "", "hyp": "谢谢观看", "language": "none"}]
    hyps.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    metrics = evaluate.main(["--score", str(hyps), "--out", str(tmp_path / "out")])
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk == metrics and on_disk["params"]["length_ratio"] == 1.5
    assert on_disk["sets"]["sys"]["en"]["wer"] == pytest.approx(2 / 6)
    assert on_disk["sets"]["sys"]["none"]["nonspeech_emission_rate"] == 1.0
    lines = [json.loads(x) for x in (tmp_path / "out" / "hyps.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", "sys-2", "n"] and lines[0]["substitutions"] == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| overall |" in report and "non-speech emission" in report
    assert not (tmp_path / "out" / "wandb").exists()  # tests run with WANDB_MODE=disabled


def test_score_logs_a_wandb_table_offline(tmp_path):
    hyps = tmp_path / "sys.jsonl"
    hyps.write_text(json.dumps({"id": "a", "ref": "hello world", "hyp": "hello word", "language": "en"}) + "\n")
    evaluate.main(["--score", str(hyps), "--out", str(tmp_path / "out"), "--wandb", "offline"])
    import wandb

    wandb.teardown()  # run.finish() can return before wandb-core has written the run's transaction log
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"sys/transcripts" in runs[0].read_bytes()


@pytest.mark.parametrize("line,message", [("{not json", "sys.jsonl:1: not valid JSON"),
                                          ('{"ref": "a", "language": "en"}', r"sys.jsonl:1: missing \['hyp'\]"),
                                          ('{"ref": "a", "hyp": "a", "language": "fr"}', "language 'fr'")])
def test_bad_hypothesis_lines_name_the_file_and_line(tmp_path, line, message):
    (tmp_path / "sys.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        evaluate.main(["--score", str(tmp_path / "sys.jsonl"), "--out", str(tmp_path / "out")])


def test_wetext_normalization_speaks_numbers_out_before_scoring(tmp_path):
    pytest.importorskip("tn.chinese.normalizer", reason="WeTextProcessing is the optional [wetext] extra")
    hyps = tmp_path / "sys.jsonl"
    hyps.write_text(json.dumps({"ref": "我买了三个苹果", "hyp": "我买了3个苹果", "language": "zh"}, ensure_ascii=False))
    plain = evaluate.main(["--score", str(hyps), "--out", str(tmp_path / "a")])
    wetext = evaluate.main(["--score", str(hyps), "--out", str(tmp_path / "b"), "--normalizer", "wetext"])
    assert plain["sets"]["sys"]["zh"]["cer"] > 0 and wetext["sets"]["sys"]["zh"]["cer"] == 0
    assert wetext["params"]["normalizer"] == "wetext"
