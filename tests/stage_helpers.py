"""Shared by the stage and transcription tests: tiny configs shrunk further, and the first stages' exports."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny"
ENC = {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 3, "subsampling_channels": 8}
SMALL_LLM = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 16, "intermediate_size": 64}
# the tiny pretraining config's probe, holding out every 2nd of the few dev utterances here
PROBE = {"class_path": "callbacks.AccessibleInformationProbe",
         "init_args": {"every_n_steps": 400, "probe_batches": 8, "at_start": False, "test_every": 2}}


def common(corpus: Path) -> list[str]:
    """Overrides that point a tiny config at the session's corpus and keep it quick."""
    syn = json.dumps({"root": str(corpus), "utterances": 60, "seed": 7, "shard_size": 8})
    return ["--data.init_args.synthetic", syn, "--data.init_args.num_workers", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def small_models(stage: str) -> list[str]:
    """Shrink the tiny configs' models further (the configs' own sizes run in the slow pipeline test)."""
    args = []
    if stage != "pretrain_lm":
        args += ["--model.init_args.encoder", json.dumps(ENC)]
    if stage == "pretrain_ctc":
        args += ["--trainer.callbacks", json.dumps([PROBE])]
    if stage in ("align", "ia_sft", "joint_sft"):  # the adapter reads phone posteriors through the reader's table
        args += ["--model.init_args.phone_frames", json.dumps({"dim": ENC["d_model"]})]
    if stage == "pretrain_lm":
        args += ["--model.init_args.llm.tiny", json.dumps(SMALL_LLM), "--model.init_args.tokenizer_vocab_size", "400",
                 "--data.init_args.extra_sentences", "100", "--model.init_args.phone_frames",
                 json.dumps({"dim": ENC["d_model"]})]
    return args


def llm_stage_args(stage: str, exports: dict, run_dir: Path) -> list[str]:
    init = {"encoder": str(exports["snapshot"]), "ctc_head": str(exports["ctc_snapshot"]),  # a fresh adapter
            "phone_frames": exports["reader"]["phone_frames"]}
    args = ["--config", str(TINY / f"{stage}.yaml"), "--run_dir", str(run_dir),
            "--model.init_args.llm.name_or_path", str(exports["llm"])]
    if stage == "align":  # the text step's adapter, distilled toward its reader with the snapshot's CTC head
        init.update(adapter=exports["reader"]["adapter"])
        args += ["--model.init_args.distill", json.dumps(exports["reader"])]
    args += ["--model.init_args.init", json.dumps(init)]
    # the configs' callbacks read runs/tiny (the pipeline test runs them); IA-SFT hot-swaps the fixture's snapshots
    if stage == "ia_sft":
        swap = {"class_path": "callbacks.EncoderHotSwap",
                "init_args": {"snapshot_dir": str(exports["root"] / "pretrain_ctc" / "export" / "snapshots")}}
        args += ["--trainer.callbacks", json.dumps([swap])]
    if stage == "joint_sft":
        args += ["--trainer.callbacks", "[]"]
    return args
