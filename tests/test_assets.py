"""The shipped tiny LLM asset: it matches this code's data, reads as well as its card says, and a
mismatched or damaged copy is refused with a line that says what differs and how to remake it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_asr.assets import (
    ROOT,
    AssetError,
    asset_dir,
    card,
    check_asset,
    expected_data,
)
from entropy_asr.assets.tiny_llm import PROMPT, measure_reading

REPO = Path(__file__).resolve().parents[1]
ASSET = ROOT / "tiny_llm"


@pytest.fixture()
def copy(tmp_path) -> Path:
    dst = tmp_path / "tiny_llm"
    shutil.copytree(ASSET, dst)
    return dst


def test_the_shipped_asset_matches_this_code_and_its_checksums():
    info = card(ASSET)
    assert asset_dir("tiny_llm") == ASSET
    assert {k: info["data"][k] for k in expected_data()} == expected_data()
    assert set(info["files"]) >= {"llm/model.safetensors", "llm/tokenizer.json", "adapter.safetensors",
                                  "phone_frames.safetensors"}
    assert info["training"]["steps"] > 0 and info["prompt"] == PROMPT


def test_the_tiny_configs_use_the_prompt_the_asset_was_trained_with():
    import yaml

    for stage in ("align", "ia_sft", "joint_sft"):
        prompt = (yaml.safe_load((REPO / "experiments" / "tiny" / f"{stage}.yaml").read_text())
                  ["model"]["init_args"]["prompt"])
        assert prompt == PROMPT, stage


def test_reading_error_on_dev_matches_the_card():
    """Clean pseudo speech of the default corpus' dev sentences, decoded greedily: the card's figures
    (measured when it was packaged), within what another CPU's float rounding can change."""
    measured = measure_reading(ASSET)
    expected = card(ASSET)["reading_dev"][card(ASSET)["dtype"]]
    assert set(measured) == set(expected)
    for key, value in expected.items():
        assert measured[key] == pytest.approx(value, abs=0.02), (key, measured, expected)


def test_reading_through_confused_tones_matches_the_card():
    """The same sentences with 30% of tones and stresses changed (fixed draws): the reader was trained to read through
    them (phone_frames.confusion), and the card records how well it does."""
    from entropy_asr.assets.tiny_llm import READING_CONFUSION

    measured = measure_reading(ASSET, confusion=READING_CONFUSION)
    expected = card(ASSET)["reading_dev"][f"{card(ASSET)['dtype']}_confusion_{READING_CONFUSION}"]
    for key, value in expected.items():
        assert measured[key] == pytest.approx(value, abs=0.02), (key, measured, expected)
    clean = card(ASSET)["reading_dev"][card(ASSET)["dtype"]]
    assert measured["cer_zh"] > clean["cer_zh"] + 0.05  # the confusions do reach the reader


def test_reading_the_held_layout_of_a_ctc_encoder_matches_the_card():
    """The same sentences laid out as the speech stages read the phone CTC encoder (spikes at its gaps, each held
    phone_frames.hold frames): the reader was trained on that layout too (phone_frames.held_share)."""
    measured = measure_reading(ASSET, held=True)
    expected = card(ASSET)["reading_dev"][f"{card(ASSET)['dtype']}_held"]
    assert set(measured) == set(expected)
    for key, value in expected.items():
        assert measured[key] == pytest.approx(value, abs=0.02), (key, measured, expected)
    assert measured != measure_reading(ASSET)  # the held layout does reach the reader


def test_an_asset_trained_for_another_corpus_is_refused(copy):
    info = json.loads((copy / "card.json").read_text())
    info["data"]["corpus_version"] -= 1
    (copy / "card.json").write_text(json.dumps(info))
    with pytest.raises(AssetError, match=r"corpus_version .*--retrain-llm"):
        check_asset(copy)


def test_a_damaged_file_is_refused(copy):
    model = copy / "llm" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(AssetError, match=r"llm/model.safetensors does not match the checksum"):
        check_asset(copy)
    (copy / "adapter.safetensors").unlink()
    with pytest.raises(AssetError, match="adapter.safetensors is missing"):
        check_asset(copy)


def test_configs_name_the_asset_by_interpolation():
    from experiments.run import build_cli

    cli = build_cli(["--config", str(REPO / "experiments" / "tiny" / "align.yaml"), "--run_dir", "/tmp/unused",
                     "--wandb", "disabled"])
    assert cli.model.configs["llm"].name_or_path == str(ASSET / "llm")
    assert cli.model.init_from["adapter"] == str(ASSET / "adapter.safetensors")


def test_pipeline_llm_source(tmp_path, monkeypatch):
    from experiments.pipeline import llm_source

    config = {"llm": {"asset": "tiny_llm", "stage": "pretrain_lm"}}
    assert llm_source(config, "runs/x", retrain=False) == str(ASSET)
    assert llm_source(config, "runs/x", retrain=True) == "runs/x/pretrain_lm/export"
    with pytest.raises(ValueError, match="llm.stage"):
        llm_source({"llm": {"asset": "tiny_llm"}}, "runs/x", retrain=True)
    monkeypatch.setattr("entropy_asr.assets.expected_data",
                        lambda: {**expected_data(), "grammar_version": -1})
    with pytest.raises(AssetError, match="grammar_version"):
        llm_source(config, "runs/x", retrain=False)


def test_pipeline_refuses_a_mismatched_asset_in_one_line(tmp_path):
    """The check runs before any stage: exit 2, one line on stderr, nothing started."""
    import yaml

    cfg = yaml.safe_load((REPO / "experiments" / "tiny" / "pipeline.yaml").read_text())
    cfg["run_dir"] = str(tmp_path / "runs")
    cfg["llm"]["asset"] = "no_such_asset"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "pipeline.py"), "--config",
                          str(tmp_path / "p.yaml")], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "no asset 'no_such_asset'" in out.stderr and not (tmp_path / "runs").exists()


def test_loading_from_an_asset_checks_it_and_naming_it_in_a_config_does_not(monkeypatch, tmp_path):
    """A config may name the asset and the command line replace it: only what a stage loads is checked."""
    from entropy_asr.assets import check_if_asset
    from experiments.run import build_cli

    check_if_asset(ASSET / "llm")  # the shipped one matches
    check_if_asset(tmp_path)  # not an asset: nothing to check
    check_if_asset(None)
    monkeypatch.setattr("entropy_asr.assets.expected_data", lambda: {**expected_data(), "corpus_version": -1})
    with pytest.raises(AssetError, match="corpus_version"):
        check_if_asset(ASSET / "adapter.safetensors")
    cli = build_cli(["--config", str(REPO / "experiments" / "tiny" / "align.yaml"), "--run_dir", str(tmp_path / "r"),
                     "--wandb", "disabled", "--model.init_args.llm.name_or_path", str(tmp_path / "my_llm")])
    assert cli.model.configs["llm"].name_or_path == str(tmp_path / "my_llm")  # parsed: the asset is not read yet
    with pytest.raises(AssetError, match="corpus_version"):
        cli.model.configure_model()  # its init.adapter still comes from the asset, which is checked now
