"""Template sentences over real frequent words, in Mandarin, English and code-switched Mandarin.

Slots draw uniformly from the top-frequency `wordfreq` vocabulary (so every word turns up
in a corpus of a few thousand sentences); small hand-made closed-class lists (pronouns, times,
adjectives, a few verbs) keep the frames fluent. Everything is fixed data plus the caller's
`random.Random`, so one seed gives the same sentences on every machine.
"""

from __future__ import annotations

import functools
import random
import re

from entropy_asr.text.english import cmu

LANGUAGES = ("zh", "en", "mix")
# How far down the frequency lists to look for vocab_size words that pass the filters.
_SEARCH_DEPTH = 12_000
_HAN_WORD = re.compile(r"[\u4e00-\u9fff]+")
_EN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_VOWEL = re.compile(r"[aeiouy].*[a-z]|[a-z].*[aeiouy]")  # 2+ letters with a vowel: drops "ms", "x"

# Profanity, slurs, sexual and self-harm words, so random juxtapositions stay inoffensive.
_EN_BLOCK = frozenset("""
ass asses asshole bastard bitch bitches bollocks boob boobs cock cocks crap cum cunt damn dick dicks
dildo dyke fag faggot fags fuck fucked fucker fucking fucks goddamn hoe horny jerk kike motherfucker
nazi nigga niggas nigger niggers nude naked orgasm penis piss porn porno pussy queer rape raped rapist
retard retarded sex sexy shit shits shitty slut sluts suicide tits twat vagina whore whores wank
""".split())
_ZH_BLOCK = frozenset("""
操 妈的 他妈的 傻逼 牛逼 屌 婊子 鸡巴 色情 强奸 做爱 性交 自杀 屁股 混蛋 王八蛋 贱 骚 淫 裸体 卖淫 妓女
尼玛 去死 草泥马 日你 滚 杀人 恐怖 恐怖分子 暴力 毒品 吸毒 黑鬼
""".split())

# Function words: the templates supply these themselves, so vocabulary slots get content words.
_EN_FUNCTION = frozenset("""
a an the and or but if so as of to in on at by for from with about into over under than then
that this these those there here what which who whom whose when where why how not no yes
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
is am are was were be been being do does did done have has had having will would shall should can
could may might must just also very too only even still all any some each every both either neither
it's i'm i've i'll i'd don't doesn't didn't can't won't isn't aren't wasn't weren't haven't hasn't
that's there's what's let's who's here's ain't wouldn't couldn't shouldn't they'll you're you've you'll you'd we're we've we'll they're they've he's she's
anyone everyone someone anything everything something nothing nobody somebody everybody anybody
none another other others such same own whether though although unless until since during without
within upon among across toward towards around because before after above below between through
against along yet already again ever never always often sometimes really quite rather almost maybe
perhaps up out off down back well now once like also else instead however therefore
http https www com org net html pdf etc lol omg im dont ive thats
""".split())
_ZH_FUNCTION = frozenset("""
的 了 是 在 和 有 不 也 就 都 而 及 与 着 吗 呢 吧 啊 把 被 给 让 从 对 于 之 以 将 并 或 等 个 这 那 其
我 你 他 她 它 我们 你们 他们 她们 您 自己 这个 那个 这些 那些 什么 怎么 为什么 哪里 谁 么 们 地 得 所
一 二 三 四 五 六 七 八 九 十 百 千 万 两 第 很 又 还 再 才 却 已 已经 则 即 便 如 若 因 由 为 向 跟 比
但 但是 因为 所以 如果 虽然 而且 或者 还是 就是 只是 不是 不过 然后 以及 由于 对于 关于 作为 根据
""".split())

# --- Closed-class fillers (every English one is in CMUdict; the tests check it). ---
_EN = {
    "subj": ("I", "you", "we", "they", "he", "she"),
    "obj": ("me", "him", "her", "them", "us"),
    "people": ("my friend", "our teacher", "the manager", "my mother", "his brother", "the doctor",
               "your neighbor", "her sister"),
    "verb": ("see", "find", "buy", "need", "bring", "check", "take", "keep", "use", "move", "change",
             "read", "open", "share", "fix", "visit", "plan", "choose", "clean", "send"),
    "past": ("saw", "found", "bought", "needed", "brought", "checked", "took", "kept", "used", "moved",
             "changed", "opened", "shared", "fixed", "visited", "planned", "chose", "cleaned", "sent"),
    "adj": ("good", "new", "big", "small", "important", "interesting", "strange", "easy", "hard",
            "useful", "beautiful", "expensive", "quiet", "busy", "ready", "different", "simple"),
    "time": ("today", "tomorrow", "yesterday", "tonight", "this morning", "next week", "last year",
             "on Friday", "on Sunday"),
    "place": ("at home", "in the office", "at school", "in the city", "near the station"),
    "num": ("two", "three", "four", "five", "six", "seven", "ten", "twenty"),
    "conj": ("and", "but", "because", "so", "although", "while"),
    "sub": ("when", "if", "although", "after", "before", "because"),
}
_ZH = {
    "subj": ("我", "你", "他", "她", "我们", "他们", "大家", "老师", "我朋友", "经理"),
    "verb": ("看", "买", "找", "带", "准备", "讨论", "检查", "学习", "介绍", "解决", "安排", "打开", "整理", "了解"),
    "adj": ("好", "重要", "有意思", "奇怪", "方便", "麻烦", "漂亮", "便宜", "贵", "简单", "复杂", "有用", "安静", "热闹"),
    "time": ("今天", "明天", "昨天", "下午", "周末", "晚上", "明年", "刚才", "下个月", "每天早上"),
    "place": ("在家里", "在公司", "在学校", "在北京", "在上海", "在外面", "在图书馆"),
    "num": ("两", "三", "五", "几", "十", "一百"),
    "measure": ("个", "本", "张", "件", "次", "种", "份"),
    "conj": ("但是", "所以", "而且", "因为", "不过", "然后", "可是"),
}
# Words Mandarin speakers commonly switch into English for; all in CMUdict.
_CODE_SWITCH = {
    "en": ("meeting", "deadline", "project", "email", "schedule", "team", "manager", "report",
           "presentation", "feedback", "idea", "plan", "app", "online", "update", "budget", "client",
           "design", "marketing", "weekend", "party", "shopping", "coffee", "office", "interview",
           "offer", "boss", "version", "issue", "point", "case", "style", "level", "laptop", "password",
           "video", "game", "movie", "music", "brand", "customer", "data", "model", "demo", "training",
           "lunch", "dinner", "review"),
    "en_verb": ("check", "follow", "update", "confirm", "share", "review", "focus", "download", "upload"),
    "en_adj": ("cool", "nice", "fancy", "professional", "busy", "simple", "easy", "casual"),
    "phrase": ("by the way", "no problem", "good job", "make sense", "last minute", "so far",
               "work from home", "happy hour"),
}

# Templates: (kind, frame). kind: s = statement, q = question, c = command; frames carry no
# final punctuation. {w} = a vocabulary word; {list} = 3-5 vocabulary words; {en} (mix only) =
# an English word, from the code-switch list or the English vocabulary.
_EN_TEMPLATES = (
    ("s", "I think that the {w} is {adj}"),
    ("s", "{subj} {past} the {w} {time}"),
    ("s", "the {w} and the {w} are {adj}"),
    ("s", "there is a {w} near the {w}"),
    ("s", "{people} said that the {w} was {adj}"),
    ("s", "we should {verb} the {w} before {time}"),
    ("s", "{subj} {past} a {w} and a {w}"),
    ("s", "my {w} is more {adj} than your {w}"),
    ("s", "{list}"),
    ("s", "the {w} of the {w} is {w}"),
    ("s", "I have never seen such a {adj} {w}"),
    ("s", "{subj} will {verb} the {w} with {num} {w}"),
    ("s", "the {w} {w} was {adj} {time}"),
    ("s", "{people} {past} the {w} because it was {adj}"),
    ("s", "if the {w} is {adj} we can {verb} it {time}"),
    ("s", "everyone knows that {w} is {adj}"),
    ("s", "{subj} told {obj} about the {w} {w}"),
    ("s", "I need {num} {w} for the {w}"),
    ("s", "the {w} was {adj} but the {w} was not"),
    ("s", "I like {w}"),
    ("s", "this {w} is {adj}"),
    ("s", "we talked about {list} {time}"),
    ("s", "{people} {past} {num} {w} {place}"),
    ("s", "it is {adj} to {verb} a {w} {place}"),
    ("s", "the {w} that {subj} {past} {time} was {adj}"),
    ("s", "nobody wanted to {verb} the {w}"),
    ("s", "{subj} {past} the {w} {w} {place}"),
    ("q", "can you tell me about the {w} {w}"),
    ("q", "where is the {w}"),
    ("q", "do you know the {w} of the {w}"),
    ("q", "what do you think about {w}"),
    ("q", "why is the {w} so {adj}"),
    ("q", "have you seen the {w} {place}"),
    ("q", "is the {w} {adj} enough for the {w}"),
    ("q", "how many {w} do we need for the {w}"),
    ("q", "who {past} the {w} {time}"),
    ("q", "should we {verb} the {w} or the {w}"),
    ("q", "when will the {w} be {adj}"),
    ("q", "did {people} {verb} the {w} {time}"),
    ("q", "could you {verb} the {w} for {obj}"),
    ("c", "please {verb} the {w}"),
    ("c", "don't forget to {verb} the {w} {time}"),
    ("c", "let's {verb} the {w} {place}"),
    ("c", "{verb} the {w} and the {w} please"),
    ("c", "try to {verb} a {w} {time}"),
    ("c", "put the {w} next to the {w}"),
    ("c", "tell {obj} about the {w}"),
)
_ZH_TEMPLATES = (
    ("s", "我觉得{w}{w}很{adj}"),
    ("s", "{subj}{time}{place}{verb}{w}"),
    ("s", "这个{w}比那个{w}更{adj}"),
    ("s", "{w}和{w}都很{adj}"),
    ("s", "{subj}说{w}的{w}非常{adj}"),
    ("s", "关于{w}的问题，{subj}还没有决定"),
    ("s", "我们需要{list}"),
    ("s", "{subj}{time}买了{list}"),
    ("s", "{subj}已经{verb}了{num}{measure}{w}"),
    ("s", "虽然{w}很{adj}，但是{w}更{adj}"),
    ("s", "如果{w}不{adj}，我们就{verb}{w}"),
    ("s", "{time}的{w}特别{adj}"),
    ("s", "{subj}一直在研究{w}和{w}的关系"),
    ("s", "听说{w}的{w}要来了"),
    ("s", "{w}是{w}的一部分"),
    ("s", "{subj}对{w}很感兴趣"),
    ("s", "这是我第一次{verb}{w}"),
    ("s", "{subj}每天都会{verb}{w}"),
    ("s", "{w}{w}"),
    ("s", "{subj}喜欢{w}"),
    ("s", "{place}可以看到很多{w}"),
    ("s", "{w}的{w}越来越{adj}了"),
    ("s", "{subj}{time}没有时间{verb}{w}"),
    ("s", "那个{w}让{subj}想起了{w}"),
    ("q", "你知道{w}{w}吗"),
    ("q", "{w}在哪里"),
    ("q", "你觉得{w}怎么样"),
    ("q", "为什么{w}这么{adj}"),
    ("q", "我们什么时候{verb}{w}"),
    ("q", "{w}和{w}有什么区别"),
    ("q", "谁{time}{verb}了{w}"),
    ("q", "你有没有{verb}过{w}"),
    ("q", "{w}是不是很{adj}"),
    ("q", "这个{w}多少钱"),
    ("q", "你喜欢{w}还是{w}"),
    ("c", "请把{w}{w}给我"),
    ("c", "请你{time}{verb}一下{w}"),
    ("c", "别忘了{verb}{w}"),
    ("c", "我们一起{verb}{w}吧"),
    ("c", "快点{verb}{w}"),
    ("c", "麻烦你帮我{verb}{w}"),
)
_MIX_TEMPLATES = (
    ("s", "我们明天要开一个{en}讨论{w}"),
    ("s", "这个{en}的{w}很重要"),
    ("s", "今天的{en}太多了，我需要{verb}{w}"),
    ("s", "我觉得这个{en}不太{adj}"),
    ("s", "{subj}{time}有一个{en}"),
    ("s", "他们的{en}做得很好"),
    ("s", "我们要在{en}之前完成{w}"),
    ("s", "这个{en}真的很{en_adj}"),
    ("s", "我刚{verb}了你的{en}"),
    ("s", "这件事情我需要{en_verb}一下"),
    ("s", "{subj}说这个{w}的{en}有问题"),
    ("s", "{phrase}，我们{time}{verb}{w}吧"),
    ("s", "{subj}的{en}和{en}都在{w}里"),
    ("s", "{time}的{en}改到{time}了"),
    ("s", "这个{w}有点{phrase}"),
    ("s", "我在{en}上看到了{w}"),
    ("s", "{subj}最近在做一个关于{w}的{en}"),
    ("s", "{en}的时候不要{verb}{w}"),
    ("q", "这个{w}的{en}是什么"),
    ("q", "你可以帮我{en_verb}一下这个{en}吗"),
    ("q", "你看过那个{en}吗"),
    ("q", "{en}和{en}哪个更{adj}"),
    ("q", "这个{en}，你觉得怎么样"),
    ("q", "{time}的{en}你去不去"),
    ("q", "{w}的{en}谁负责"),
    ("c", "你把{en}发给我一下"),
    ("c", "先{en_verb}一下{w}再说"),
    ("c", "记得{time}把{en}发给{subj}"),
    ("c", "别忘了{en_verb}那个{en}"),
)
_TEMPLATES = {"en": _EN_TEMPLATES, "zh": _ZH_TEMPLATES, "mix": _MIX_TEMPLATES}
_SLOT = re.compile(r"\{(\w+)\}")
# Length bounds: English in words, Mandarin and mixed in Han characters.
_LENGTH = {"en": (3, 20), "zh": (4, 25), "mix": (4, 25)}
_COMPOUND_P = 0.3  # share of statements joined with a second clause (longer, multi-clause sentences)


def _check_language(language: str) -> None:
    """Raise ValueError unless `language` is one this module generates."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")


@functools.lru_cache(maxsize=None)
def _vocabularies(size: int) -> dict[str, tuple[str, ...]]:
    """The `size` most frequent usable words per language, most frequent first."""
    import opencc
    import wordfreq

    pron = cmu()  # the phonemizer's CMUdict: slot words are ones it pronounces from the dictionary
    en = [w for w in wordfreq.top_n_list("en", _SEARCH_DEPTH)
          if _EN_WORD.fullmatch(w) and w in pron and _VOWEL.search(w) and not w.startswith("i'")
          and w not in _EN_BLOCK and w not in _EN_FUNCTION]
    # wordfreq's zh list is Simplified already; the t2s check drops the odd leftover (瞭解).
    t2s = opencc.OpenCC("t2s")
    zh = [w for w in wordfreq.top_n_list("zh", _SEARCH_DEPTH)
          if _HAN_WORD.fullmatch(w) and t2s.convert(w) == w and w not in _ZH_BLOCK and w not in _ZH_FUNCTION]
    for language, words in (("en", en), ("zh", zh)):
        if len(words) < size:
            raise ValueError(f"vocab_size={size} but only {len(words)} {language} words pass the filters")
    return {"en": tuple(en[:size]), "zh": tuple(zh[:size])}


class SentenceGenerator:
    """Random sentences in "zh", "en" or "mix" (Mandarin with English words), fixed by the caller's rng."""

    def __init__(self, vocab_size: int = 2000) -> None:
        """Load (once per process and size) the `vocab_size` most frequent usable words per language."""
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self._vocab = _vocabularies(vocab_size)
        self._pron = cmu()

    def vocabulary(self, language: str) -> list[str]:
        """The slot vocabulary of "zh" or "en", most frequent first."""
        if language not in self._vocab:
            raise ValueError(f"vocabulary language must be 'zh' or 'en', got {language!r}")
        return list(self._vocab[language])

    def sentence(self, rng: random.Random, language: str) -> str:
        """One written sentence in `language` ("zh", "en" or "mix"), drawn with `rng` only."""
        return self.sentence_and_template(rng, language)[0]

    def sentence_and_template(self, rng: random.Random, language: str) -> tuple[str, str]:
        """A sentence and its structure id (e.g. "en/12" or "zh/3+zh/7"), so splits can hold out structures."""
        _check_language(language)
        low, high = _LENGTH[language]
        # Resample until the length is in range: a pure function of the rng's stream.
        for _ in range(100):
            text, structure = self._compose(rng, language)
            if low <= _length(text, language) <= high:
                return text, structure
        raise RuntimeError(f"no {language} sentence within {low}-{high} after 100 tries")  # not reached in practice

    def _compose(self, rng: random.Random, language: str) -> tuple[str, str]:
        """Fill one template, sometimes joined to a second statement, and punctuate it."""
        templates = _TEMPLATES[language]
        index = rng.randrange(len(templates))
        kind, frame = templates[index]
        structure = f"{language}/{index}"
        clause = self._fill(rng, language, frame)
        if kind == "s" and rng.random() < _COMPOUND_P:
            # A mixed sentence takes a Mandarin second clause, keeping 1-3 English insertions.
            other_language = "zh" if language == "mix" else language
            pool = _TEMPLATES[other_language]
            statements = [i for i, (k, _) in enumerate(pool) if k == "s"]
            second = statements[rng.randrange(len(statements))]
            other = self._fill(rng, other_language, pool[second][1])
            if language == "en":
                clause = f"{clause}, {rng.choice(_EN['conj'])} {other}"
                structure += f"+en/{second}"
            elif language == "mix" and rng.random() < 0.5:
                clause = f"{other}，{rng.choice(_ZH['conj'])}{clause}"
                structure = f"zh/{second}+{structure}"
            else:
                clause = f"{clause}，{rng.choice(_ZH['conj'])}{other}"
                structure += f"+{other_language}/{second}"
        if language == "en":
            text = clause[0].upper() + clause[1:] + {"s": ".", "q": "?", "c": "."}[kind]
        else:
            text = _space_mixed(clause + {"s": "。", "q": "？", "c": "。"}[kind])
        return text, structure

    def _fill(self, rng: random.Random, language: str, frame: str) -> str:
        """Replace each {slot} of `frame`, left to right, with a draw from its word list."""
        zh_like = language != "en"

        def draw(match: re.Match) -> str:
            slot = match.group(1)
            if slot == "w":
                return rng.choice(self._vocab["zh" if zh_like else "en"])
            if slot == "list":
                return self._list(rng, "zh" if zh_like else "en")
            if slot == "en":  # code-switched word: mostly the usual suspects, sometimes any word
                return rng.choice(_CODE_SWITCH["en"] if rng.random() < 0.7 else self._vocab["en"])
            if slot in _CODE_SWITCH:
                return rng.choice(_CODE_SWITCH[slot])
            return rng.choice((_ZH if zh_like else _EN)[slot])

        text = _SLOT.sub(draw, frame)
        return text if zh_like else self._articles(text)

    def _list(self, rng: random.Random, language: str) -> str:
        """3-5 vocabulary words as a written list: "a, b and c" or "甲、乙和丙"."""
        words = [rng.choice(self._vocab[language]) for _ in range(rng.randint(3, 5))]
        if language == "en":
            return ", ".join(words[:-1]) + " and " + words[-1]
        return "、".join(words[:-1]) + "和" + words[-1]

    def _articles(self, text: str) -> str:
        """Turn "a" into "an" before a word whose CMUdict pronunciation starts with a vowel."""
        words = text.split(" ")
        for i in range(len(words) - 1):
            if words[i].lower() == "a" and self._starts_with_vowel(words[i + 1]):
                words[i] = words[i][0] + "n"
        return " ".join(words)

    def _starts_with_vowel(self, word: str) -> bool:
        """True if `word` is pronounced with a leading vowel (CMUdict vowels carry a stress digit)."""
        pron = self._pron.get(word.lower().strip(",.?!"))
        return bool(pron) and pron[0][-1].isdigit()


def _space_mixed(text: str) -> str:
    """Single spaces between Han and Latin text, none next to full-width punctuation."""
    text = re.sub(r"(?<=[\u4e00-\u9fff])(?=[A-Za-z])|(?<=[A-Za-z])(?=[\u4e00-\u9fff])", " ", text)
    text = re.sub(r" *([，。？！、：；]) *", r"\1", text)
    return re.sub(r" {2,}", " ", text).strip()


def _length(text: str, language: str) -> int:
    """English: words; Mandarin and mixed: Han characters."""
    if language == "en":
        return len(text.split())
    return sum(len(run) for run in _HAN_WORD.findall(text))
