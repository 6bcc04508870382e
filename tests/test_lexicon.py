"""Part-of-speech lexicons: word classes, inflections, filters, weights, sizes and missing data."""

import importlib.util
import itertools
import re

import pytest

from entropy_asr.data import lexicon
from entropy_asr.data.lexicon import (
    EN_BLOCK,
    EN_FUNCTION,
    WEIGHT_EXPONENT,
    ZH_BLOCK,
    ZH_BLOCK_CHARS,
    ZH_FUNCTION,
    english_lexicon,
    jieba_tags,
    mandarin_lexicon,
)

EN_SIZES = {"nouns": 300, "verbs": 100, "adjectives": 80, "adverbs": 20}
ZH_SIZES = {"nouns": 300, "verbs": 150, "adjectives": 40, "places": 20}


@pytest.fixture(scope="module")
def gen():
    """The sentence generator's lexicons (6,000 content words per language)."""
    from entropy_asr.data.sentences import SentenceGenerator

    return SentenceGenerator(vocab_size=6000)


@pytest.fixture(scope="module")
def en(gen):
    return gen.en


@pytest.fixture(scope="module")
def zh(gen):
    return gen.zh


def _groups(lex, names):
    return {k: getattr(lex, k) for k in names}


def test_sizes_are_as_asked(en, zh):
    assert {k: len(w) for k, w in _groups(english_lexicon(**EN_SIZES), EN_SIZES).items()} == EN_SIZES
    assert {k: len(w) for k, w in _groups(mandarin_lexicon(**ZH_SIZES), ZH_SIZES).items()} == ZH_SIZES
    # the generator's: 6,000 content words per language, most of them nouns
    for lex, names in ((en, EN_SIZES), (zh, ZH_SIZES)):
        sizes = {k: len(w) for k, w in _groups(lex, names).items()}
        assert sum(sizes.values()) == 6000 and max(sizes, key=sizes.get) == "nouns"
    # the most frequent words of a class come first: a small lexicon is the head of a larger one
    small = english_lexicon(**EN_SIZES)
    assert small.nouns.items == en.nouns.items[:EN_SIZES["nouns"]]
    assert small.verbs.items == en.verbs.items[:EN_SIZES["verbs"]]


def test_english_words_in_their_classes_with_inflections(en):
    nouns = dict(en.nouns.items)
    assert nouns["house"] == "houses" and nouns["water"] == "waters" and nouns["child"] == "children"
    assert nouns["advice"] is None  # a mass noun: no plural
    verbs = {v.base: v for v in en.verbs.items}
    take = verbs["take"]
    assert (take.third, take.past, take.ing, take.participle) == ("takes", "took", "taking", "taken")
    run = verbs["run"]
    assert (run.third, run.past, run.ing, run.participle) == ("runs", "ran", "running", "run")
    assert "happy" in en.adjectives.items and "beautiful" in en.adjectives.items
    assert "quickly" in en.adverbs.items
    # each word is in one class only
    assert "house" not in verbs and "take" not in nouns and "happy" not in nouns and "happy" not in verbs


def test_english_forms_are_consistent(en):
    from entropy_asr.text.english import cmu

    pron = cmu()
    singulars = {s for s, _ in en.nouns.items}
    for s, p in en.nouns.items:
        assert p is None or p != s
    # no plural tagged as a singular noun ("outfits" next to "outfit"); "an innings" is singular too
    assert singulars & {p for _, p in en.nouns.items if p} <= {"innings"}
    for v in en.verbs.items:
        assert v.third != v.base and v.third.endswith("s") and v.ing.endswith("ing"), v
    assert all(w.endswith("ly") for w in en.adverbs.items)
    for w in en.words():
        assert re.fullmatch(r"[a-z]{2,}", w) and w in pron, w
    bases = [singulars, {v.base for v in en.verbs.items}, set(en.adjectives.items), set(en.adverbs.items)]
    for a, b in itertools.combinations(bases, 2):
        assert not a & b


def test_english_has_no_function_or_blocked_words(en):
    words = set(en.words())
    assert not words & EN_BLOCK
    assert not {s for s, _ in en.nouns.items} & EN_FUNCTION
    assert not {v.base for v in en.verbs.items} & EN_FUNCTION
    assert not (set(en.adjectives.items) | set(en.adverbs.items)) & EN_FUNCTION
    assert not {"the", "and", "very", "several", "fuck", "kill", "sex"} & words


def test_mandarin_words_follow_jieba_tags(zh):
    tags = jieba_tags()
    assert (tags["学校"], tags["学习"], tags["漂亮"], tags["北京"], tags["工作"]) == ("n", "v", "a", "ns", "vn")
    assert {"学校", "医院", "老师", "工作"} <= set(zh.nouns.items)  # n and vn
    assert {"学习", "吃", "喜欢"} <= set(zh.verbs.items)
    assert {"漂亮", "重要"} <= set(zh.adjectives.items)
    assert {"北京", "上海"} <= set(zh.places.items)
    groups = {"nouns": {"n", "vn", "nz"}, "verbs": {"v"}, "adjectives": {"a"}, "places": {"ns"}}
    for name, allowed in groups.items():
        assert all(tags[w] in allowed for w in getattr(zh, name).items), name
    assert not (set(zh.nouns.items) & set(zh.verbs.items))


def test_mandarin_filters(zh):
    import opencc

    t2s = opencc.OpenCC("t2s")
    words = zh.words()
    assert len(words) == 6000
    for w in words:
        assert re.fullmatch(r"[\u4e00-\u9fff]+", w) and t2s.convert(w) == w, w
        assert w not in ZH_FUNCTION and w not in ZH_BLOCK and not set(w) & ZH_BLOCK_CHARS, w
    # verbs carry no negation or aspect of their own (the grammar adds them): no 不能, 没法, 看着, 算了
    assert not [w for w in zh.verbs.items if w[0] in "不没" or w[-1] in "了着"]
    assert not [w for w in zh.adjectives.items if len(w) > 2 or w[0] in "很最不太更"]


def test_weights_are_aligned_positive_and_frequency_ordered(en, zh):
    import wordfreq

    for lex, names, lang in ((en, EN_SIZES, "en"), (zh, ZH_SIZES, "zh")):  # keys only: every class
        freq = wordfreq.get_frequency_dict(lang)
        for name in names:
            words = getattr(lex, name)
            assert len(words.weights) == len(words.items) == len(words.cum_weights) == len(words)
            assert all(w > 0 for w in words.weights)
            assert list(words.weights) == sorted(words.weights, reverse=True)  # most frequent first
            assert words.cum_weights[-1] == pytest.approx(sum(words.weights))
            first = words.items[0]
            key = first[0] if isinstance(first, tuple) else getattr(first, "base", first)
            assert words.weights[0] == pytest.approx(freq[key] ** WEIGHT_EXPONENT)
    # flattened Zipf: the tail is not a thousand times rarer than the head
    assert 2 < en.nouns.weights[0] / en.nouns.weights[-1] < 100


@pytest.mark.parametrize("build, kind", [(english_lexicon, "adverbs"), (mandarin_lexicon, "places")])
def test_an_impossible_size_raises_naming_the_class(build, kind):
    sizes = {k: 10 for k in (EN_SIZES if build is english_lexicon else ZH_SIZES)}
    sizes[kind] = 100_000
    with pytest.raises(ValueError, match=f"asked for 100000 {kind}"):
        build(**sizes)


@pytest.mark.parametrize("package, load", [("textblob", lexicon.brill_tags), ("jieba", lexicon.jieba_tags)])
def test_missing_data_package_is_a_clear_error(monkeypatch, tmp_path, package, load):
    real = importlib.util.find_spec

    def missing(name, *args, **kwargs):
        return None if name == package else real(name, *args, **kwargs)

    load.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(ModuleNotFoundError, match=f"needs the package '{package}'; pip install -e . installs it"):
        load()

    class Spec:  # installed, but without its data file
        submodule_search_locations = (str(tmp_path),)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: Spec() if name == package else real(name))
    with pytest.raises(FileNotFoundError, match=f"reinstall {package}"):
        load()
    monkeypatch.undo()
    load.cache_clear()
    assert len(load()) > 10_000  # the real file again
