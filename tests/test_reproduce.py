"""experiments/reproduce.py: equal step budgets, the replay schedule, the table; the whole study at smoke size (slow)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from experiments.reproduce import RECIPES, ROWS, SIZES, Study, aggregate, format_table


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_recipe_gets_the_same_total_optimizer_steps(size, tmp_path):
    s = SIZES[size]
    study = Study(tmp_path, s, seed=1)
    for name in RECIPES:
        stages = study.recipe(name)
        steps = sum(st["overrides"]["trainer.max_steps"] for st in stages)
        pretraining = 0 if name == "a" else s.pretrain  # b, c, d start from a pretraining run of s.pretrain steps
        assert steps + pretraining == s.total, name
    assert study.pretraining("chars")["overrides"]["model.init_args.ctc_head"]["units"] == "chars"
    assert "--seed_everything" in study.common() and study.common()[study.common().index("--seed_everything") + 1] == "1"


@pytest.mark.parametrize("size", sorted(SIZES))
def test_replay_delivers_the_final_snapshot_by_final_by_step(size):
    s = SIZES[size]
    assert s.reference_step < s.replay_start <= s.pretrain
    assert s.replay_start + s.replay_pace() * s.final_by_step >= s.pretrain  # the final one is in by then
    assert s.final_by_step < s.ia_sft  # and IA-SFT trains on it after


def test_c_aligns_and_swaps_on_the_phone_run_and_d_borrows_its_aligner(tmp_path):
    study = Study(tmp_path, SIZES["tiny"], seed=0)
    c_align = study.recipe("c")[0]
    d_align, d_ia, _ = study.recipe("d")
    assert "pretrain_phones" in c_align["overrides"]["model.init_args.init"]["encoder"]
    assert "pretrain_chars" in d_align["overrides"]["model.init_args.init"]["encoder"]
    assert "pretrain_phones" in d_align["overrides"]["model.init_args.distill"]["aligner"]["ctc_head"]
    assert d_align["overrides"]["model.init_args.ctc_head"] is None
    swap = d_ia["overrides"]["trainer.callbacks"][0]["init_args"]
    assert swap["snapshot_dir"].endswith("pretrain_chars/export/snapshots") and swap["replay_start"] == 588


def test_aggregate_means_sample_sd_and_missing_values():
    runs = [{"eval": {"test": {"zh": {"cer": v}}}, "probe": {"pai_bits": 1.0}} for v in (0.1, 0.2, 0.6)]
    table = aggregate({"c": runs, "a": [{"eval": {}}]})
    cer = table["c"]["test CER zh %"]
    assert cer["mean"] == pytest.approx(0.3) and cer["sd"] == pytest.approx(math.sqrt(0.07)) and cer["n"] == 3
    assert table["a"]["test CER zh %"]["mean"] is None
    md = format_table(table)
    assert "| test CER zh % | 30.0 ± 26.5 | n/a |" in md and md.count("\n") == len(ROWS) + 1


@pytest.mark.slow
def test_smoke_study_runs_every_recipe_and_measures_it(tmp_path):
    from experiments.reproduce import main

    os.environ.setdefault("WANDB_MODE", "disabled")
    res = main(["--size", "smoke", "--seeds", "0", "--out", str(tmp_path)])
    assert set(res["table"]) == set(RECIPES)
    for name in RECIPES:
        summary = json.loads((Path(tmp_path) / "seed0" / name / "summary.json").read_text())
        assert {"test", "test_unseen_voice", "nonspeech"} <= set(summary["eval"])
        assert "pai_bits" in summary["probe"] and "h0_bits_per_char" in summary["probe"]
        assert ("cka_to_pretrained" in summary) == (name != "a")
    swaps = [json.loads(line) for line in (Path(tmp_path) / "seed0" / "c" / "ia_sft" / "swaps.jsonl").open()]
    assert swaps[-1]["final"] and swaps[-1]["step"] == SIZES["smoke"].final_by_step
    assert (Path(tmp_path) / "table.md").exists()
