"""Character CTC units (the character-level pretraining ablation): units, inventory, stage wiring."""

from __future__ import annotations

import json

import pytest

from entropy_asr.model.speech_llm import CTCHeadConfig
from entropy_asr.text import PHONES
from entropy_asr.text.chars import (
    SPACE,
    CharInventory,
    build_char_inventory,
    char_units,
)


def test_char_units_one_per_han_character_and_letter_one_boundary_per_space_run():
    assert char_units("这个 coffee  好") == ["这", "个", SPACE, *"coffee", SPACE, "好"]
    assert char_units("  it's 3 ") == ["i", "t", "'", "s", SPACE, "3"]
    assert char_units("") == [] and char_units("   ") == []


def test_inventory_orders_by_frequency_maps_unknowns_and_round_trips(tmp_path):
    inv = CharInventory.from_texts(["ab a", "b b 好"])
    assert inv.symbols == ("<blank>", "<unk>", "b", SPACE, "a", "好")  # b 3x, space 3x (tie: code point), a 2x
    assert inv.ids("ba 坏") == [2, 4, 3, 1]
    assert CharInventory.from_texts(["ab a"], min_count=2).symbols == ("<blank>", "<unk>", "a")
    back = CharInventory.load(inv.save(tmp_path / "chars.json"))
    assert back.symbols == inv.symbols and len(back) == 6
    with pytest.raises(FileNotFoundError, match=r"python -m entropy_asr.text.chars"):
        CharInventory.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"symbols": ["a", "b"]}))
    with pytest.raises(ValueError, match="must start with '<blank>', '<unk>'"):
        CharInventory.load(tmp_path / "bad.json")


def test_inventory_of_a_shard_dir_covers_its_transcripts(tiny_corpus, tmp_path):
    from entropy_asr.data.shards import read_transcripts

    inv = build_char_inventory(tiny_corpus / "train", tmp_path / "chars.json")
    texts = [m["norm_text"] for m in read_transcripts(tiny_corpus / "train") if m["language"] != "none"]
    assert all(1 not in inv.ids(t) for t in texts)  # nothing in the training set is <unk>
    assert sum(len(inv.ids(t)) for t in texts) == sum(len(char_units(t)) for t in texts)
    assert any("\u4e00" <= s <= "\u9fff" for s in inv.symbols) and "e" in inv.symbols  # both languages


def test_ctc_head_config_units(tmp_path):
    assert CTCHeadConfig().vocab_size() == len(PHONES)
    path = CharInventory(["a", "b"]).save(tmp_path / "chars.json")
    assert CTCHeadConfig(units="chars", inventory=str(path)).vocab_size() == 4
    with pytest.raises(ValueError, match="needs ctc_head.inventory"):
        CTCHeadConfig(units="chars")
    with pytest.raises(ValueError, match="'phones' or 'chars'"):
        CTCHeadConfig(units="words")
