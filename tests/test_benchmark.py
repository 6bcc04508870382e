"""experiments/benchmark.py at tiny size on the CPU: every stage, decoding, the data pipeline, the record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from experiments.benchmark import STAGES, Options, format_table, run


@pytest.fixture(scope="module")
def result(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    o = Options(size="tiny", batch=2, seconds=2.0, steps=1, decode_batch=2, decode_tokens=5, device="cpu",
                tokenizer=None, data_seconds=1.0)
    with pytest.MonkeyPatch.context() as mp:  # not left behind for later tests
        if "ENTROPY_ASR_CACHE" not in os.environ:
            mp.setenv("ENTROPY_ASR_CACHE", str(out))
        return run(o, out / "bench.json", out / "benchmarks.md", corpus=tiny_corpus, command="benchmark test"), out


def test_every_stage_is_measured_with_its_own_work(result):
    res, _out = result
    rows = {r["stage"]: r for r in res["rows"]}
    assert set(STAGES) | {"decode", "data"} == set(rows)
    for stage in STAGES:
        r = rows[stage]
        assert r["step_s"] > 0 and r["audio_s_per_s"] == pytest.approx(2 * 2.0 / r["step_s"])
        assert 0 < r["mfu"] < 1.5  # CPU peak from one matmul size; model FLOPs over it
        # the optimizer's part (clipping + AdamW) is timed inside the step it belongs to
        assert 0 < r["optimizer_s"] < r["step_s"]
        assert r["optimizer_share"] == pytest.approx(r["optimizer_s"] / r["step_s"])
    # what trains decides the work: a frozen LLM still passes gradients back to the adapter (align), the
    # frozen encoder has no backward in IA-SFT, joint SFT does everything
    flops = {s: rows[s]["tflops_per_step"] for s in STAGES}
    assert flops["align"] < flops["ia_sft"] < flops["joint_sft"]
    assert rows["pretrain_ctc"]["tokens_per_s"] == 0 and rows["ia_sft"]["tokens_per_s"] > 0
    assert rows["ia_sft"]["trainable_M"] < rows["joint_sft"]["trainable_M"] == rows["joint_sft"]["params_M"]
    # the paper configs' step: CR-CTC's two views in pretraining, dynamic chunks in every stage
    assert rows["pretrain_ctc"]["views"] == 2 and all(rows[s]["views"] == 1 for s in STAGES[1:])
    assert all(rows[s]["dynamic_chunk"] for s in STAGES)
    assert rows["decode"]["rtfx"] == pytest.approx(2 * 2.0 / rows["decode"]["decode_s"])
    assert rows["data"]["batches"] > 0 and rows["data"]["audio_s_per_s_per_worker"] > 0
    # the batches' padding: encoder frames, and the LLM's positions (speech + transcript tokens) with the tokenizer
    for key in ("padded_frames_share", "padded_text_bytes_share", "padded_llm_positions_share"):
        assert 0 <= rows["data"][key] < 1


def test_the_benchmark_writes_nothing_where_it_runs(result):
    # its Lightning fits export to a scratch dir that is removed, never to the working directory
    assert not (Path.cwd() / "export").exists() and not (Path.cwd() / "lightning_logs").exists()


def test_table_json_and_record(result):
    res, out = result
    assert json.loads((out / "bench.json").read_text())["rows"] == res["rows"]
    md = (out / "benchmarks.md").read_text()
    assert "`benchmark test`" in md and "| joint_sft |" in md and "| decode (greedy, 5 new tokens) |" in md
    table = format_table(res["rows"], "x")
    assert table.count("\n| ") == len(res["rows"]) + 1  # a row per stage, decoding and data, under the header
    assert "of the fbank frames are padding" in table and "of the LLM positions" in table and "optimizer:" in table


def test_profile_kinds_by_operator_and_kernel_name():
    from experiments.benchmark import profile_kind

    assert profile_kind("aten::mm") == profile_kind("aten::addmm") == profile_kind("aten::linear") == "matmul"
    assert profile_kind("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "matmul"
    assert profile_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert profile_kind("flash_fwd_kernel") == "attention"
    assert profile_kind("aten::mkldnn_convolution") == profile_kind("aten::cudnn_convolution") == "convolution"
    assert profile_kind("Optimizer.step#AdamW.step") == profile_kind("multi_tensor_apply_kernel<foreach>") \
        == "optimizer"
    assert profile_kind("aten::mul") == profile_kind("aten::native_layer_norm") == profile_kind("aten::copy_") \
        == "elementwise"
    assert profile_kind("aten::mmx_thing") == "elementwise"  # a name merely starting like one is not one


def test_profile_writes_a_trace_and_a_summary_of_the_timed_steps(tmp_path):
    o = Options(size="tiny", stages=("ia_sft",), batch=2, seconds=2.0, steps=1, decode_batch=0, device="cpu",
                tokenizer=None, profile=tmp_path / "prof")
    with pytest.MonkeyPatch.context() as mp:
        if "ENTROPY_ASR_CACHE" not in os.environ:
            mp.setenv("ENTROPY_ASR_CACHE", str(tmp_path))
        res = run(o, skip_data=True, command="profile test")
    prof = res["rows"][0]["profile"]
    trace = json.loads(Path(prof["trace"]).read_text())
    assert trace["traceEvents"]  # a Chrome trace of the timed step
    assert abs(sum(prof["shares"].values()) - 1) < 1e-6 and prof["shares"]["matmul"] > 0
    assert prof["top"] and all(t["share"] <= prof["top"][0]["share"] for t in prof["top"])
    assert prof["shares"].get("optimizer", 0) > 0  # the step ran AdamW under the profiler


def test_keep_export_leaves_a_model_the_recognizer_decodes(tmp_path):
    """--keep-export: joint SFT's random-weight export at the benchmark's size, whole (cmvn.json, model.json), for the
    inference benchmark; an existing dir is refused before anything runs."""
    import numpy as np

    from entropy_asr import Recognizer
    from experiments.benchmark import main

    dest = tmp_path / "export"
    main(["--size", "tiny", "--stages", "joint_sft", "--batch", "2", "--seconds", "2", "--steps", "1",
          "--decode-batch", "0", "--skip-data", "--tokenizer", str(_tokenizer(tmp_path)), "--device", "cpu",
          "--keep-export", str(dest)])
    assert {"cmvn.json", "model.json", "encoder.safetensors", "adapter.safetensors", "llm"} <= {
        p.name for p in dest.iterdir()}
    (out,) = Recognizer.from_pretrained(dest).transcribe([np.zeros(16000, dtype=np.float32)])
    assert out.duration == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        main(["--size", "tiny", "--stages", "joint_sft", "--keep-export", str(dest)])
    with pytest.raises(SystemExit):
        main(["--size", "tiny", "--stages", "align", "--keep-export", str(tmp_path / "other")])


def _tokenizer(tmp_path: Path) -> Path:
    from experiments.benchmark import default_tokenizer

    return Path(default_tokenizer(tmp_path))
