"""Everyday sentences of varied structure in Mandarin, English and code-switched Mandarin.

A small generative grammar per language: statements in several tenses and aspects, negation,
modals, copulas, existentials, questions (yes/no, wh-, A-not-A), commands, comparisons,
subordinate and relative clauses, 把/被 constructions, numbers and measure words. Content slots
draw from frequency-weighted part-of-speech lexicons (entropy_asr.data.lexicon, thousands of words
per language); the grammar supplies the function words itself. Everything is fixed data plus the
caller's `random.Random`, so one seed gives the same sentences on every machine.

Each sentence comes with its structure id ("en/question.wh+en/because", ...), the constructions it
was built from, so a study can count or hold out structures.
"""

from __future__ import annotations

import random
import re

from entropy_asr.data.lexicon import (
    EnglishLexicon,
    MandarinLexicon,
    Words,
    english_lexicon,
    mandarin_lexicon,
)
from entropy_asr.errors import UserError
from entropy_asr.text.english import cmu

LANGUAGES = ("zh", "en", "mix")
GRAMMAR_VERSION = 5  # part of the corpus version: sentences change when this grammar or its lexicons do
# Share of each part of speech in `vocab_size` content words per language.
_EN_SHARE = {"nouns": 0.58, "verbs": 0.17, "adjectives": 0.19, "adverbs": 0.06}
_ZH_SHARE = {"nouns": 0.55, "verbs": 0.33, "adjectives": 0.08, "places": 0.04}
_HAN = re.compile(r"[\u4e00-\u9fff]+")
# Length bounds: English in words, Mandarin and mixed in Han characters.
_LENGTH = {"en": (3, 20), "zh": (4, 25), "mix": (4, 25)}

# ---- English closed classes (every word is in CMUdict; the tests check it) ----------------------
_PRONOUNS = (("I", "me", "my", 1), ("you", "you", "your", 2), ("he", "him", "his", 3), ("she", "her", "her", 3),
             ("we", "us", "our", 4), ("they", "them", "their", 4), ("it", "it", "its", 3))
_NAMES = ("Tom", "Mary", "John", "Lisa", "David", "Sarah", "Mike", "Anna", "James", "Emma", "Peter", "Linda",
          "Kevin", "Amy", "Jack", "Susan", "Daniel", "Helen", "Chris", "Kate")
_PEOPLE = ("my friend", "our teacher", "the manager", "my mother", "his brother", "the doctor", "your neighbor",
           "her sister", "my father", "the kids", "our boss", "my wife", "her husband", "the students")
_NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "fifteen",
            "twenty", "thirty", "fifty", "a hundred", "a few", "several", "many", "some")
_TIMES = ("today", "tomorrow", "yesterday", "tonight", "this morning", "this afternoon", "this evening",
          "on Tuesday", "on Wednesday", "on Thursday", "on Saturday", "on Sundays", "every Sunday", "next Monday",
          "last Friday", "in January", "in March", "in May", "in July", "in September", "in December",
          "again", "already", "ever since",
          "next week", "last week", "last year", "next month", "on Monday", "on Friday", "on Sunday",
          "at night", "every day", "in the morning", "last night", "right now", "soon", "later", "this weekend",
          "two days ago", "at five o'clock", "in a minute", "every morning")
_FREQ = ("always", "usually", "often", "sometimes", "never", "rarely", "really", "just", "also", "still", "even",
         "almost", "already", "probably")
# After the verb: phrasal particles ("turn off", "come back", "pick up") and everyday adverbs.
_PARTICLES = ("back", "out", "up", "down", "off", "away", "again", "over", "around", "in", "on", "home", "together")
# English places and nationalities (capitalized; every word is in CMUdict)
_EN_PLACES = ("London", "Paris", "New York", "Japan", "China", "Canada", "Beijing", "Shanghai", "California", "Texas",
              "Boston", "Chicago", "Germany", "France", "Italy", "India", "Mexico", "Australia", "Tokyo", "Europe")
_NATIONALITIES = ("Chinese", "Japanese", "Italian", "French", "American", "English", "German", "Korean", "Spanish",
                  "Indian", "Mexican", "British")
# Indefinite pronouns: subjects (3rd person singular) and objects
_SOMEONE = ("everyone", "someone", "nobody", "everybody", "somebody", "no one")
_SOMETHING = ("something", "nothing", "everything", "anything", "a lot", "enough", "more", "the rest")
_DEGREE = ("very", "really", "so", "quite", "too", "pretty", "a little", "extremely", "not very")
_PREPS = ("in", "on", "at", "with", "for", "from", "to", "about", "near", "under", "after", "before", "behind",
          "without", "into", "around", "between the house and")
_MODALS = ("can", "should", "must", "might", "could", "would", "will")
_SUB = ("because", "when", "if", "although", "after", "before", "while", "since", "until", "unless")
_COORD = ("and", "but", "so", "or")
_WANT = ("want to", "need to", "have to", "would like to", "plan to", "tried to", "forgot to", "decided to",
         "hope to", "are going to")
_SAY = ("think", "know", "believe", "said", "heard", "hope", "guess", "told me", "feel", "noticed")
_CONTRACT = {("I", "am"): "I'm", ("you", "are"): "you're", ("we", "are"): "we're", ("they", "are"): "they're",
             ("he", "is"): "he's", ("she", "is"): "she's", ("it", "is"): "it's", ("do", "not"): "don't",
             ("does", "not"): "doesn't", ("did", "not"): "didn't", ("will", "not"): "won't", ("can", "not"): "can't",
             ("is", "not"): "isn't", ("are", "not"): "aren't", ("was", "not"): "wasn't", ("I", "will"): "I'll",
             ("have", "not"): "haven't", ("should", "not"): "shouldn't", ("could", "not"): "couldn't",
             ("would", "not"): "wouldn't", ("has", "not"): "hasn't", ("I", "have"): "I've", ("we", "will"): "we'll"}

# ---- Mandarin closed classes ---------------------------------------------------------------------
_ZH_PRONOUNS = ("我", "你", "他", "她", "我们", "你们", "他们", "大家", "咱们", "您")
_ZH_PEOPLE = ("老师", "我朋友", "经理", "我妈妈", "他爸爸", "我哥哥", "她姐姐", "医生", "同事", "邻居", "老板",
              "学生们", "小王", "小李", "张老师", "王经理", "李阿姨", "孩子们", "我同学", "司机")
_ZH_TIMES = ("今天", "明天", "昨天", "上午", "下午", "晚上", "周末", "明年", "去年", "刚才", "现在", "每天", "下个月",
             "上个星期", "早上", "中午", "后天", "前天", "最近", "以前", "将来", "今年", "这几天", "星期一", "星期五",
             "下周三", "过几天", "春节的时候", "八点半", "三点钟")
_ZH_DEGREE = ("很", "非常", "特别", "比较", "有点", "真", "太", "挺", "相当", "十分", "越来越")
_ZH_ADV = ("也", "都", "已经", "还", "经常", "一直", "马上", "常常", "刚", "又", "总是", "终于", "突然", "一起", "再",
           "先", "差不多", "其实", "确实")
_ZH_MODAL = ("想", "要", "会", "能", "可以", "应该", "打算", "准备", "愿意", "需要", "得", "必须", "喜欢")
_ZH_NUM = ("一", "两", "三", "四", "五", "六", "七", "八", "九", "十", "几", "二十", "一百", "好几", "这", "那", "每")
_ZH_MEASURE = ("个", "个", "个", "种", "些", "件", "本", "张", "次", "位", "家", "条", "份", "台", "只", "点")
_ZH_PLACE_SUFFIX = ("里", "上", "旁边", "附近", "外面", "对面", "门口", "下面")
_ZH_PLACES = ("家里", "公司", "学校", "图书馆", "超市", "医院", "办公室", "饭店", "机场", "火车站", "公园", "银行",
              "商店", "外面", "楼下", "教室", "宿舍", "厨房", "会议室", "食堂")
_ZH_SAY = ("觉得", "知道", "认为", "听说", "发现", "希望", "相信", "说", "告诉我", "担心", "记得", "以为")
_ZH_SUB = (("因为", "所以"), ("虽然", "但是"), ("如果", "就"), ("只要", "就"), ("既然", "就"), ("即使", "也"),
           ("不但", "而且"), ("除非", "否则"))
_ZH_CONJ = ("但是", "所以", "而且", "不过", "然后", "可是", "因此", "于是", "同时", "另外", "结果")
_ZH_NOT_PLACES = frozenset(["城市", "东西", "美丽", "英雄", "福利", "哥哥", "太阳", "上市", "云", "南", "北", "东",
                            "德", "美", "西", "中华", "东方"])
# Words Mandarin speakers commonly switch into English for; all in CMUdict.
_CODE_SWITCH = {
    "en": ("meeting", "deadline", "project", "email", "schedule", "team", "manager", "report",
           "presentation", "feedback", "idea", "plan", "app", "online", "update", "budget", "client",
           "design", "marketing", "weekend", "party", "shopping", "coffee", "office", "interview",
           "offer", "boss", "version", "issue", "point", "case", "style", "level", "laptop", "password",
           "video", "game", "movie", "music", "brand", "customer", "data", "model", "demo", "training",
           "lunch", "dinner", "review", "target", "proposal", "contract", "account", "ticket", "hotel",
           "taxi", "menu", "course", "exam", "homework", "phone", "message", "website", "link", "file"),
    "en_verb": ("check", "follow", "update", "confirm", "share", "review", "focus", "download", "upload", "cancel",
                "book", "print", "email", "call", "post", "delete", "copy", "push", "sync", "test"),
    "en_adj": ("cool", "nice", "fancy", "professional", "busy", "simple", "easy", "casual", "cute", "smart",
               "happy", "sorry", "crazy", "perfect", "random", "fine"),
    "phrase": ("by the way", "no problem", "good job", "make sense", "last minute", "so far",
               "work from home", "happy hour", "of course", "thank you", "see you", "take care"),
}


def _check_language(language: str) -> None:
    """Raise ValueError unless `language` is one this module generates."""
    if language not in LANGUAGES:
        raise UserError(f"language must be one of {LANGUAGES}, got {language!r}")


def _pick(rng: random.Random, words: Words):
    """One item of `words`, frequency-weighted."""
    return rng.choices(words.items, cum_weights=words.cum_weights)[0]


def _sizes(total: int, shares: dict[str, float]) -> dict[str, int]:
    return {k: max(1, round(total * s)) for k, s in shares.items()}


class SentenceGenerator:
    """Random sentences in "zh", "en" or "mix" (Mandarin with English words), fixed by the caller's rng.

    Args:
        vocab_size: content words per language (nouns, verbs, adjectives, ...), most frequent first.
    """

    def __init__(self, vocab_size: int = 6000) -> None:
        if vocab_size < 40:
            raise UserError(f"vocab_size must be >= 40 content words per language, got {vocab_size}")
        self.vocab_size = vocab_size
        self.en: EnglishLexicon = english_lexicon(**_sizes(vocab_size, _EN_SHARE))
        zh = mandarin_lexicon(**_sizes(vocab_size, _ZH_SHARE))
        places = [w for w in zh.places.items if len(w) >= 2 and w not in _ZH_NOT_PLACES]
        self.zh: MandarinLexicon = zh
        self._zh_places = Words(tuple(places), tuple(zh.places.weights[zh.places.items.index(w)] for w in places))
        self._pron = cmu()

    def vocabulary(self, language: str) -> list[str]:
        """Every content word of "zh" or "en" the generator can use (all written forms), sorted."""
        if language == "en":
            return self.en.words()
        if language == "zh":
            return self.zh.words()
        raise UserError(f"vocabulary language must be 'zh' or 'en', got {language!r}")

    def sentence(self, rng: random.Random, language: str) -> str:
        """One written sentence in `language` ("zh", "en" or "mix"), drawn with `rng` only."""
        return self.sentence_and_template(rng, language)[0]

    def sentence_and_template(self, rng: random.Random, language: str) -> tuple[str, str]:
        """A sentence and its structure id (e.g. "en/statement.past+en/because")."""
        _check_language(language)
        low, high = _LENGTH[language]
        for _ in range(100):  # resample until the length is in range: a pure function of the rng's stream
            if language == "en":
                text, structure = self._english(rng)
            else:
                text, structure = self._mandarin(rng, mix=language == "mix")
            if low <= _length(text, language) <= high:
                return text, structure
        raise RuntimeError(f"no {language} sentence within {low}-{high} after 100 tries")  # not reached in practice

    # ---- English --------------------------------------------------------------------------------
    def _english(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choices(("statement", "question", "command"), (0.62, 0.26, 0.12))[0]
        clause, structure = getattr(self, f"_en_{kind}")(rng)
        if kind == "statement" and rng.random() < 0.3:  # a second clause: subordinate or coordinate
            other, other_structure = self._en_statement(rng)
            if rng.random() < 0.6:
                sub = rng.choice(_SUB)
                clause = f"{clause} {sub} {other}" if rng.random() < 0.7 else f"{sub} {other}, {clause}"
                structure += f"+en/{sub}+{other_structure}"
            else:
                conj = rng.choice(_COORD)
                clause, structure = f"{clause}, {conj} {other}", f"{structure}+en/{conj}+{other_structure}"
        end = "?" if kind == "question" else rng.choices((".", "!"), (0.93, 0.07))[0]
        text = _contract(_articles(clause, self._pron), rng)
        return text[0].upper() + text[1:] + end, structure

    def _en_subject(self, rng: random.Random) -> tuple[str, int]:
        """A subject and its person: 1, 2, 3 (singular) or 4 (plural)."""
        r = rng.random()
        if r < 0.45:
            p = rng.choice(_PRONOUNS[:6])
            return p[0], p[3]
        if r < 0.55:
            return rng.choice(_NAMES), 3
        if r < 0.65:
            people = rng.choice(_PEOPLE)
            return people, 4 if people.endswith(("kids", "students")) else 3
        if r < 0.69:
            return rng.choice(_SOMEONE), 3
        np, plural = self._en_np_number(rng, plural=rng.random() < 0.35)
        return np, 4 if plural else 3

    def _en_np(self, rng: random.Random, plural: bool | None = None, det: bool = True) -> str:
        """A noun phrase: determiner, sometimes an adjective, a noun, sometimes a prepositional phrase."""
        return self._en_np_number(rng, plural, det)[0]

    def _en_np_number(self, rng: random.Random, plural: bool | None = None, det: bool = True) -> tuple[str, bool]:
        """_en_np and whether it came out plural (mass nouns have no plural)."""
        singular, pl = _pick(rng, self.en.nouns)
        if plural is None:
            plural = pl is not None and rng.random() < 0.3
        plural = plural and pl is not None
        noun = pl if plural else singular
        if rng.random() < 0.3:
            adj = rng.choice(_NATIONALITIES) if rng.random() < 0.05 else _pick(rng, self.en.adjectives)
            noun = f"{adj} {noun}"
        if det:
            if plural:
                d = rng.choice(("the", "these", "those", "my", "your", "our", "their", "some", "all the",
                                rng.choice(_NUMBERS), "", "many", "a lot of", "more", "a few", "most of the",
                                "lots of"))
            elif pl is None:  # a mass noun ("music", "advice"): no "a", no "every"
                d = rng.choice(("the", "some", "my", "your", "our", "this", "a lot of", "more", "less", "much",
                                "enough", "no", "", "", "any"))
            else:
                d = rng.choice(("the", "the", "a", "a", "this", "that", "my", "your", "his", "her", "our", "their",
                                "every", "another", "one"))
            noun = f"{d} {noun}".strip()
        if rng.random() < 0.12:
            noun = f"{noun} {rng.choice(_PREPS[:12])} the {_pick(rng, self.en.nouns)[0]}"
        return noun, plural

    def _en_object(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.15:
            return rng.choice(_PRONOUNS)[1]
        if r < 0.2:
            return rng.choice(_NAMES)
        if r < 0.25:
            return rng.choice(_SOMETHING + _SOMEONE)
        return self._en_np(rng)

    def _en_vp(self, rng: random.Random, person: int, tense: str, negate: bool) -> tuple[str, str]:
        """Verb phrase agreeing with `person` in `tense`: (text, the tense actually used)."""
        v = _pick(rng, self.en.verbs)
        obj = f" {self._en_object(rng)}" if rng.random() < 0.75 else ""
        if rng.random() < 0.12:  # a phrasal particle: "turn off the light", "come back"
            obj = f" {rng.choice(_PARTICLES)}{obj}"
        tail = ""
        if rng.random() < 0.25:
            place = rng.choice(_EN_PLACES) if rng.random() < 0.15 else self._en_np(rng)
            tail = f" {rng.choice(_PREPS)} {place}"
        elif rng.random() < 0.2:
            tail = f" {_pick(rng, self.en.adverbs)}"
        be = {1: "am", 2: "are", 3: "is", 4: "are"}[person]
        was = "was" if person in (1, 3) else "were"
        have = "has" if person == 3 else "have"
        if tense == "present":
            if negate:
                words = f"{'does' if person == 3 else 'do'} not {v.base}"
            else:
                adv = f"{rng.choice(_FREQ)} " if rng.random() < 0.3 else ""
                words = adv + (v.third if person == 3 else v.base)
        elif tense == "past":
            words = f"did not {v.base}" if negate else v.past
        elif tense == "progressive":
            words = f"{rng.choice((be, was))} {'not ' if negate else ''}{v.ing}"
        elif tense == "perfect":
            adverb = "not " if negate else rng.choice(("", "already ", "just ", "never "))
            words = f"{have} {adverb}{v.participle}"
        elif tense == "pluperfect":  # "had already finished", "have been working"
            if rng.random() < 0.5:
                words = f"had {'not ' if negate else rng.choice(('', 'already ', 'just ', 'never '))}{v.participle}"
            else:
                words = f"{have} {'not ' if negate else ''}been {v.ing}"
        elif tense == "modal":
            words = f"{rng.choice(_MODALS)} {'not ' if negate else ''}{v.base}"
        else:  # "want": infinitival complement
            want = rng.choice(_WANT)
            if person == 3:
                want = {"want to": "wants to", "need to": "needs to", "have to": "has to", "plan to": "plans to",
                        "hope to": "hopes to", "are going to": "is going to"}.get(want, want)
            elif person == 1:
                want = want.replace("are going", "am going")
            words = f"{want} {v.base}"
        return words + obj + tail, tense

    def _en_statement(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choices(("vp", "copula", "there", "say", "compare", "have", "best", "go"),
                           (0.5, 0.12, 0.06, 0.09, 0.06, 0.07, 0.04, 0.06))[0]
        if kind == "have":  # "have" as a main verb: "we had dinner", "she doesn't have a car"
            subj, person = self._en_subject(rng)
            form = rng.choice(("has" if person == 3 else "have", "had", "does not have" if person == 3 else
                               "do not have", "did not have", "will have"))
            return f"{subj} {form} {self._en_object(rng)}{self._en_time(rng)}", "en/have"
        if kind == "best":  # a superlative: "this is the best movie I have ever seen"
            adj = self._superlative(rng)
            v = _pick(rng, self.en.verbs)
            noun = _pick(rng, self.en.nouns)[0]
            return (f"{rng.choice(('this is', 'that was', 'it is', 'he is', 'she was'))} the {adj} {noun} "
                    f"{rng.choice(('I have ever', 'we have ever', 'you will ever', 'they have ever'))} "
                    f"{v.participle}", "en/best")
        if kind == "go":  # going somewhere: "I'm going to the store", "we went back home"
            subj, person = self._en_subject(rng)
            be = {1: "am", 2: "are", 3: "is", 4: "are"}[person]
            form = rng.choice((f"{be} going", "went", "will go", "want to go" if person != 3 else "wants to go",
                               "have to go" if person != 3 else "has to go", "usually go" if person != 3 else
                               "usually goes", "came back", "got"))
            where = rng.choice((f"to the {_pick(rng, self.en.nouns)[0]}", f"to {rng.choice(_EN_PLACES)}", "home",
                                "back home", f"to {self._en_np(rng)}", "there", "out"))
            return f"{subj} {form} {where}{self._en_time(rng)}", "en/go"
        if kind == "say":
            subj, person = self._en_subject(rng)
            verb = rng.choice(_SAY)
            if person == 3 and verb in ("think", "know", "believe", "hope", "guess", "feel"):
                verb += "es" if verb.endswith("s") else "s"  # guesses
            inner, structure = self._en_statement(rng)
            return f"{subj} {verb} {'that ' if rng.random() < 0.4 else ''}{inner}", f"en/say+{structure}"
        if kind == "copula":
            subj, person = self._en_subject(rng)
            past = rng.random() < 0.35
            be = ("was" if person in (1, 3) else "were") if past else {1: "am", 2: "are", 3: "is", 4: "are"}[person]
            neg = " not" if rng.random() < 0.2 else ""
            if person in (3, 4) and subj not in ("he", "she", "it", "they") and rng.random() < 0.3 and not neg:
                adj = _pick(rng, self.en.adjectives)  # (drawn before the noun: the rng's order fixes the corpus)
                pred = f"{'a' if person == 3 else ''} {adj} {self._en_np(rng, plural=person == 4, det=False)}"
            else:
                deg = f"{rng.choice(_DEGREE)} " if rng.random() < 0.5 else ""
                pred = deg + _pick(rng, self.en.adjectives)
            return f"{subj} {be}{neg} {pred.strip()}{self._en_time(rng)}", "en/copula"
        if kind == "there":
            np, plural = self._en_np_number(rng, plural=rng.random() < 0.4)
            be = ("are" if plural else "is") if rng.random() < 0.6 else ("were" if plural else "was")
            return (f"there {be} {np} {rng.choice(_PREPS[:12])} {self._en_np(rng)}",
                    "en/there")
        if kind == "compare":
            subj, person = self._en_subject(rng)
            be = {1: "am", 2: "are", 3: "is", 4: "are"}[person]
            return f"{subj} {be} {self._comparative(rng)} than {self._en_object(rng)}", "en/compare"
        subj, person = self._en_subject(rng)
        tense = rng.choices(("present", "past", "progressive", "perfect", "modal", "want", "pluperfect"),
                            (0.2, 0.28, 0.12, 0.1, 0.13, 0.13, 0.04))[0]
        vp, tense = self._en_vp(rng, person, tense, negate=rng.random() < 0.18)
        if rng.random() < 0.12:  # a relative clause on the subject
            rel_vp, _ = self._en_vp(rng, person, rng.choice(("past", "present")), False)
            subj = f"{subj} {'who' if person != 3 or subj[0].isupper() else 'that'} {rel_vp}"
        return f"{subj} {vp}{self._en_time(rng)}", f"en/statement.{tense}"

    def _comparative(self, rng: random.Random) -> str:
        """"better", "bigger", or "more interesting": the written comparative of a frequent adjective."""
        adj = _pick(rng, self.en.adjectives)
        return self.en.degree.get(adj, (f"more {adj}", ""))[0]

    def _superlative(self, rng: random.Random) -> str:
        adj = _pick(rng, self.en.adjectives)
        return self.en.degree.get(adj, ("", f"most {adj}"))[1]

    def _en_time(self, rng: random.Random) -> str:
        return f" {rng.choice(_TIMES)}" if rng.random() < 0.3 else ""

    def _en_question(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choices(("yn", "wh", "modal", "be", "how_many", "tag"), (0.25, 0.3, 0.18, 0.12, 0.08, 0.07))[0]
        subj, person = self._en_subject(rng)
        v = _pick(rng, self.en.verbs)
        obj = self._en_object(rng)
        if kind == "yn":
            aux = rng.choice(("did", "does" if person == 3 else "do"))
            return f"{aux} {subj} {v.base} {obj}{self._en_time(rng)}", "en/question.yn"
        if kind == "wh":
            wh = rng.choice(("what", "where", "when", "why", "how", "who"))
            aux = rng.choice(("did", "does" if person == 3 else "do", "will", "should", "can"))
            if wh == "what":
                return f"what {aux} {subj} {v.base}", "en/question.what"
            if wh == "who":
                return f"who {v.past} {obj}{self._en_time(rng)}", "en/question.who"
            return f"{wh} {aux} {subj} {v.base} {obj}", f"en/question.{wh}"
        if kind == "modal":
            return f"{rng.choice(('can', 'could', 'would', 'will', 'should'))} you {v.base} {obj}", "en/question.modal"
        if kind == "be":
            be = {1: "am", 2: "are", 3: "is", 4: "are"}[person]
            degree = rng.choice(_DEGREE[:4]) + " " if rng.random() < 0.3 else ""
            return f"{be} {subj} {degree}{_pick(rng, self.en.adjectives)}", "en/question.be"
        if kind == "how_many":
            singular, plural = _pick(rng, self.en.nouns)
            if plural is None:
                return f"how much {singular} do we {v.base}", "en/question.how_much"
            return f"how many {plural} {'does' if person == 3 else 'do'} {subj} {v.base}", "en/question.how_many"
        vp, _ = self._en_vp(rng, person, "past", False)
        pronoun = subj if subj in ("I", "you", "he", "she", "we", "they") else "they"  # "she ..., didn't she"
        tag = rng.choice(("right", "didn't " + pronoun))
        return f"{subj} {vp}, {tag}", "en/question.tag"

    def _en_command(self, rng: random.Random) -> tuple[str, str]:
        v = _pick(rng, self.en.verbs)
        obj = self._en_object(rng)
        kind = rng.choice(("plain", "please", "dont", "lets", "try"))
        tail = f" {rng.choice(_PREPS[:12])} {self._en_np(rng)}" if rng.random() < 0.3 else ""
        if kind == "plain":
            return f"{v.base} {obj}{tail}", "en/command"
        if kind == "please":
            return f"please {v.base} {obj}{tail}", "en/command.please"
        if kind == "dont":
            return f"do not {v.base} {obj}{self._en_time(rng)}", "en/command.dont"
        if kind == "lets":
            return f"let us {v.base} {obj}{self._en_time(rng)}", "en/command.lets"
        return f"try to {v.base} {obj}{tail}", "en/command.try"

    # ---- Mandarin (and code-switched Mandarin) --------------------------------------------------
    def _mandarin(self, rng: random.Random, mix: bool) -> tuple[str, str]:
        kind = rng.choices(("statement", "question", "command"), (0.6, 0.28, 0.12))[0]
        self._mix = mix
        self._switched = 0
        clause, structure = getattr(self, f"_zh_{kind}")(rng)
        if kind == "statement" and rng.random() < 0.3:
            if rng.random() < 0.5:
                first, second = rng.choice(_ZH_SUB)
                other, other_structure = self._zh_statement(rng)
                clause, structure = f"{first}{clause}，{second}{other}", f"zh/{first}+{structure}+{other_structure}"
            else:
                conj = rng.choice(_ZH_CONJ)
                other, other_structure = self._zh_statement(rng)
                clause, structure = f"{clause}，{conj}{other}", f"{structure}+zh/{conj}+{other_structure}"
        if mix and not re.search(r"[A-Za-z]", clause):  # a code-switched sentence always has English in it
            clause = f"{clause}，{self._zh_mix_tail(rng)}"
            structure += "+mix/tail"
        end = "？" if kind == "question" else rng.choices(("。", "！"), (0.93, 0.07))[0]
        text = _space_mixed(clause + end)
        return text, structure.replace("zh/", "mix/") if mix else structure

    def _zh_mix_tail(self, rng: random.Random) -> str:
        self._switched += 1
        r = rng.random()
        if r < 0.35:
            return rng.choice(_CODE_SWITCH["phrase"])
        if r < 0.7:
            return f"这个{rng.choice(_CODE_SWITCH['en'])}很{rng.choice(_CODE_SWITCH['en_adj'])}"
        return f"记得{rng.choice(_CODE_SWITCH['en_verb'])}一下"

    def _zh_noun(self, rng: random.Random) -> str:
        """A noun; in code-switched text sometimes an English one (at most three per sentence)."""
        if self._mix and self._switched < 3 and rng.random() < 0.35:
            self._switched += 1
            if rng.random() < 0.7:
                return f" {rng.choice(_CODE_SWITCH['en'])} "
            return f" {_pick(rng, self.en.nouns)[0]} "
        return _pick(rng, self.zh.nouns)

    def _zh_verb(self, rng: random.Random) -> str:
        if self._mix and self._switched < 3 and rng.random() < 0.15:
            self._switched += 1
            return f" {rng.choice(_CODE_SWITCH['en_verb'])} "
        return _pick(rng, self.zh.verbs)

    def _zh_adj(self, rng: random.Random) -> str:
        if self._mix and self._switched < 3 and rng.random() < 0.15:
            self._switched += 1
            return f" {rng.choice(_CODE_SWITCH['en_adj'])} "
        return _pick(rng, self.zh.adjectives)

    def _zh_subject(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.45:
            return rng.choice(_ZH_PRONOUNS)
        if r < 0.6:
            return rng.choice(_ZH_PEOPLE)
        return self._zh_np(rng)

    def _zh_np(self, rng: random.Random) -> str:
        """这个/那些/三本/我的/很 ADJ 的 + noun, or a bare noun."""
        noun = self._zh_noun(rng)
        r = rng.random()
        if r < 0.3:
            return f"{rng.choice(_ZH_NUM)}{rng.choice(_ZH_MEASURE)}{noun}"
        if r < 0.45:
            return f"{rng.choice(_ZH_PRONOUNS[:7])}的{noun}"
        if r < 0.55:
            return f"{rng.choice(_ZH_DEGREE[:4])}{self._zh_adj(rng)}的{noun}"
        if r < 0.62:
            return f"{self._zh_noun(rng)}的{noun}"
        return noun

    def _zh_place(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.4:
            return rng.choice(_ZH_PLACES)
        if r < 0.7:
            return _pick(rng, self._zh_places)
        return f"{_pick(rng, self.zh.nouns)}{rng.choice(_ZH_PLACE_SUFFIX)}"

    def _zh_frame(self, rng: random.Random) -> str:
        """Optional time, place and adverb before the verb."""
        out = ""
        if rng.random() < 0.3:
            out += rng.choice(_ZH_TIMES)
        if rng.random() < 0.2:
            out += f"在{self._zh_place(rng)}"
        if rng.random() < 0.3:
            out += rng.choice(_ZH_ADV)
        return out

    def _zh_statement(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choices(("vo", "aspect", "modal", "adj", "compare", "ba", "bei", "say", "de", "you", "go"),
                           (0.2, 0.14, 0.12, 0.12, 0.05, 0.06, 0.04, 0.08, 0.05, 0.08, 0.06))[0]
        subj, frame, verb, obj = self._zh_subject(rng), self._zh_frame(rng), self._zh_verb(rng), self._zh_np(rng)
        if kind == "vo":
            return f"{subj}{frame}{verb}{obj}", "zh/vo"
        if kind == "aspect":
            form = rng.choice(("{v}了{o}", "{v}过{o}", "没有{v}{o}", "没{v}过{o}", "正在{v}{o}", "在{v}{o}呢",
                               "已经{v}了{o}", "{v}着{o}"))
            return subj + frame + form.format(v=verb, o=obj), "zh/aspect"
        if kind == "modal":
            neg = "不" if rng.random() < 0.2 else ""
            return f"{subj}{frame}{neg}{rng.choice(_ZH_MODAL)}{verb}{obj}", "zh/modal"
        if kind == "adj":
            form = rng.choice(("{s}{d}{a}", "{s}不{a}", "{s}{d}{a}了", "{s}一点也不{a}", "{s}{a}得很", "{s}太{a}了"))
            return form.format(s=self._zh_np(rng) if rng.random() < 0.6 else subj, d=rng.choice(_ZH_DEGREE),
                               a=self._zh_adj(rng)), "zh/adj"
        if kind == "compare":
            return (f"{self._zh_np(rng)}比{self._zh_np(rng)}{rng.choice(('更', '还', ''))}"
                    f"{self._zh_adj(rng)}", "zh/compare")
        if kind == "ba":
            return f"{subj}{frame}把{obj}{verb}{rng.choice(('了', '好了', '完了', '一下', '掉了'))}", "zh/ba"
        if kind == "bei":
            return f"{obj}被{subj}{verb}{rng.choice(('了', '走了', '坏了', '过'))}", "zh/bei"
        if kind == "say":
            inner, structure = self._zh_statement(rng)
            return f"{subj}{rng.choice(_ZH_SAY)}{inner}", f"zh/say+{structure}"
        if kind == "de":
            return f"{subj}{verb}的{self._zh_noun(rng)}{rng.choice(_ZH_DEGREE)}{self._zh_adj(rng)}", "zh/de"
        if kind == "you":
            form = rng.choice(("{s}有{n}{o}", "{p}有{n}{o}", "{s}没有{o}", "{o}是{s}的", "{s}是{o}"))
            return form.format(s=subj, n=rng.choice(("很多", "一些", "不少", "几个", "一个", "两个")),
                               o=self._zh_noun(rng), p=f"{self._zh_place(rng)}"), "zh/you"
        return (f"{subj}{frame}{rng.choice(('去', '来', '到', '回'))}{self._zh_place(rng)}"
                f"{rng.choice(('', verb + obj, '了', '看看'))}", "zh/go")

    def _zh_question(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choice(("ma", "what", "who", "where", "why", "when", "anota", "how", "price", "haishi", "ne"))
        subj, frame, verb, obj = self._zh_subject(rng), self._zh_frame(rng), self._zh_verb(rng), self._zh_np(rng)
        forms = {
            "ma": f"{subj}{frame}{verb}{obj}吗",
            "what": f"{subj}{frame}{rng.choice(('想', '要', '在', ''))}{verb}什么",
            "who": f"谁{frame}{verb}了{obj}",
            "where": f"{obj}在哪里",
            "why": f"为什么{subj}{rng.choice(('要', '不', '没有', ''))}{verb}{obj}",
            "when": f"{subj}什么时候{verb}{obj}",
            "anota": f"{subj}{verb.strip()}不{verb}{obj}",
            "how": f"你觉得{obj}怎么样",
            "price": f"这{rng.choice(_ZH_MEASURE)}{self._zh_noun(rng)}多少钱",
            "haishi": f"{subj}喜欢{self._zh_noun(rng)}还是{self._zh_noun(rng)}",
            "ne": f"{obj}呢",
        }
        if kind == "ne":  # too short alone: "那 X 呢"
            forms["ne"] = f"那{subj}{rng.choice(_ZH_MODAL)}{verb}的{obj}呢"
        return forms[kind], f"zh/question.{kind}"

    def _zh_command(self, rng: random.Random) -> tuple[str, str]:
        verb, obj = self._zh_verb(rng), self._zh_np(rng)
        form = rng.choice(("请{v}一下{o}", "请你{t}{v}{o}", "别忘了{v}{o}", "我们一起{v}{o}吧", "快点{v}{o}",
                           "麻烦你帮我{v}{o}", "不要{v}{o}", "先{v}{o}再说", "把{o}{v}一下", "你去{v}{o}吧"))
        return form.format(v=verb, o=obj, t=rng.choice(_ZH_TIMES)), "zh/command"


def _articles(text: str, pron: dict) -> str:
    """Turn "a" into "an" before a word whose CMUdict pronunciation starts with a vowel."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i].lower() == "a":
            p = pron.get(words[i + 1].lower().strip(",.?!"))
            if p and p[0][-1].isdigit():  # CMUdict vowels carry a stress digit
                words[i] = words[i][0] + "n"
    return " ".join(words)


def _contract(text: str, rng: random.Random) -> str:
    """Everyday contractions ("do not" -> "don't") on most of the pairs that allow one."""
    words = text.split(" ")
    out: list[str] = []
    i = 0
    while i < len(words):
        pair = (words[i], words[i + 1]) if i + 1 < len(words) else None
        if pair in _CONTRACT and rng.random() < 0.7:
            out.append(_CONTRACT[pair])
            i += 2
            continue
        out.append(words[i])
        i += 1
    return " ".join(out)


def _space_mixed(text: str) -> str:
    """Single spaces between Han and Latin text, none next to full-width punctuation."""
    text = re.sub(r"(?<=[\u4e00-\u9fff])(?=[A-Za-z])|(?<=[A-Za-z])(?=[\u4e00-\u9fff])", " ", text)
    text = re.sub(r" *([，。？！、：；]) *", r"\1", text)
    return re.sub(r" {2,}", " ", text).strip()


def _length(text: str, language: str) -> int:
    """English: words; Mandarin and mixed: Han characters."""
    if language == "en":
        return len(text.split())
    return sum(len(run) for run in _HAN.findall(text))
