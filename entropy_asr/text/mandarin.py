"""Mandarin (Han) text to inventory phones: pypinyin readings, surface tone sandhi, erhua.

A run of Han characters is cut into words with pypinyin's own maximum-matching segmenter (its
phrase dictionary, so polyphones are read by phrase: 银行 yin2 hang2, 行走 xing2 zou3), each word
is read with Style.TONE3 and neutral tone 5, and then split into initial + tonal final by
pypinyin's strict (Hanyu Pinyin scheme) analysis: yi -> i, wu -> u, yu -> v, no y/w initials.
"""

from __future__ import annotations

import functools
import re

from pypinyin import Style, lazy_pinyin
from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials
from pypinyin.seg.mmseg import seg as _mmseg

from entropy_asr.text.inventory import ERHUA, PHONE_TO_ID, UNK

# Words in which 儿 is a full syllable (ér), not the erhua suffix. Matched as substrings of the run
# when 儿 is not their first character; 儿-initial words only where 儿 also starts a segmenter word,
# so that erhua words running into them (一会儿时间 = 一会儿 + 时间) are not mistaken for them.
NON_ERHUA_WORDS = frozenset(
    ["女儿", "儿女", "儿子", "儿孙", "儿媳", "儿童", "儿科", "儿歌", "儿戏", "儿时", "儿郎", "儿化", "儿皇帝", "儿茶",
     "儿马", "婴儿", "幼儿", "孤儿", "健儿", "男儿", "少儿", "胎儿", "患儿", "犬儿", "豚儿", "宠儿", "弃儿", "孙儿",
     "妻儿", "乳儿", "育儿", "侄儿", "托儿所", "新生儿", "早产儿", "混血儿", "低能儿", "弄潮儿", "宁馨儿", "幸运儿",
     "产儿", "骄儿", "娇儿", "麒麟儿", "小儿科", "小儿麻痹", "黄口小儿", "生儿育女", "养儿防老", "干儿子", "干儿女",
     "健儿们", "孤儿院", "婴幼儿", "少年儿童"]
)
_NON_ERHUA_INNER = tuple(w for w in NON_ERHUA_WORDS if not w.startswith("儿"))
_NON_ERHUA_INITIAL = tuple(w for w in NON_ERHUA_WORDS if w.startswith("儿"))

_SYLLABLE = re.compile(r"([a-zêü]+)([1-5])")
_SYLLABIC_NASALS = {"m": ("m",), "n": ("n",), "ng": ("ng",), "hm": ("h", "m"), "hng": ("h", "ng")}
_NUMERAL_DIGITS = frozenset("零〇一二三四五六七八九")
_YI_NUMBER_PREV = _NUMERAL_DIGITS | {"第", "十"}  # 一 after these is part of a number: 第一, 十一


@functools.lru_cache(maxsize=200_000)
def word_pinyin(word: str) -> tuple[str, ...]:
    """TONE3 readings (tone 5 = neutral) of one segmenter word, one per character; "?" where unknown."""
    syls = lazy_pinyin(
        word, style=Style.TONE3, neutral_tone_with_five=True, tone_sandhi=True,
        errors=lambda chars: ["?"] * len(chars),
    )
    if len(syls) != len(word):  # never seen; keep the one-syllable-per-character invariant anyway
        return tuple(s for ch in word for s in word_pinyin(ch)) if len(word) > 1 else ("?",)
    return tuple(syls)


@functools.lru_cache(maxsize=4096)
def syllable_phones(syl: str) -> tuple[str, ...] | None:
    """Split a TONE3 syllable into inventory phones ("zhuang4" -> zh uang4); None if it cannot be."""
    m = _SYLLABLE.fullmatch(syl)
    if m is None:
        return None
    base, tone = m.groups()
    if base in _SYLLABIC_NASALS:  # strict analysis finds no final in 嗯 n / 呣 m / 哼 hng
        *ini, nasal = _SYLLABIC_NASALS[base]
        phones = (*ini, nasal + tone)
    else:
        base = re.sub(r"^([nl])ue$", r"\1ve", base)  # nue/lue: old spellings of nüe/lüe
        initial = to_initials(base, strict=True)
        final = to_finals_tone3(base + tone, strict=True, neutral_tone_with_five=True)
        if not final:
            return None
        phones = (initial, final) if initial else (final,)
    return phones if all(p in PHONE_TO_ID for p in phones) else None


def _tone(syl: str) -> str:
    return syl[-1] if syl[-1:].isdigit() else ""


def _with_tone(syl: str, tone: str) -> str:
    return syl[:-1] + tone


def _erhua_flags(run: str, words: list[str]) -> list[bool]:
    """Which characters of `run` are an erhua 儿 (merged into the previous syllable as rr)."""
    starts, pos = set(), 0
    for w in words:
        starts.add(pos)
        pos += len(w)
    word_of = []
    for w in words:
        word_of += [len(w)] * len(w)
    protected = set()
    for w in _NON_ERHUA_INNER:
        for m in re.finditer(re.escape(w), run):
            protected.update(i for i in range(m.start(), m.end()) if run[i] == "儿")
    flags = [False] * len(run)
    for i, ch in enumerate(run):
        if ch != "儿" or i == 0 or run[i - 1] == "儿" or i in protected:
            continue
        if i in starts and (word_of[i] > 1 or any(run.startswith(w, i) for w in _NON_ERHUA_INITIAL)):
            continue  # 儿 begins a word: 儿子, 儿童节
        flags[i] = True
    return flags


def apply_sandhi(chars: list[str], syls: list[str], word_final: list[bool]) -> list[str]:
    """Surface tones across a whole run for 一, 不 and third-tone sequences (pypinyin only does it within a word).

    Rules (Standard Chinese phonology, as in pypinyin.contrib.tone_sandhi, extended across words):
    一 before tone 4/5 -> yi2, before 1/2/3 -> yi4, but stays yi1 when read as a number (第一,
    十一, 一九, at the end of a word: 统一) and is neutral in X一X (看一看); 不 before tone 4 -> bu2;
    in a run of n >= 2 third tones all but the last become 2 (an approximation: real speech groups
    them by prosodic word).
    """
    syls = list(syls)
    n = len(syls)
    for i, (ch, syl) in enumerate(zip(chars, syls)):
        nxt = syls[i + 1] if i + 1 < n else ""
        if ch == "一" and syl in ("yi1", "yi2", "yi4") and nxt:
            prev = chars[i - 1] if i else ""
            if prev and i + 1 < n and chars[i + 1] == prev:
                syls[i] = "yi5"
            elif syl == "yi1" and _tone(nxt) and not (
                word_final[i] or prev in _YI_NUMBER_PREV or chars[i + 1] in _NUMERAL_DIGITS
            ):
                syls[i] = "yi2" if _tone(nxt) in "45" else "yi4"
        elif ch == "不" and syl == "bu4" and _tone(nxt) == "4":
            syls[i] = "bu2"
    i = 0
    while i < n:  # third-tone sandhi over maximal runs of tone-3 syllables
        j = i
        while j < n and _tone(syls[j]) == "3":
            j += 1
        for k in range(i, j - 1):
            syls[k] = _with_tone(syls[k], "2")
        i = max(j, i + 1)
    return syls


def han_run_units(run: str) -> tuple[list[tuple[str, tuple[str, ...]]], tuple[str, ...]]:
    """Per spoken character of a Han run, (character, its phones), and the characters that became <unk>.

    An erhua 儿 joins the character before it (花儿 -> ("花儿", (h, ua1, er))); the phones of all
    units, in order, are han_run_phones(run).
    """
    words = list(_mmseg.cut(run))
    syls = [s for w in words for s in word_pinyin(w)]
    word_final = []
    for w in words:
        word_final += [False] * (len(w) - 1) + [len(w) > 1]
    erhua = _erhua_flags(run, words)
    keep = [i for i in range(len(run)) if not erhua[i]]
    surface = apply_sandhi([run[i] for i in keep], [syls[i] for i in keep], [word_final[i] for i in keep])
    units, unks = [], []
    for k, i in enumerate(keep):
        p = syllable_phones(surface[k])
        if p is None:
            units.append((run[i], (UNK,)))
            unks.append(run[i])
        else:
            units.append((run[i], tuple(p)))
        if i + 1 < len(run) and erhua[i + 1] and p is not None:
            units[-1] = (run[i] + run[i + 1], units[-1][1] + (ERHUA,))
        elif i + 1 < len(run) and erhua[i + 1]:  # 儿 after an unreadable character: read it as er
            units.append((run[i + 1], tuple(syllable_phones(syls[i + 1]) or (UNK,))))
    return units, tuple(unks)


def han_run_phones(run: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Phones for a run of Han characters, and the characters that became <unk> (one <unk> phone each)."""
    units, unks = han_run_units(run)
    return tuple(p for _, phones in units for p in phones), unks
