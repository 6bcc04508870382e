"""experiments/reproduce.py: equal step budgets and schedules, one difference per comparison, the paired claims;
the whole study at smoke size (slow)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from entropy_asr.errors import UserError
from experiments.reproduce import (
    CLAIMS,
    RECIPES,
    ROWS,
    SIZES,
    Evidence,
    Study,
    format_claims,
    format_table,
    schedules,
)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_recipe_gets_the_same_total_optimizer_steps(size, tmp_path):
    s = SIZES[size]
    study = Study(tmp_path, s, seed=1)
    for name in RECIPES:
        stages = study.recipe(name)
        steps = sum(st["overrides"]["trainer.max_steps"] for st in stages)
        pretraining = 0 if name == "a" else s.pretrain  # the others start from a pretraining run of s.pretrain steps
        assert steps + pretraining == s.total, name
        assert stages[-1]["name"] == "joint_sft"
    assert study.pretraining("chars")["overrides"]["model.init_args.ctc_head"]["units"] == "chars"
    assert ("--seed_everything" in study.common()
            and study.common()[study.common().index("--seed_everything") + 1] == "1")


@pytest.mark.parametrize("size", sorted(SIZES))
def test_replay_delivers_the_final_snapshot_by_final_by_step(size):
    s = SIZES[size]
    assert s.reference_step < s.replay_start <= s.pretrain
    assert s.replay_start + s.replay_pace() * s.final_by_step >= s.pretrain  # the final one is in by then
    assert s.final_by_step < s.ia_sft  # and IA-SFT trains on it after


def _schedule(stages: list[dict]) -> list[tuple]:
    return [(st["overrides"]["trainer.max_steps"], st["overrides"]["model.init_args.optim"]["lr"],
             st["overrides"]["model.init_args.optim"]["warmup_steps"]) for st in stages]


def test_b_c_and_e_differ_only_in_what_the_encoder_does(tmp_path):
    study = Study(tmp_path, SIZES["tiny"], seed=0)
    b, c, e = (study.recipe(r) for r in "bce")
    assert _schedule(b) == _schedule(c) == _schedule(e)  # the adapter's and the LLM's schedule
    final = str(study.pretrain_dir("phones") / "export" / "encoder.safetensors")
    # b: the encoder trains in SFT (joint SFT's module); e: IA-SFT on the final encoder, nothing swapped
    assert b[1]["config"].endswith("joint_sft.yaml") and b[1]["overrides"]["trainer.callbacks"] == []
    assert e[1]["config"].endswith("ia_sft.yaml") and e[1]["overrides"]["trainer.callbacks"] == []
    for stages in (b, e):
        assert stages[0]["overrides"]["model.init_args.init"]["encoder"] == final
        assert stages[1]["overrides"]["model.init_args.init"]["encoder"] == final
    # c: aligns on the first snapshot and swaps the later ones in
    assert c[0]["overrides"]["model.init_args.init"]["encoder"].endswith("encoder-step00000500.safetensors")
    swap = c[1]["overrides"]["trainer.callbacks"][0]
    assert swap["class_path"] == "callbacks.EncoderHotSwap"
    assert swap["init_args"]["snapshot_dir"].endswith("pretrain_phones/export/snapshots")
    # every recipe's last stage probes before and after, labelled by the phone run
    for r in RECIPES:
        probe = study.recipe(r)[-1]["overrides"]["trainer.callbacks"][-1]
        assert probe["init_args"]["at_start"] and "pretrain_phones" in probe["init_args"]["aligner"]["encoder"]


def test_d_swaps_its_own_snapshots_and_borrows_the_phone_aligner(tmp_path):
    study = Study(tmp_path, SIZES["tiny"], seed=0)
    d_align, d_ia, _ = study.recipe("d")
    assert "pretrain_chars" in d_align["overrides"]["model.init_args.init"]["encoder"]
    assert "pretrain_phones" in d_align["overrides"]["model.init_args.distill"]["aligner"]["ctc_head"]
    assert d_align["overrides"]["model.init_args.ctc_head"] is None
    swap = d_ia["overrides"]["trainer.callbacks"][0]["init_args"]
    assert swap["snapshot_dir"].endswith("pretrain_chars/export/snapshots") and swap["replay_start"] == 688
    with pytest.raises(ValueError, match="unknown recipe 'z'"):
        study.recipe("z")


def test_schedules_table_names_every_recipe_with_its_steps_and_adapter(tmp_path):
    study = Study(tmp_path, SIZES["tiny"], seed=0)
    md = schedules(SIZES["tiny"], {r: study.adapter_of(r) for r in RECIPES})
    assert md.count("\n") == len(RECIPES) + 1
    assert "joint SFT of a fresh encoder 1800 @ 0.0005" in md and "IA-SFT 300 @ 0.0005, no swaps" in md
    assert ("| d: as c, character-CTC pretraining | character CTC pretraining 1200 @ 0.004 → as c | as c | "
            "encoder frames |") in md
    assert md.count("| phone posteriors through the asset's phone table |") == 4  # a, b, c, e


def test_mixed_mode_pairs_d_with_f_the_method_on_frames(tmp_path):
    """Default study: a, b, c, e on the bridge; d and f (c's stages, frame adapter) on encoder frames."""
    mixed, frames = Study(tmp_path, SIZES["tiny"], seed=0), Study(tmp_path, SIZES["tiny"], seed=0, adapter="frames")
    assert [mixed.adapter_of(r) for r in "abcedf"] == ["posteriors"] * 4 + ["frames"] * 2
    f, c_frames = mixed.recipe("f"), frames.recipe("c")
    # f is c on frames, in its own run dir
    assert json.dumps([st["overrides"] for st in f]).replace("seed0/f/", "seed0/c/") == json.dumps(
        [st["overrides"] for st in c_frames])
    assert mixed.recipe("d") == frames.recipe("d")
    assert mixed.recipe("c") != c_frames
    assert mixed.recipe("c")[0]["overrides"]["model.init_args.adapter"]["input"] == "phone_posteriors"
    with pytest.raises(ValueError, match="choose from a b c d e"):
        frames.recipe("f")  # in frames mode c is already f
    # the phone-vs-character claims compare d with f when f ran, with c otherwise (frames mode)
    summaries = {r: [{"seed": s, "probe": {"nse_encoder": v + s}} for s in (0, 1)]
                 for r, v in (("c", 0.9), ("d", 0.2), ("f", 0.5))}
    claims = {c["claim"]: c for c in Evidence(summaries, {r: [[], []] for r in "cdf"}).claims()}
    nse = claims["Phone CTC gives a lower-entropy encoder than character CTC (NSE)"]
    assert (nse["x"], nse["y"]) == ("f", "d") and nse["tests"][0]["diff"] == pytest.approx(0.3)
    del summaries["f"]
    claims = {c["claim"]: c for c in Evidence(summaries, {r: [[], []] for r in "cd"}).claims()}
    assert claims["Phone CTC gives a lower-entropy encoder than character CTC (NSE)"]["x"] == "c"


def _records(errors_zh: list[int], emits: list[int]) -> list[dict]:
    recs = [{"set": "test", "id": f"u{i}", "language": "zh", "errors": e, "ref_units": 10, "insertions": 0,
             "flags": [], "hyp_units": 10} for i, e in enumerate(errors_zh)]
    recs += [{"set": "nonspeech_wide", "id": f"n{i}", "language": "none", "errors": 0, "ref_units": 0,
              "insertions": 0, "flags": [], "hyp_units": h} for i, h in enumerate(emits)]
    return recs


def test_evidence_pairs_seeds_and_utterances_and_gives_verdicts():
    # c beats a by 5 errors per 10-unit utterance on every utterance of every seed: a certain difference
    summaries = {r: [{"seed": s, "probe": {"pai_bits": p + s}} for s in (0, 1, 2)] for r, p in (("a", 1.0), ("c", 3.0))}
    records = {"a": [_records([6, 7, 8], [1, 1, 0, 0]) for _ in range(3)],
               "c": [_records([1, 2, 3], [0, 0, 0, 0]) for _ in range(3)]}
    ev = Evidence(summaries, records)
    table = ev.table()
    assert table["a"]["test CER zh %"]["mean"] == pytest.approx(0.7)
    assert table["c"]["non-speech emission rate %"]["mean"] == 0.0
    assert table["a"]["non-speech emission rate %"]["mean"] == pytest.approx(0.5)
    assert table["c"]["encoder PAI bits/frame"]["values"] == [3.0, 4.0, 5.0]
    assert table["c"]["test WER en %"]["mean"] is None  # no English utterances: not measured, not zero
    d = ev.compare("c", "a", "test CER zh %")
    assert d["diff"] == pytest.approx(-0.5) and d["low"] == pytest.approx(-0.5) and d["high"] == pytest.approx(-0.5)
    assert ev.compare("c", "a", "encoder PAI bits/frame")["diff"] == pytest.approx(2.0)
    claims = {c["claim"]: c for c in ev.claims()}
    staged = claims[CLAIMS[0][0]]
    assert staged["verdict"] == "reproduces" and [t["row"] for t in staged["tests"]] == ["test CER zh %"]
    md = format_claims(ev.claims())
    assert "| c − a | test CER zh % | -50.0 [-50.0, -50.0] | reproduces |" in md
    assert format_table(table).count("\n") == len(ROWS) + 1


def test_evidence_refuses_recipes_that_decoded_different_utterances():
    summaries = {r: [{"seed": 0}] for r in "ac"}
    records = {"a": [_records([1, 2], [0])], "c": [_records([1, 2, 3], [0])]}
    with pytest.raises(ValueError, match="different utterances"):
        Evidence(summaries, records).compare("c", "a", "test CER zh %")


def test_sample_sd_over_seeds_and_missing_values():
    summaries = {"c": [{"seed": s, "probe": {"nse_encoder": v}} for s, v in enumerate((0.1, 0.2, 0.6))],
                 "a": [{"seed": 0}]}
    table = Evidence(summaries, {"c": [[]] * 3, "a": [[]]}).table()
    nse = table["c"]["encoder NSE"]
    assert nse["mean"] == pytest.approx(0.3) and nse["sd"] == pytest.approx(math.sqrt(0.07)) and nse["n"] == 3
    assert table["a"]["encoder NSE"]["mean"] is None


@pytest.mark.slow
def test_smoke_study_runs_every_recipe_and_measures_it(tmp_path):
    from experiments.reproduce import main

    os.environ.setdefault("WANDB_MODE", "disabled")
    jobs = str(min(2, len(os.sched_getaffinity(0))))  # the runs as 2 processes, 1 core each
    res = main(["--size", "smoke", "--out", str(tmp_path), "--jobs", jobs])
    if jobs == "2":
        logs = sorted(p.name for p in (Path(tmp_path) / "logs").iterdir())
        assert logs == sorted(["seed0_pretrain_phones.log", "seed0_pretrain_chars.log"]
                              + [f"seed0_{r}.log" for r in RECIPES])
    assert set(res["table"]) == set(RECIPES)
    for name in RECIPES:
        summary = json.loads((Path(tmp_path) / "seed0" / name / "summary.json").read_text())
        assert {"test", "test_unseen_voice", "nonspeech_wide", "test_padded"} <= set(summary["eval"])
        assert "pai_bits" in summary["probe"] and "pai_bits" in summary["probe_before"]
        assert len(summary["nse_by_layer"]) == 7  # six blocks and the output
        assert ("cka_to_pretrained" in summary) == (name != "a")
    swaps = [json.loads(line) for line in (Path(tmp_path) / "seed0" / "c" / "ia_sft" / "swaps.jsonl").open()]
    assert swaps[-1]["final"] and swaps[-1]["step"] == SIZES["smoke"].final_by_step
    assert not (Path(tmp_path) / "seed0" / "e" / "ia_sft" / "swaps.jsonl").exists()
    assert {c["x"] + c["y"] for c in res["claims"]} == {"ca", "fd", "eb", "ce", "cb"}
    assert res["pretraining"]["phones"][0]["nse_by_step"] and res["pretraining"]["chars"][0]["nse_by_layer"]
    table = (Path(tmp_path) / "table.md").read_text()
    assert "## Claims" in table and "## NSE per encoder layer" in table


def test_posteriors_mode_bridges_every_stage_and_refuses_the_character_recipe(tmp_path):
    study = Study(tmp_path, SIZES["tiny"], seed=0, adapter="posteriors")
    table = str(study.lm / "phone_frames.safetensors")
    for r in "abce":
        for st in study.recipe(r):
            o = st["overrides"]
            # the bridge as the recorded study made it: soft posteriors (hold 0), the tiny configs' CTC head
            # (and all silence read: the tiny configs' adapter.max_silence is not what the study measured)
            assert o["model.init_args.adapter"] == {"k": 4, "input": "phone_posteriors", "hold": 0,
                                                     "max_silence": None}
            assert "model.init_args.ctc_head" not in o
            init = o["model.init_args.init"]
            assert init["phone_frames"] == table or init["phone_frames"].endswith("export/phone_frames.safetensors")
            assert r == "a" or init["ctc_head"].rsplit("/", 1)[-1].startswith("ctc_head")
    c_align, c_ia, c_joint = study.recipe("c")
    # the snapshot's head with its encoder; joint SFT from IA-SFT's exports (the last swapped head among them)
    assert c_align["overrides"]["model.init_args.init"]["ctc_head"].endswith("ctc_head-step00000500.safetensors")
    assert (c_ia["overrides"]["model.init_args.init"]["ctc_head"]
            == c_align["overrides"]["model.init_args.init"]["ctc_head"])
    assert c_joint["overrides"]["model.init_args.init"]["ctc_head"].endswith("c/ia_sft/export/ctc_head.safetensors")
    (a,) = study.recipe("a")
    assert "ctc_head.*" in a["overrides"]["model.init_args.trainable"]  # a fresh head trains with the fresh encoder
    with pytest.raises(ValueError, match="character CTC head gives no phone posteriors"):
        study.recipe("d")
    with pytest.raises(ValueError, match="choose from a b c e"):
        study.recipe("f")
    with pytest.raises(ValueError, match="--adapter 'bridge'"):
        Study(tmp_path, SIZES["tiny"], seed=0, adapter="bridge")


def test_jobs_start_each_run_after_its_pretraining_the_longest_first(tmp_path, monkeypatch):
    from experiments import reproduce

    started, finished = [], []

    class FakeRun:  # a run that ends at the second look
        def __init__(self, argv, **kw):
            self.task, self.looks, self.returncode = argv[argv.index("--task") + 1], 0, None
            assert kw["env"]["OMP_NUM_THREADS"] == "1"  # one core each: OpenMP must not spin a second thread
            started.append((self.task, argv[argv.index("--task-cores") + 1], list(finished)))

        def poll(self):
            self.looks += 1
            if self.looks > 1:
                self.returncode = 1 if self.task == "pretrain:1:chars" else 0
                finished.append(self.task)
            return self.returncode

        def terminate(self):
            pass

    monkeypatch.setattr(reproduce.subprocess, "Popen", FakeRun)
    monkeypatch.setattr(reproduce.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(reproduce.time, "sleep", lambda s: None)
    with pytest.raises(RuntimeError, match=r"seed1/pretrain_chars: exit code 1.*seed1/d: its pretraining failed"):
        reproduce.run_tasks(tmp_path, SIZES["smoke"], [0, 1], list("abcdef"), "mixed", 2, [])
    order = [task for task, _, _ in started]
    assert order[:4] == ["pretrain:0:phones", "pretrain:0:chars", "recipe:0:a", "pretrain:1:phones"]
    for task, cores, before in started:
        seed, what = task.split(":")[1:]
        assert cores in ("0", "1")
        if task.startswith("recipe"):
            assert f"pretrain:{seed}:phones" in before and (what != "d" or f"pretrain:{seed}:chars" in before)
    assert "recipe:1:d" not in order and len(order) == 15  # 2 x (2 pretraining runs + 6 recipes), less seed 1's d
    with pytest.raises(UserError, match="--jobs 3: choose 1 to 2"):
        reproduce.run_tasks(tmp_path, SIZES["smoke"], [0], ["a"], "mixed", 3, [])


def test_an_out_dir_of_another_mode_is_refused_not_reported_as_this_one(tmp_path):
    from experiments.reproduce import check_mode

    check_mode(tmp_path / "a", "tiny", "mixed")
    check_mode(tmp_path / "a", "tiny", "mixed")  # the same mode again: fine
    with pytest.raises(UserError, match=r"holds a study made with .*'frames'.*use another --out"):
        check_mode(tmp_path / "a", "tiny", "frames")
    old = tmp_path / "old" / "seed0" / "c"
    old.mkdir(parents=True)
    (old / "summary.json").write_text("{}")  # runs from before the mode was recorded
    with pytest.raises(UserError, match=r"did not record its size and adapter mode"):
        check_mode(tmp_path / "old", "tiny", "mixed")


def test_every_stage_of_every_recipe_hears_pretrainings_augmentation(tmp_path):
    """Equal data: the SFT configs' own augmentation is off, but the study's stages all take pretraining's."""
    import yaml

    from experiments.reproduce import CONFIGS

    study = Study(tmp_path, SIZES["tiny"], seed=0)
    common = study.common()
    augment = json.loads(common[common.index("--data.init_args.augment") + 1])
    assert augment == yaml.safe_load((CONFIGS / "pretrain_ctc.yaml").read_text())["data"]["init_args"]["augment"]
    assert augment["reverb_prob"] > 0 and augment["noise_prob"] > 0  # not the SFT configs' (off)


def test_every_adapter_override_spells_out_hold(tmp_path):
    """jsonargparse merges an adapter override into the stage config's adapter: an override that leaves `hold` out
    would keep the tiny config's hold 3, which an encoder-frame adapter refuses. Each one names it and builds."""
    from entropy_asr.model.speech_llm import AdapterConfig

    for mode, recipes in (("frames", "abcde"), ("posteriors", "abce"), ("mixed", "abcdef")):
        study = Study(tmp_path / mode, SIZES["tiny"], seed=0, adapter=mode)
        for r in recipes:
            for st in study.recipe(r):
                adapter = st["overrides"]["model.init_args.adapter"]
                # soft posteriors and all silence read: the study as recorded (the overrides merge into the tiny
                # configs' adapter, so each must say so)
                assert adapter["hold"] == 0 and adapter["max_silence"] is None, (mode, r, st["name"])
                AdapterConfig(**adapter)
                # and the LM loss alone at one learning rate (not the tiny joint SFT's phone CTC and encoder lr)
                o = st["overrides"]
                assert o["model.init_args.optim"]["lr_scale"] is None, (mode, r, st["name"])
                if st["config"].endswith(("ia_sft.yaml", "joint_sft.yaml")):
                    assert o["model.init_args.ctc_weight"] == 0.0, (mode, r, st["name"])


def test_the_study_scores_its_recipes_greedily(tmp_path, monkeypatch):
    """The recorded study decoded greedily; the tiny configs' exports now default to 4 beams, so measure() says 1."""
    import experiments.evaluate as evaluate
    from experiments.reproduce import measure

    class Called(Exception):
        pass

    seen: dict = {}

    def fake_main(argv):
        seen["argv"] = argv
        raise Called

    monkeypatch.setattr(evaluate, "main", fake_main)
    with pytest.raises(Called):
        measure(Study(tmp_path, SIZES["tiny"], seed=0), "c", {"nonspeech_wide": tmp_path, "test_padded": tmp_path}, [])
    argv = seen["argv"]
    assert argv[argv.index("--beam") + 1] == "1"
