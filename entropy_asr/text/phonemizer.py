"""Transcript -> flat list of inventory phones, for Mandarin, English and code-switched text.

Script decides the language of each piece (split_by_script): Han runs are read as Mandarin, Latin
runs as English, punctuation and spaces give nothing. A digit string is read in Mandarin when it
touches Han text (3个, 2024年) and in English when it touches English words; an isolated one
follows the nearest word, then the language hint. Anything no rule reads (Greek, Cyrillic, emoji,
a character pypinyin cannot romanize) becomes one <unk> phone per token and is counted.
"""

from __future__ import annotations

import collections
import re
import unicodedata

from entropy_asr.errors import UserError
from entropy_asr.text.english import latin_run_phones
from entropy_asr.text.inventory import UNK
from entropy_asr.text.mandarin import han_run_units
from entropy_asr.text.numbers import zh_number
from entropy_asr.text.script import has_han, split_by_script

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # 1,000 -> 1000 before splitting
_LANGUAGES = (None, "zh", "en", "mix", "none")
# Inside "other" runs: these categories are words or pictographs someone said aloud, so they
# become <unk>; punctuation, spaces, math and modifier symbols (~ + = ^) are silent.
_UNK_CATEGORIES = ("L", "N", "M", "So", "Sc")
_JOINERS = {"\u200d", "\ufe0f", "\ufe0e"}  # keep an emoji ZWJ sequence as one token


def _other_tokens(run: str) -> list[tuple[str, str]]:
    """[(kind, token)] for an "other" run: ("unk", token) for readable-but-unknown tokens, ("en", "and") for &."""
    out: list[tuple[str, str]] = []
    cur = ""
    for ch in run:
        cat = unicodedata.category(ch)
        if cur and (ch in _JOINERS or cur[-1] in _JOINERS or cat in ("Mn", "Me", "Sk")):
            cur += ch  # combining mark, emoji modifier or joiner continues the token
            continue
        if cur and cat.startswith(("L", "N", "M")) and unicodedata.category(cur[-1]).startswith(("L", "N", "M")):
            cur += ch  # a word in a script without rules (Привет) is one token
            continue
        if cur:
            out.append(("unk", cur))
            cur = ""
        if ch == "&":
            out.append(("en", "and"))
        elif cat.startswith(_UNK_CATEGORIES):
            cur = ch
    if cur:
        out.append(("unk", cur))
    return out


class Phonemizer:
    """Callable text -> phones front end; picklable, loads its dictionaries on first use, counts <unk> tokens."""

    def __init__(self) -> None:
        # Dictionaries, the G2P model and word caches live at module level (loaded lazily, once per
        # process), so an instance holds only this counter and pickles in microseconds.
        self.unk_counts: collections.Counter[str] = collections.Counter()

    def __call__(self, text: str, language: str | None = None) -> list[str]:
        """Phones for `text`; `language` ("zh"/"en"/"mix"/"none") only decides isolated numbers."""
        return self.phonemize_with_unk(text, language)[0]

    def phonemize_with_unk(self, text: str, language: str | None = None) -> tuple[list[str], int]:
        """Phones for `text` and how many <unk> phones they contain (also added to unk_counts)."""
        units, unk = self.units_with_unk(text, language)
        return [p for _, phones in units for p in phones], unk

    def units(self, text: str, language: str | None = None) -> list[tuple[str, tuple[str, ...]]]:
        """[(unit, its phones)] in spoken order, a unit being a Mandarin character (with its erhua 儿) or an
        English word (lowercased) or an unreadable token; the phones of all units are self(text)."""
        return self.units_with_unk(text, language)[0]

    def units_with_unk(self, text: str, language: str | None = None) -> tuple[list[tuple[str, tuple[str, ...]]], int]:
        if language not in _LANGUAGES:
            raise UserError(f"language={language!r}: use one of {_LANGUAGES}")
        units: list[tuple[str, tuple[str, ...]]] = []
        unks: list[str] = []
        for lang, piece in self._pieces(text, language):
            if lang == "zh":
                u, unk = han_run_units(piece)
            elif lang == "en":
                p, unk = latin_run_phones(piece)
                u = [(piece.lower(), tuple(p))] if p else []
            else:
                u, unk = [(piece, (UNK,))], (piece,)
            units += u
            unks += unk
        self.unk_counts.update(unks)
        return units, len(unks)

    def _pieces(self, text: str, language: str | None) -> list[tuple[str, str]]:
        """Cut `text` into ("zh", Han text) / ("en", Latin run) / ("unk", token); numbers become Chinese numerals
        in zh."""
        text = _THOUSANDS_COMMA.sub("", unicodedata.normalize("NFKC", text))
        runs = split_by_script(text)
        fallback = "zh" if has_han(text) or language == "zh" else "en"
        pieces: list[tuple[str, str]] = []
        glue = False  # True when the last piece is Han text directly touching the current run
        for i, (script, run) in enumerate(runs):
            if script == "other":
                glue = False
                pieces += _other_tokens(run)  # a "%" is read with the number before it, not here
                continue
            lang = "en"
            if script == "han":
                lang, zh = "zh", run
            elif _NUMBER.fullmatch(run):
                lang = self._number_language(runs, i, fallback)
                if lang == "zh":
                    nxt = runs[i + 1][1] if i + 1 < len(runs) else ""
                    zh = zh_number(run, next_char=nxt[:1])
                    if nxt.startswith("%"):
                        zh = "百分之" + zh
                elif i + 1 < len(runs) and runs[i + 1][1].startswith("%"):
                    pieces += [("en", run), ("en", "percent")]
                    continue
            if lang == "zh":
                if glue:  # merge with the touching Han text so sandhi and phrases see it: 1个 -> 一个
                    pieces[-1] = ("zh", pieces[-1][1] + zh)
                else:
                    pieces.append(("zh", zh))
                glue = True
            else:
                pieces.append(("en", run))
                glue = False
        return pieces

    @staticmethod
    def _number_language(runs: list[tuple[str, str]], i: int, fallback: str) -> str:
        """Mandarin or English reading for the digit run runs[i], from the words around it."""
        def neighbour(step: int) -> tuple[str | None, bool]:
            """Script of the nearest non-number word in direction `step`, and whether it touches the digits."""
            j, touching = i + step, True
            while 0 <= j < len(runs) and runs[j][0] == "other":
                j, touching = j + step, False
            if 0 <= j < len(runs) and not _NUMBER.fullmatch(runs[j][1]):
                return runs[j][0], touching
            return None, touching

        near = [neighbour(-1), neighbour(+1)]
        for want_touching in (True, False):  # a touching word decides before a distant one
            scripts = [s for s, t in near if s and (t or not want_touching)]
            if "han" in scripts:
                return "zh"
            if "latin" in scripts:
                return "en"
        return fallback

