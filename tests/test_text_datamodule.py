"""The tiny LLM's text data: held-out sentences stay out, phones come along, batches are length-bucketed."""

from __future__ import annotations

import random

import pytest

from datamodules.text import LengthBucketBatches, TextDataModule
from entropy_asr.data.shards import read_transcripts
from entropy_asr.text import normalize_text, phones_to_ids


def test_batches_are_full_disjoint_and_similar_in_length():
    rng = random.Random(0)
    lengths = [rng.randint(5, 100) for _ in range(1000)]
    s = LengthBucketBatches(lengths, batch_size=10, pool=5, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 100 and all(len(b) == 10 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat) == 1000
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    rand = [rng.sample(range(1000), 10) for _ in range(100)]
    rand_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in rand) / len(rand)
    assert spread < rand_spread / 3  # sorted pools: far less padding than random batches
    s.set_epoch(1)
    assert list(s) != batches  # a new shuffle each epoch
    s.set_epoch(0)
    assert list(s) == batches  # ... and the same one for the same epoch (resume)


def test_ranks_get_equally_many_disjoint_batches():
    lengths = list(range(105))
    ranks = [list(LengthBucketBatches(lengths, 10, pool=2, seed=0, rank=r, world=3)) for r in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3]
    flat = [i for r in ranks for b in r for i in b]
    assert len(set(flat)) == len(flat)
    with pytest.raises(ValueError, match="cannot fill one batch of 64 per rank"):
        LengthBucketBatches([1] * 100, 64, world=2)


def test_items_carry_phones_and_never_an_evaluation_sentence(tiny_corpus):
    dm = TextDataModule(synthetic={"root": str(tiny_corpus), "utterances": 60, "seed": 7, "shard_size": 8},
                        extra_sentences=200, batch_size=8)
    dm.setup()
    held_out = {normalize_text(m["text"], m["language"]) for split in ("dev", "test", "test_unseen_voice")
                for m in read_transcripts(tiny_corpus / split) if m["language"] != "none"}
    assert not any(normalize_text(t, lang) in held_out for t, lang, _ in dm.train_items)
    train = {m["text"]: m for m in read_transcripts(tiny_corpus / "train") if m["language"] != "none"}
    for text, _, phones in dm.train_items:
        assert phones  # every sentence can be read as pseudo speech
        if text in train:
            assert phones == phones_to_ids(train[text]["phones"])  # transcripts keep their CTC targets
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"text", "language", "phones"} and len(batch["text"]) == len(batch["phones"]) == 8
