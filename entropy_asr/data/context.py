"""Hotword lists for context SFT: which words of a transcript go into the prompt, and which distractors with them.

Context SFT (context biasing) trains the speech LLM with a list of hotwords in its prompt, so that at inference a
user's list of names and terms steers the transcript toward them. A list that always held exactly the words said
would teach the model to copy the list, so each training utterance draws one of three kinds of list
(`HotwordSampler.sample`, deterministic given the caller's `random.Random`):

* no list at all (`share_none`): the prompt stays as without context, so the model keeps working without one;
* distractors only (`share_distractors_only`): words that were not said, so the model learns not to copy;
* the rest: up to `max_present` words of the transcript itself, the rarest first (a rare word is what a hotword
  list is for, and what the model gets wrong without one), plus distractors.

Distractors are hard where they can be: for each present word (in a distractors-only list: for each word that would
have been present) `distractors_per_present` words drawn from its `neighbours` phonetically nearest vocabulary
words, then `random_distractors` random vocabulary words. A list for an utterance with fewer than `max_present`
candidate words (a short one, a non-speech clip), or whose anchors have too few unsaid neighbours, gets random words
in place of the missing distractors, so the number of distractors says nothing about the audio (short of a
vocabulary too small to draw them from). A distractor is never a word the transcript says, compared on the scoring
units (as `hotword_contained` compares), nor a homophone of one of its words (same phones): a distractor the
audio contains would teach the model to ignore the audio.

The vocabulary is counted from the training transcripts (`from_texts`, `from_shards`): English words as scoring
normalizes them (Whisper's normalizer: lowercase, no punctuation) and Mandarin words of 2+ characters (jieba's
dictionary words; its HMM guesses at unknown words are not used, so a candidate is always a real word). Each word is
phonemized once with the project's Phonemizer (English words as "en", Mandarin words as "zh", as HotwordIndex reads
them); a word of fewer than `min_phones` phones is no candidate (too short to be worth biasing, and it would match
everywhere). Phone edit distance: every phone becomes one character and rapidfuzz's Levenshtein distance compares
the strings, one query against the ~10k words of a script in about a millisecond.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from entropy_asr.errors import UserError
from entropy_asr.metrics.error_rate import contains_units, score_units
from entropy_asr.text import Phonemizer, normalize_text
from entropy_asr.text.script import _HAN, has_han

LANGUAGES = ("zh", "en", "mix", "none")
SCRIPTS = ("en", "zh")  # the two vocabularies: a word's script decides which one it belongs to
_HAN_RUN = re.compile(f"[{_HAN}]+")
_EN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")  # a normalized English token that is a word (no digits)


@dataclass
class ContextConfig:
    """How `HotwordSampler.sample` builds an utterance's hotword list (the `context` section of a config)."""

    share_none: float = 0.2  # share of utterances with no hotword list at all (prompt unchanged)
    share_distractors_only: float = 0.2  # share whose list holds only distractors (words not said): learn not to copy
    max_present: int = 2  # hotwords taken from the utterance's own transcript (rarest first)
    distractors_per_present: int = 2  # phonetically nearest vocabulary words per present hotword (not in the text)
    random_distractors: int = 1  # plus this many random vocabulary words
    min_phones: int = 3  # a hotword candidate needs at least this many phones
    neighbours: int = 20  # nearest-neighbour pool per word (phone edit distance) to draw distractors from

    def __post_init__(self) -> None:
        for name in ("share_none", "share_distractors_only"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise UserError(f"context.{name}: expected a share in [0, 1], got {value!r}")
        if self.share_none + self.share_distractors_only > 1.0:
            raise UserError(f"context.share_none + context.share_distractors_only = "
                            f"{self.share_none} + {self.share_distractors_only} > 1: lower one of them (the "
                            f"utterances left over get a list with their own words)")
        for f in fields(self):
            if f.type != "int":
                continue
            value, low = getattr(self, f.name), 1 if f.name in ("min_phones", "neighbours") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"context.{f.name}: expected an integer >= {low}, got {value!r}")


@dataclass
class Hotwords:
    """One utterance's hotword list: what goes into the prompt and which of it was said."""

    words: list[str] = field(default_factory=list)  # the list as it goes into the prompt (shuffled), present + absent
    present: list[str] = field(default_factory=list)  # those the transcript contains
    absent: list[str] = field(default_factory=list)  # distractors


def hotword_contained(text: str, hotword: str, language: str) -> bool:
    """Whether `text` says `hotword`: its scoring units (metrics.error_rate.score_units: Han characters, normalized
    English words) occur contiguously in the text's, both read as `language`. "北京" is in "我去北京了"; "tom" is
    in "I met Tom" but not in "tomorrow"."""
    units = score_units(hotword, language)
    if not units:
        raise UserError(f"hotword {hotword!r} has no scoring units after normalization (punctuation or blank): "
                        f"remove it from the hotword list")
    return contains_units(score_units(text, language), units)


@functools.lru_cache(maxsize=1)
def _segmenter():
    """jieba's tokenizer with its own dictionary, a private instance (wordfreq loads another dictionary into one)."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba.Tokenizer()


def word_tokens(text: str, language: str) -> list[tuple[str, str]]:
    """[(script, word)] of a transcript in spoken order, repeats included: ("en", English word) and ("zh", Mandarin
    word of 2+ characters), both from the text as scoring normalizes it (normalize_text). Han runs are cut with
    jieba's dictionary only (no HMM guesses at unknown words, which are often not words)."""
    if language not in LANGUAGES:
        raise UserError(f"language={language!r}: use one of {LANGUAGES}")
    out: list[tuple[str, str]] = []
    for token in normalize_text(text, language).split() if text.strip() else []:
        if _EN_WORD.fullmatch(token):
            out.append(("en", token))
            continue
        for run in _HAN_RUN.findall(token):  # a token may glue digits to Han text: 开会3个人
            out += [("zh", w) for w in _segmenter().lcut(run, HMM=False) if len(w) >= 2]
    return out


def transcript_words(text: str, language: str) -> list[tuple[str, str]]:
    """`word_tokens` without repeats (first occurrence kept)."""
    return list(dict.fromkeys(word_tokens(text, language)))


def script_of(word: str) -> str:
    """The vocabulary a word belongs to: "zh" if it has Han characters, else "en"."""
    return "zh" if has_han(word) else "en"


class PhoneVocabulary:
    """Words with their phones, searched by phone edit distance (each phone one character, rapidfuzz Levenshtein).

    Ties are broken by the smaller difference in length (phones), then by the word's position in `words`, so the
    order is a pure function of the vocabulary.
    """

    def __init__(self, words: Sequence[str], phones: Sequence[Sequence[str]]):
        if len(words) != len(phones):
            raise ValueError(f"PhoneVocabulary: {len(words)} words but {len(phones)} phone sequences")
        self.words = list(words)
        self._code: dict[str, str] = {}  # phone -> its character, assigned in first-seen order
        self._strings = [self.encode(p) for p in phones]
        self._lengths = np.array([len(s) for s in self._strings], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, phones: Sequence[str]) -> str:
        """The phones as a string, one character each (private-use code points: no clash with any text)."""
        return "".join(self._code.setdefault(p, chr(0xF0000 + len(self._code))) for p in phones)

    def nearest(self, phones: Sequence[str], k: int) -> list[str]:
        """Up to `k` words nearest to `phones`, nearest first; homophones (distance 0, the word itself among them)
        are left out."""
        if not self.words or k <= 0:
            return []
        query = self.encode(phones)
        dist = process.cdist([query], self._strings, scorer=Levenshtein.distance, dtype=np.int32, workers=1)[0]
        order = np.lexsort((np.arange(len(dist)), np.abs(self._lengths - len(query)), dist))
        out: list[str] = []
        for i in order:
            if dist[i] == 0:
                continue
            out.append(self.words[i])
            if len(out) == k:
                break
        return out


class HotwordSampler:
    """Draws each training utterance's hotword list (module docstring) from a vocabulary counted on the training
    transcripts. Build it with `from_texts` or `from_shards`; `sample` is then cheap (cached neighbours)."""

    def __init__(self, counts: dict[str, Counter], phones: dict[str, tuple[str, ...]],
                 config: ContextConfig | None = None,
                 phonemizer: Callable[[str, str | None], list[str]] | None = None):
        """`counts`: script -> word -> occurrences in the training transcripts; `phones`: word -> its phones (every
        word of `counts`). Prefer the `from_*` constructors."""
        self.config = config or ContextConfig()
        self._phonemize = phonemizer or Phonemizer()
        self._counts = {s: Counter(counts.get(s, {})) for s in SCRIPTS}
        self._phones = dict(phones)
        vocab = {s: sorted(w for w in self._counts[s] if len(self._phones[w]) >= self.config.min_phones)
                 for s in SCRIPTS}
        self.vocabulary = {s: PhoneVocabulary(vocab[s], [self._phones[w] for w in vocab[s]]) for s in SCRIPTS}
        self._neighbours: dict[tuple[str, str], tuple[int, list[str]]] = {}  # -> (k asked, nearest)
        self._pools: dict[tuple[str, ...], list[str]] = {}  # scripts -> their vocabulary words (random distractors)

    @classmethod
    def from_texts(cls, texts: list[str], languages: list[str], config: ContextConfig | None = None,
                   phonemizer: Callable[[str, str | None], list[str]] | None = None) -> HotwordSampler:
        """The vocabulary with counts of these training transcripts (in `languages`: "zh", "en", "mix", "none")."""
        if len(texts) != len(languages):
            raise ValueError(f"from_texts: {len(texts)} texts but {len(languages)} languages")
        phonemize = phonemizer or Phonemizer()
        counts: dict[str, Counter] = {s: Counter() for s in SCRIPTS}
        for text, language in zip(texts, languages):
            for script, word in word_tokens(text, language):
                counts[script][word] += 1
        phones = {w: tuple(phonemize(w, s)) for s in SCRIPTS for w in counts[s]}
        return cls(counts, phones, config, phonemize)

    @classmethod
    def from_shards(cls, shard_dir: str | Path, config: ContextConfig | None = None) -> HotwordSampler:
        """The vocabulary of a shard dir's transcripts (entropy_asr.data.shards; no audio is decoded)."""
        from entropy_asr.data.shards import read_transcripts

        metas = read_transcripts(shard_dir)
        return cls.from_texts([m.get("text", "") for m in metas], [m.get("language", "none") for m in metas], config)

    def phones(self, word: str) -> tuple[str, ...]:
        """A word's phones (phonemized once, as its script's language)."""
        if word not in self._phones:
            self._phones[word] = tuple(self._phonemize(word, script_of(word)))
        return self._phones[word]

    def count(self, word: str) -> int:
        """How often the training transcripts say `word` (0 for a word they never say)."""
        return self._counts[script_of(word)].get(word, 0)

    def candidates(self, text: str, language: str) -> list[str]:
        """The transcript's words of at least `min_phones` phones, rarest first (fewest occurrences in the
        vocabulary, an unseen word counting 0), ties by more phones, then alphabetically."""
        return self._rank([w for _, w in transcript_words(text, language)])

    def _rank(self, words: list[str]) -> list[str]:
        """candidates() of a transcript's words."""
        words = [w for w in words if len(self.phones(w)) >= self.config.min_phones]
        return sorted(words, key=lambda w: (self.count(w), -len(self.phones(w)), w))

    def neighbours(self, word: str, language: str, k: int) -> list[str]:
        """The `k` vocabulary words nearest to `word` by phone edit distance, nearest first (ties: closer length,
        then alphabetical), homophones and the word itself left out. The word's script picks the vocabulary
        (English words get English neighbours, Mandarin words Mandarin ones, also in a "mix" utterance);
        `language` is the utterance's tag and is only checked. Cached per word."""
        if language not in LANGUAGES:
            raise UserError(f"language={language!r}: use one of {LANGUAGES}")
        script = script_of(word)
        asked, found = self._neighbours.get((script, word), (0, []))
        if k > asked:
            asked = max(k, self.config.neighbours)
            found = self.vocabulary[script].nearest(self.phones(word), asked)
            self._neighbours[(script, word)] = (asked, found)
        return found[:k]

    def sample(self, text: str, language: str, rng: random.Random) -> Hotwords:
        """The hotword list for one utterance (module docstring); the same rng state gives the same list."""
        c = self.config
        mode = rng.random()
        if mode < c.share_none:
            return Hotwords()
        distractors_only = mode < c.share_none + c.share_distractors_only
        text_units = score_units(text, language) if text.strip() else []
        words = [w for _, w in transcript_words(text, language)]
        sounds = {self.phones(w) for w in words}  # a homophone is as good as said
        said = lambda w: self.phones(w) in sounds or contains_units(text_units, _units(w, language))
        anchors = self._rank(words)[:c.max_present]
        present = [] if distractors_only else list(anchors)
        absent: list[str] = []
        for anchor in anchors:
            pool = [w for w in self.neighbours(anchor, language, c.neighbours) if w not in absent and not said(w)]
            absent += rng.sample(pool, min(c.distractors_per_present, len(pool)))
        # random words make up every distractor the anchors did not give (missing anchors, short neighbour pools)
        n_random = c.max_present * c.distractors_per_present + c.random_distractors - len(absent)
        absent += self._random_words(language, n_random, rng, lambda w: w in absent or said(w))
        words = present + absent
        rng.shuffle(words)
        return Hotwords(words, present, absent)

    def _random_words(self, language: str, n: int, rng: random.Random, reject: Callable[[str], bool]) -> list[str]:
        """Up to `n` distinct random vocabulary words of the utterance's scripts (both for "mix" and "none") that
        `reject` does not reject."""
        scripts = {"en": ("en",), "zh": ("zh",)}.get(language, SCRIPTS)
        if scripts not in self._pools:
            self._pools[scripts] = [w for s in scripts for w in self.vocabulary[s].words]
        pool = self._pools[scripts]
        out: list[str] = []
        for _ in range(20 * n):  # rejection sampling; a vocabulary of mostly unsayable words just gives fewer
            if len(out) == n or not pool:
                break
            word = rng.choice(pool)
            if word not in out and not reject(word):
                out.append(word)
        return out



@functools.lru_cache(maxsize=200_000)
def _units(word: str, language: str) -> list[str]:
    """score_units of a vocabulary word, cached (sample() checks every distractor against the transcript)."""
    return score_units(word, language)
