"""The stage configs compose: one definition per model size, the pipeline's paths from `vars`, nothing restated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from entropy_asr.errors import UserError
from experiments.pipeline import llm_source, select_stages, stage_args
from experiments.run import build_cli
from experiments.sizes import MODELS, encoder_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ["pretrain_ctc", "align", "ia_sft", "joint_sft", "context_sft", "grpo"]
TINY = ["pretrain_ctc", "align", "ia_sft", "joint_sft", "pretrain_lm", "context_sft", "grpo"]


@pytest.fixture(scope="module")
def parser():
    """The run.py parser (a CLI built once from a tiny config; parse_args below only parses)."""
    cli = build_cli(["--config", str(ROOT / "experiments" / "tiny" / "pretrain_ctc.yaml"), "--run_dir", "/tmp/unused",
                     "--wandb", "disabled"])
    return cli.parser


def _parse(parser, *args: str) -> dict:
    return yaml.safe_load(parser.dump(parser.parse_args(list(args)), skip_none=False, skip_validation=True))


def _paths(value) -> list[str]:
    if isinstance(value, str):
        return [value] if value.endswith((".safetensors", "/snapshots", "/llm")) else []
    if isinstance(value, list):
        return [p for v in value for p in _paths(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    return []


@pytest.mark.parametrize("config", [f"{s}.yaml" for s in PAPER] + [f"tiny/{s}.yaml" for s in TINY])
def test_every_stage_config_takes_its_encoder_from_the_size_files(parser, config):
    size = "tiny" if config.startswith("tiny/") else "paper"
    text = (ROOT / "experiments" / config).read_text()
    assert "d_model" not in text  # no size restated in a stage config
    cfg = _parse(parser, "--config", str(ROOT / "experiments" / config))
    encoder = cfg["model"]["init_args"]["encoder"]
    if encoder is not None:  # the text step has no encoder
        assert encoder == {**encoder, **vars(encoder_config(size))}
    if size == "paper" and config in ("align.yaml", "ia_sft.yaml"):
        assert cfg["model"]["init_args"]["llm"]["name_or_path"] == yaml.safe_load(
            (MODELS / "paper" / "llm.yaml").read_text())["name_or_path"]


def test_a_size_field_is_overridden_on_the_command_line(parser):
    cfg = _parse(parser, "--config", str(ROOT / "experiments" / "tiny" / "align.yaml"),
                 "--model.init_args.encoder.num_layers", "2")
    assert cfg["model"]["init_args"]["encoder"]["num_layers"] == 2
    assert cfg["model"]["init_args"]["encoder"]["d_model"] == encoder_config("tiny").d_model


@pytest.mark.parametrize("pipeline", ["pipeline.yaml", "pipeline_long.yaml"])
def test_the_pipeline_moves_every_stage_path_with_its_run_dir(parser, tmp_path, pipeline):
    """Every path a stage reads (init weights, snapshots, the aligner, the LLM) is under the pipeline's run_dir or
    the LLM's dir, and names the pipeline's first snapshot: vars.runs / vars.llm / vars.first_snapshot, not text
    the pipeline restates."""
    config = yaml.safe_load((ROOT / "experiments" / "tiny" / pipeline).read_text())
    run_dir, llm = str(tmp_path / "runs"), str(tmp_path / "my_llm")
    first = (config.get("vars") or {}).get("first_snapshot", "step00001200")
    assert f"snapshot-{first}.json" in next(s["wait_for"] for s in config["stages"] if s["name"] == "align")
    for stage in config["stages"]:
        if stage.get("when"):
            continue
        args = stage_args(stage, run_dir, [], llm, config.get("vars"))
        cfg = _parse(parser, *args)
        assert cfg["run_dir"] == f"{run_dir}/{stage['name']}"
        paths = _paths({"model": cfg["model"], "callbacks": cfg["trainer"]["callbacks"]})
        assert stage["name"] == "pretrain_ctc" or paths
        for path in paths:
            assert path.startswith((run_dir + "/", llm + "/")), (stage["name"], path)
            if "/snapshots/" in path and "-step" in path:
                assert first in path, (stage["name"], path)


def test_the_pipeline_reads_the_llm_from_the_asset_unless_retrained(tmp_path):
    config = yaml.safe_load((ROOT / "experiments" / "tiny" / "pipeline.yaml").read_text())
    assert llm_source({}, "runs/x", retrain=False) is None  # no `llm`: the stage configs' own vars.llm
    args = stage_args({"name": "align", "config": "c.yaml"}, "runs/x", ["--a", "b"], "L", {"first_snapshot": "s1"})
    assert args == ["--config", "c.yaml", "--run_dir", "runs/x/align", "--vars.runs", "runs/x", "--vars.llm", "L",
                    "--vars.first_snapshot", "s1", "--a", "b"]
    assert config["llm"]["stage"] == "pretrain_lm"


def test_the_pipelines_optional_stages_run_only_when_asked():
    config = yaml.safe_load((ROOT / "experiments" / "tiny" / "pipeline.yaml").read_text())
    method = ["pretrain_ctc", "align", "ia_sft", "joint_sft"]
    assert [s["name"] for s in select_stages(config)] == method
    assert [s["name"] for s in select_stages(config, retrain_llm=True)] == ["pretrain_lm", *method]
    assert [s["name"] for s in select_stages(config, optional=["grpo"])] == [*method, "grpo"]
    assert [s["name"] for s in select_stages(config, optional=["grpo", "context_sft"])] == [*method, "context_sft",
                                                                                          "grpo"]
    with pytest.raises(UserError, match=r"--with rlhf: .*optional stages: \['context_sft', 'grpo'\]"):
        select_stages(config, optional=["rlhf"])


@pytest.mark.parametrize("spelling", [("--run_dir", "--retrain-llm"), ("--run-dir", "--retrain_llm")])
def test_the_pipelines_own_flags_take_either_spelling_and_the_rest_go_to_every_stage(monkeypatch, tmp_path, spelling):
    import experiments.pipeline as pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "run_pipeline", lambda config, extra, force, retrain, optional: seen.update(
        run_dir=config["run_dir"], extra=extra, retrain=retrain))
    run_dir, retrain = spelling
    pipeline.main(["--config", str(ROOT / "experiments" / "tiny" / "pipeline.yaml"), run_dir, str(tmp_path), retrain,
                   "--trainer.max_steps", "3"])
    assert seen == {"run_dir": str(tmp_path), "extra": ["--trainer.max_steps", "3"], "retrain": True}


def test_the_reader_is_trained_on_the_hold_the_speech_stages_read_with():
    """pretrain_lm lays out part of its pseudo speech as the speech stages read the CTC encoder (phone_frames.hold):
    the same hold as their adapter's, or the reader learns a layout it is never given."""
    def init_args(name):
        return yaml.safe_load((ROOT / "experiments" / "tiny" / f"{name}.yaml").read_text())["model"]["init_args"]

    frames = init_args("pretrain_lm")["phone_frames"]
    assert frames["held_share"] > 0
    for stage in ("align", "ia_sft", "joint_sft", "context_sft", "grpo"):
        assert init_args(stage)["adapter"]["hold"] == frames["hold"], stage
