"""Text normalization for training targets and scoring (CER/WER/MER), Mandarin, English and mixed.

English pieces go through Whisper's English normalizer (lowercase, no punctuation, spelled-out
numbers standardized, British -> American spelling). Mandarin pieces get NFKC (full-width ->
half-width), lose all punctuation and symbols and the spaces between Han characters, and can be
converted from traditional to simplified characters. Whisper's normalizer is never applied to Han
text. Joined, Han characters run together, English words are separated by single spaces, and one
space separates a Han run from an adjacent English word: "我们明天去Office开会！" -> "我们明天去 office 开会".
"""

from __future__ import annotations

import functools
import re
import unicodedata

from entropy_asr.errors import UserError
from entropy_asr.text.script import _HAN, has_han, has_latin, split_by_script

_LANGUAGES = (None, "zh", "en", "mix", "none")
_TOKEN = re.compile(rf"[{_HAN}]|[^\s{_HAN}]+")
_NUMERIC = re.compile(r"[\d.%]+")


@functools.lru_cache(maxsize=1)
def _english_normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@functools.lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def _strip_symbols(text: str) -> str:
    """Drop Unicode P*/S* characters, except a decimal point or a percent sign that belongs to a number."""
    out = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch)[0] in "PS":
            prev, nxt = text[i - 1:i], text[i + 1:i + 2]
            if not ((ch == "." and prev.isdigit() and nxt.isdigit()) or (ch == "%" and prev.isdigit())):
                out.append(" ")
                continue
        out.append(ch)
    return "".join(out)


def _piece_tokens(piece: str) -> list[str]:
    """Tokens of a non-Han piece: Whisper-normalized words if it has Latin letters, else the cleaned-up rest
    (digits)."""
    if has_latin(piece):
        return _english_normalizer()(piece).split()
    return _strip_symbols(piece).lower().split()


def normalize_text(text: str, language: str | None = None, *, t2s: bool = False) -> str:
    """Normalized transcript for targets and scoring; `language` is a hint only (the script of each piece decides)."""
    if language not in _LANGUAGES:
        raise UserError(f"language={language!r}: use one of {_LANGUAGES}")
    text = unicodedata.normalize("NFKC", text)
    if t2s and has_han(text):
        text = _t2s().convert(text)
    tokens: list[tuple[bool, str]] = []  # (is_han, token)
    pending = ""
    for script, run in split_by_script(text) + [("han", "")]:  # a sentinel flushes the last piece
        if script != "han":
            pending += run
            continue
        tokens += [(False, t) for t in _piece_tokens(pending)] if pending else []
        pending = ""
        if run:
            tokens.append((True, run))
    out = ""
    for i, (is_han, tok) in enumerate(tokens):
        if i:
            prev_han, prev = tokens[i - 1]
            # Han text takes no spaces, and digits stay glued to it (2024年, 3个); all else is spaced.
            glued = (is_han and prev_han) or (is_han and _NUMERIC.fullmatch(prev)) or (
                prev_han and _NUMERIC.fullmatch(tok))
            out += "" if glued else " "
        out += tok
    return out


def tokenize_for_scoring(norm_text: str) -> list[str]:
    """Scoring units of normalized text: every Han character alone, plus whitespace-separated non-Han words."""
    return _TOKEN.findall(norm_text)
