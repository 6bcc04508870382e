"""Tests for the text front end: phone inventory, phonemizer (Mandarin/English/mixed) and normalization."""

import pickle
import random
import subprocess
import sys

import pytest

from entropy_asr.text import (
    INVENTORY_VERSION,
    PHONE_TO_ID,
    PHONES,
    Phonemizer,
    inventory_fingerprint,
    normalize_text,
    phones_to_ids,
    tokenize_for_scoring,
)
from entropy_asr.text.english import cmu
from entropy_asr.text.g2p_neural import predict
from entropy_asr.text.mandarin import syllable_phones
from entropy_asr.text.numbers import en_number_words, zh_number


@pytest.fixture(scope="module")
def ph():
    return Phonemizer()


def says(ph, text, language=None):
    return " ".join(ph(text, language))


# --- inventory -------------------------------------------------------------------------------

def test_inventory_layout():
    assert INVENTORY_VERSION == "1"
    assert PHONES[0] == "<blank>" and PHONES[1] == "<unk>"
    assert len(set(PHONES)) == len(PHONES) == 293
    assert PHONE_TO_ID["<blank>"] == 0 and PHONE_TO_ID["rr"] == PHONES.index("rr")
    assert phones_to_ids(["m", "a1", "HH", "nope"]) == [PHONE_TO_ID["m"], PHONE_TO_ID["a1"], PHONE_TO_ID["HH"], 1]
    fp = inventory_fingerprint()
    assert len(fp) == 16 and fp == inventory_fingerprint()
    mandarin = [p for p in PHONES[2:] if p.lower() == p]
    english = [p for p in PHONES[2:] if p.upper() == p and p not in mandarin]
    assert len(mandarin) + len(english) == len(PHONES) - 2  # case separates the two languages


def test_inventory_covers_cmudict_and_every_pypinyin_syllable():
    from pypinyin.contrib.tone_convert import to_tone3
    from pypinyin.pinyin_dict import pinyin_dict

    assert {p for pron in cmu().values() for p in pron} <= set(PHONES)
    syllables = {to_tone3(s, neutral_tone_with_five=True) for v in pinyin_dict.values() for s in v.split(",")}
    assert [s for s in syllables if syllable_phones(s) is None] == []


# --- Mandarin --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,phones", [
    ("妈", "m a1"), ("麻", "m a2"), ("马", "m a3"), ("骂", "m a4"),
    ("的", "d e5"), ("吗", "m a5"),
    ("你好", "n i2 h ao3"), ("一个", "i2 g e4"), ("不是", "b u2 sh i4"),
    ("一天", "i4 t ian1"), ("不去", "b u2 q v4"), ("水果", "sh uei2 g uo3"),
    ("第一", "d i4 i1"), ("统一", "t ong3 i1"), ("看一看", "k an4 i5 k an4"),
    ("银行", "in2 h ang2"), ("行走", "x ing2 z ou3"),
    ("哪儿", "n a3 rr"), ("花儿", "h ua1 rr"), ("一点儿", "i4 d ian3 rr"), ("小孩儿", "x iao3 h ai2 rr"),
    ("女儿", "n v3 er2"), ("儿子", "er2 z i5"), ("我儿子", "uo3 er2 z i5"), ("儿", "er2"),
    ("一会儿时间", "i2 h uei4 rr sh i2 j ian1"), ("妇女儿童", "f u4 n v3 er2 t ong2"),
    ("爱", "ai4"), ("我", "uo3"), ("鱼", "v2"), ("有", "iou3"), ("问", "uen4"), ("远", "van3"),
    ("嗯", "n2"), ("学", "x ve2"), ("装", "zh uang1"),
])
def test_mandarin(ph, text, phones):
    assert says(ph, text) == phones


def test_unromanizable_han_is_unk(ph):
    ph = Phonemizer()
    assert ph("我𠮷") == ["uo3", "<unk>"]
    assert ph.unk_counts == {"𠮷": 1}


# --- English ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,phones", [
    ("hello", "HH AH0 L OW1"),
    ("Hello, world!", "HH AH0 L OW1 W ER1 L D"),
    ("don't", "D OW1 N T"),
    ("it's", "IH1 T S"),
    ("e-mail", "IY1 M EY2 L"),
    ("café", "K AH0 F EY1"),
    ("GPU", "JH IY1 P IY1 Y UW1"),
    ("mp3", "EH1 M P IY1 TH R IY1"),
    ("21st", "T W EH1 N T IY0 F ER1 S T"),
])
def test_english(ph, text, phones):
    assert says(ph, text) == phones


def test_oov_word_uses_neural_g2p(ph):
    assert "blorption" not in cmu()
    out = ph("blorption")
    assert out and out[0] == "B" and set(out) <= set(PHONES) and "<unk>" not in out
    assert out == ["B", "L", "AO1", "R", "P", "SH", "AH0", "N"]


def test_neural_g2p_reproduces_cmudict_words():
    words = ["cat", "dog", "house", "water", "people", "school", "computer", "table", "music", "garden", "window",
             "paper"]
    assert sum(predict(w) == list(cmu()[w]) for w in words) >= len(words) - 1


# --- numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("digits,zh", [
    ("3", "三"), ("15", "十五"), ("105", "一百零五"), ("110", "一百一十"), ("2024", "两千零二十四"),
    ("10010", "一万零一十"), ("100000000", "一亿"), ("0.5", "零点五"), ("007", "零零七"),
])
def test_zh_number(digits, zh):
    assert zh_number(digits) == zh


def test_numbers_follow_their_language(ph):
    assert says(ph, "我有3个苹果") == "uo2 iou3 s an1 g e4 p ing2 g uo3"
    assert says(ph, "1个") == "i2 g e4"  # merged with 个 so 一-sandhi applies
    assert says(ph, "2024年") == "er4 l ing2 er4 s i4 n ian2"  # years are read digit by digit
    assert says(ph, "花了0.5元") == says(ph, "花了零点五元")
    assert says(ph, "占50%") == says(ph, "占百分之五十")
    assert says(ph, "it costs 3 dollars") == "IH1 T K AA1 S T S TH R IY1 D AA1 L ER0 Z"
    assert ph("2024") == ph("two thousand twenty four")
    assert ph("2024", "zh") == ph("两千零二十四")
    assert en_number_words("1984") == ["nineteen", "eighty", "four"]


# --- code switching and <unk> ----------------------------------------------------------------

def test_code_switch_order(ph):
    assert says(ph, "我们去office开会") == "uo3 m en5 q v4 AO1 F IH0 S k ai1 h uei4"


def test_unk_tokens_are_counted_exactly():
    ph = Phonemizer()
    phones, n = ph.phonemize_with_unk("Привет мир 😀 hello αβγ 你好 👍🏽")
    assert n == 5 and phones.count("<unk>") == 5
    assert ph.unk_counts == {"Привет": 1, "мир": 1, "😀": 1, "αβγ": 1, "👍🏽": 1}
    assert phones[3:7] == ["HH", "AH0", "L", "OW1"]
    ph("😀")
    assert ph.unk_counts["😀"] == 2
    assert ph("，。! ?") == []


def test_random_mixed_sentences_stay_in_inventory(ph):
    rng = random.Random(0)
    han = "我们今天下午去公司开会讨论明年的计划一点儿哪儿女儿银行不是行走水果的吗嗯"
    words = ["office", "meeting", "don't", "blorption", "GPU", "e-mail", "42", "3.5", "iPhone15", "R&D"]
    for _ in range(200):
        parts = [rng.choice([han[rng.randrange(len(han)):][:4], rng.choice(words), " ", "，"]) for _ in range(8)]
        out = ph("".join(parts))
        assert out and all(p in PHONE_TO_ID for p in out)


def test_pickle_and_language_hint():
    ph = Phonemizer()
    ph("😀")
    clone = pickle.loads(pickle.dumps(ph))
    assert clone.unk_counts == ph.unk_counts and clone("你好") == ["n", "i2", "h", "ao3"]
    with pytest.raises(ValueError):
        ph("hi", "fr")


def test_no_nltk_or_g2p_en_import():
    code = (
        "import sys\nfrom entropy_asr.text import Phonemizer\n"
        "p = Phonemizer(); assert p('blorption hello 你好')\n"
        "assert 'nltk' not in sys.modules and 'g2p_en' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- normalization ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,norm", [
    ("我们明天去Office开会！", "我们明天去 office 开会"),
    ("ＡＢＣ１２３", "abc 123"),
    ("你好，世界！《三体》“好”、？", "你好世界三体好"),
    ("我 们 去", "我们去"),
    ("我有 3 个苹果，花了3.5元", "我有3个苹果花了3.5元"),
    ("2024年我们去了 New York。", "2024年我们去了 new york"),
    ("Hello, Mr. Smith! I'm gonna pay $20.", "hello mister smith i am going to pay $20"),
    ("The colour is grey.", "the color is gray"),
    ("ok好的OK", "ok 好的 ok"),
    ("", ""),
    ("，。！？……", ""),
])
def test_normalize(text, norm):
    assert normalize_text(text) == norm


def test_traditional_to_simplified():
    assert normalize_text("這個問題", t2s=True) == "这个问题"
    assert normalize_text("這個問題") == "這個問題"


def test_tokenize_for_scoring():
    assert tokenize_for_scoring("我们明天去 office 开会") == ["我", "们", "明", "天", "去", "office", "开", "会"]
    assert tokenize_for_scoring("2024年 new york") == ["2024", "年", "new", "york"]
    assert tokenize_for_scoring("") == []


@pytest.mark.parametrize("text", ["我们去花园儿玩吧", "I bought 3 apples 和两个橙子", "hello, world! 你好αβ",
                                  "U.S.A 的 e-mail"])
def test_units_split_the_phones_into_characters_and_words(ph, text):
    units = ph.units(text)
    assert [p for _, phones in units for p in phones] == ph(text)
    assert all(phones for _, phones in units)


def test_units_known_answer(ph):
    assert ph.units("花儿 and 你") == [("花儿", ("h", "ua1", "rr")), ("and", ("AH0", "N", "D")), ("你", ("n", "i3"))]
