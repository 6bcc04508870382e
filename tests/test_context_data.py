"""Context SFT's data side: the hotword sampler (known answers on crafted vocabularies) and the hotword test set."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from entropy_asr.data.context import ContextConfig, Hotwords, HotwordSampler, hotword_contained
from entropy_asr.data.hotword_set import build_hotword_set, hotword_pools, load_hotword_set
from entropy_asr.data.shards import Utterance, read_transcripts, read_utterances, write_shards
from entropy_asr.errors import UserError, UserFileNotFound
from entropy_asr.text.script import has_han
from tests.conftest import tone


def letters(text: str, language: str | None = None) -> list[str]:
    """A phonemizer with known answers: one phone per letter (Han character), c and k the same sound."""
    return ["K" if ch in "ck" else ch for ch in text.lower() if not ch.isspace()]


def sampler(texts: list[str], languages: list[str] | None = None, **config) -> HotwordSampler:
    return HotwordSampler.from_texts(texts, languages or ["en"] * len(texts), ContextConfig(**config), letters)


# ---- configuration ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    ({"share_none": 1.5}, "context.share_none"),
    ({"share_distractors_only": -0.1}, "context.share_distractors_only"),
    ({"share_none": "half"}, "context.share_none"),
    ({"share_none": 0.6, "share_distractors_only": 0.5}, "context.share_none \\+ context.share_distractors_only"),
    ({"max_present": -1}, "context.max_present"),
    ({"distractors_per_present": 1.5}, "context.distractors_per_present"),
    ({"random_distractors": True}, "context.random_distractors"),
    ({"min_phones": 0}, "context.min_phones"),
    ({"neighbours": 0}, "context.neighbours"),
])
def test_config_names_the_bad_field(kwargs, field):
    with pytest.raises(UserError, match=f"^{field}"):
        ContextConfig(**kwargs)


def test_config_accepts_the_edges():
    ContextConfig(share_none=1, share_distractors_only=0, max_present=0, distractors_per_present=0,
                  random_distractors=0, min_phones=1, neighbours=1)


# ---- the vocabulary: candidates and neighbours -------------------------------------------------------------------

def test_candidates_rarest_first_ties_by_longer():
    s = sampler(["banana banana banana", "computer computer", "elephant", "cat sat", "an"])
    # counts: banana 3, computer 2, elephant 1, cat 1, sat 1; "a", "an" and "on" have < 3 phones: no candidates;
    # zebra, and, the are unseen (count 0): rarest of all, zebra (5 phones) first; then elephant (8 phones) before
    # cat and sat (3; alphabetical)
    text = "A zebra, a cat, an elephant and a computer sat on the banana."
    assert s.candidates(text, "en") == ["zebra", "and", "the", "elephant", "cat", "sat", "computer", "banana"]
    assert sampler(["x"], min_phones=4).candidates("the cat ate a banana", "en") == ["banana"]


def test_candidates_take_both_scripts_in_mixed_speech():
    s = sampler(["我们明天去北京开会", "明天的 meeting 在上海"], ["zh", "mix"], min_phones=2)
    got = s.candidates("明天的 meeting 在北京", "mix")
    assert set(got) == {"明天", "meeting", "北京"}
    assert got[-1] == "明天"  # said twice in training; the others once or never
    assert s.candidates("", "none") == []


def test_neighbours_by_phone_edit_distance():
    s = sampler(["cart card care dart carts zebra kart", "北京 东京 北方"], ["en", "zh"], min_phones=2)
    # distance 1 from cart: card, care, dart (same length, alphabetical), then carts (one phone longer);
    # kart sounds the same (c = k here): a homophone is no neighbour, and neither is the word itself
    assert s.neighbours("cart", "en", 4) == ["card", "care", "dart", "carts"]
    assert s.neighbours("cart", "en", 2) == ["card", "care"]  # served from the cache, same order
    assert s.neighbours("cart", "en", 10) == ["card", "care", "dart", "carts", "zebra"]
    assert s.neighbours("北京", "mix", 10) == ["东京", "北方"]  # Mandarin words get Mandarin neighbours only
    assert all(not has_han(w) for w in s.neighbours("cards", "mix", 10))


def test_hotword_contained_uses_scoring_units():
    assert hotword_contained("我们明天去北京开会。", "北京", "zh")
    assert hotword_contained("I met TOM yesterday!", "tom", "en")
    assert not hotword_contained("I will go tomorrow.", "tom", "en")  # whole words only
    assert hotword_contained("明天的 Meeting 在上海", "meeting", "mix")
    assert hotword_contained("我去北，京了", "北京", "zh")  # punctuation is not scored
    with pytest.raises(UserError, match="'!!'"):
        hotword_contained("text", "!!", "en")


# ---- sampling ----------------------------------------------------------------------------------------------------

VOCAB = ["cart card care dart carts zebra kart", "banana bandana cabana", "parade charade arcade facade",
         "the cart and the banana", "tables cables fables"]
TEXT = "The cart rolled over the banana at the parade."


def test_distractors_are_never_said_and_lists_add_up():
    s = sampler(VOCAB)
    for i in range(300):
        h = s.sample(TEXT, "en", random.Random(f"0:{i}:0"))
        assert sorted(h.words) == sorted(h.present + h.absent) and len(set(h.words)) == len(h.words)
        assert all(hotword_contained(TEXT, w, "en") for w in h.present)
        assert not any(hotword_contained(TEXT, w, "en") for w in h.absent)
        assert h.present in ([], ["rolled", "over"])  # rarest first: unseen words (more phones first), then parade
        assert "kart" not in h.absent  # it sounds like "cart", which is said
    # a transcript saying a near neighbour keeps it out of the list: "card" is nearest to "cart" but said
    text = "the cart and the card"
    for i in range(100):
        assert "card" not in s.sample(text, "en", random.Random(i)).absent


def test_sample_is_deterministic_given_the_rng():
    s = sampler(VOCAB)
    first = [s.sample(TEXT, "en", random.Random(f"7:utt{i}:3")) for i in range(50)]
    again = [s.sample(TEXT, "en", random.Random(f"7:utt{i}:3")) for i in range(50)]
    assert first == again
    assert len({tuple(h.words) for h in first}) > 5  # and it does vary from utterance to utterance


def test_shares_of_list_kinds():
    s = sampler(VOCAB, share_none=0.3, share_distractors_only=0.2)
    n = 2000
    kinds = {"none": 0, "distractors": 0, "full": 0}
    for i in range(n):
        h = s.sample(TEXT, "en", random.Random(f"0:utt{i}:0"))
        kinds["none" if not h.words else "full" if h.present else "distractors"] += 1
    # binomial sd is ~20 draws; 6 sd cannot fail by chance (and the seeds are fixed anyway)
    assert abs(kinds["none"] - 0.3 * n) < 6 * (n * 0.3 * 0.7) ** 0.5
    assert abs(kinds["distractors"] - 0.2 * n) < 6 * (n * 0.2 * 0.8) ** 0.5
    assert sampler(VOCAB, share_none=1.0, share_distractors_only=0).sample(TEXT, "en", random.Random(0)) == Hotwords()


def test_full_list_sizes():
    s = sampler(VOCAB, share_none=0.0, share_distractors_only=0.0, max_present=2, distractors_per_present=2,
                random_distractors=1)
    h = s.sample(TEXT, "en", random.Random(0))
    assert len(h.present) == 2 and len(h.absent) == 5
    # only one candidate: its two neighbours plus random words in place of the missing one's
    h = s.sample("a zebra", "en", random.Random(0))
    assert h.present == ["zebra"] and len(h.absent) == 5


def test_nonspeech_gets_no_list_or_random_distractors():
    s = sampler(VOCAB, share_none=0.5, share_distractors_only=0.0)
    lists = [s.sample("", "none", random.Random(i)) for i in range(200)]
    assert {len(h.words) for h in lists} == {0, 5}  # no list, or 2 x 2 + 1 random vocabulary words
    assert all(not h.present for h in lists)
    assert all(w in s.vocabulary["en"].words for h in lists for w in h.absent)


# ---- a tiny training split on disk -------------------------------------------------------------------------------

TRAIN = [("en", "The cart hit the card near the dart."), ("en", "Cards and carts are everywhere in London."),
         ("zh", "我们明天去北京开会。"), ("zh", "北京的天气很好。"), ("mix", "明天的 meeting 在上海。")]


def _train_utterances(job, skips):
    for i, (lang, text) in enumerate(job):
        yield Utterance(f"train_{i:03d}", tone(1.0, seed=i), text, lang, "test", "test")


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    write_shards(out, [TRAIN[:3], TRAIN[3:]], _train_utterances)
    return out


def test_from_shards_counts_the_split(train_dir):
    s = HotwordSampler.from_shards(train_dir)
    assert s.count("北京") == 2 and s.count("cards") == 1 and s.count("london") == 1 and s.count("zebra") == 0
    assert "meeting" in s.vocabulary["en"].words and "上海" in s.vocabulary["zh"].words
    assert "the" not in s.vocabulary["en"].words  # 2 phones < min_phones


# ---- the hotword test set ----------------------------------------------------------------------------------------

def test_hotword_pools_avoid_the_training_transcripts():
    pools = hotword_pools([], [])
    en, zh = pools["en_proper"][0], pools["zh"][0]
    again = hotword_pools([f"我在{zh}见到了 {en.upper()}。"], ["mix"])
    assert en not in again["en_proper"] and zh not in again["zh"]
    assert sum(map(len, again.values())) == sum(map(len, pools.values())) - 2
    assert all(len(w) >= 2 for w in pools["zh"]) and all(w[0].isupper() for w in pools["en_proper"])


def test_tiny_hotword_set(train_dir, tmp_path):
    out = tmp_path / "hot"
    info = build_hotword_set(out, train_dir, utterances=6, seed=3, distractors=20, num_workers=1)
    hotwords, distractors = load_hotword_set(out)
    utts = list(read_utterances(out))
    assert [u["key"] for u in utts] == list(hotwords) and len(utts) == 6
    assert info["hotwords"] == sum(map(len, hotwords.values())) and all(1 <= len(w) <= 2 for w in hotwords.values())
    train = read_transcripts(train_dir)
    for u in utts:
        assert u["audio"].size > 8000 and u["language"] in ("zh", "en", "mix")
        for word in hotwords[u["key"]]:
            assert hotword_contained(u["text"], word, u["language"])
            assert not any(hotword_contained(m["text"], word, m["language"]) for m in train)
    assert len(distractors) == 20 and distractors == sorted(distractors)
    assert not set(distractors) & {w for ws in hotwords.values() for w in ws}
    assert not any(hotword_contained(u["text"], w, u["language"]) for u in utts for w in distractors)
    assert (out / "cmvn.json").read_bytes() == (train_dir / "cmvn.json").read_bytes()
    assert json.loads((out / "index.json").read_text())["utterances"] == 6
    # the same settings again: nothing is rewritten; other settings: a clear error, the set stays
    stamp = os.stat(out / "index.json").st_mtime_ns
    assert build_hotword_set(out, train_dir, utterances=6, seed=3, distractors=20, num_workers=1) == info
    assert os.stat(out / "index.json").st_mtime_ns == stamp
    with pytest.raises(UserError, match="other settings"):
        build_hotword_set(out, train_dir, utterances=7, seed=3, distractors=20, num_workers=1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_load_hotword_set_names_file_and_line(tmp_path):
    with pytest.raises(UserFileNotFound, match="hotwords.jsonl not found"):
        load_hotword_set(tmp_path)
    (tmp_path / "hotwords.jsonl").write_text('{"key": "a", "hotwords": ["Aberdeen"]}\n{"key": "b", hotwords}\n')
    (tmp_path / "distractors.txt").write_text("Aberdeen\n")
    with pytest.raises(UserError, match=r"hotwords.jsonl:2: not valid JSON"):
        load_hotword_set(tmp_path)
    (tmp_path / "hotwords.jsonl").write_text('{"key": "a", "hotwords": ["Aberdeen"]}\n{"key": "b", "hotwords": []}\n')
    with pytest.raises(UserError, match=r"hotwords.jsonl:2: expected"):
        load_hotword_set(tmp_path)
    twice = '{"key": "a", "hotwords": ["Aberdeen"]}\n{"key": "a", "hotwords": ["x"]}\n'
    (tmp_path / "hotwords.jsonl").write_text(twice)
    with pytest.raises(UserError, match=r"hotwords.jsonl:2: key 'a' appears twice"):
        load_hotword_set(tmp_path)
    (tmp_path / "hotwords.jsonl").write_text('{"key": "a", "hotwords": ["Aberdeen", "北京"]}\n')
    (tmp_path / "distractors.txt").write_text("Aberdeen\n\n上海\n...\n")
    with pytest.raises(UserError, match=r"distractors.txt:4: '...' is no word"):
        load_hotword_set(tmp_path)
    (tmp_path / "distractors.txt").write_text("Aberdeen\n\n上海\n")
    assert load_hotword_set(tmp_path) == ({"a": ["Aberdeen", "北京"]}, ["Aberdeen", "上海"])


def test_context_eval_counts_hotword_use_per_utterance():
    """experiments/context_eval.py's per-utterance counts: prompted words the reference says (targets) and the
    hypothesis writes (found), prompted words written (used), and of those the ones not said (inserted)."""
    from experiments.context_eval import hotword_counts

    ref, prompted = "we met Okonkwo in Dunmore today", ["okonkwo", "dunmore", "dunmoor"]
    assert hotword_counts(ref, "we met okonkwo in dunmoor today", "en", prompted) == {
        "targets": 2, "found": 1, "used": 2, "inserted": 1}
    assert hotword_counts(ref, "", "en", prompted) == {"targets": 2, "found": 0, "used": 0, "inserted": 0}
    assert hotword_counts("我们在张家界见面", "我们在张家界见面", "zh", ["张家界", "张家口"]) == {
        "targets": 1, "found": 1, "used": 1, "inserted": 0}
    assert hotword_counts("", "", "none", []) == {"targets": 0, "found": 0, "used": 0, "inserted": 0}


def test_context_eval_own_words_are_said_and_distractors_are_not(tiny_corpus):
    """context_eval --own-words: each utterance's hotwords are words it says (its rarest first), and no distractor is
    said by any utterance of the set."""
    from experiments.context_eval import own_words

    data = tiny_corpus / "test"
    hotwords, distractors = own_words(data, tiny_corpus / "train", n=2, seed=0, distractors=50)
    metas = {m["key"]: m for m in read_transcripts(data)}
    assert hotwords and all(1 <= len(ws) <= 2 for ws in hotwords.values())
    assert all(hotword_contained(metas[k]["text"], w, metas[k]["language"]) for k, ws in hotwords.items() for w in ws)
    assert len(distractors) == 50 == len(set(distractors))
    assert not any(hotword_contained(m["text"], w, m["language"]) for w in distractors for m in metas.values())
