"""Word lists with parts of speech and inflections, from data that ships inside Python packages.

English: the most frequent words (`wordfreq`) tagged with their most frequent part of speech
from Brill's lexicon (trained on the Brown corpus and the Penn Treebank; it ships in `textblob`
as en-lexicon.txt and is read as a file, textblob is never imported), inflected with
`lemminflect` (plurals; 3rd person, past, -ing and participle forms), and kept only where CMUdict
pronounces every form. Mandarin: the most frequent words (`wordfreq`, everyday web and subtitle
text) tagged with jieba's dictionary (dict.txt: word, count, tag; read as a file). Both filter
profanity and the function words the grammar (entropy_asr.data.sentences) supplies itself.

Each list is ordered by frequency and carries a sampling weight: frequency ** WEIGHT_EXPONENT,
a flattened Zipf law, so frequent words are frequent and the tail still turns up.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from entropy_asr.errors import UserError, UserFileNotFound

WEIGHT_EXPONENT = 0.4  # p(word) ~ frequency^0.4: zipf 6 vs zipf 3 -> 16x, not 1000x
_SEARCH_DEPTH = 40_000  # how far down the frequency lists to look
_EN_WORD = re.compile(r"[a-z]+")
_HAN_WORD = re.compile(r"[\u4e00-\u9fff]+")

# Profanity, slurs, sexual, violent and self-harm words, so random juxtapositions stay inoffensive.
EN_BLOCK = frozenset(["ass", "asses", "asshole", "bastard", "bitch", "bitches", "bollocks", "boob", "boobs", "cock",
                      "cocks", "crap", "cum", "cunt", "damn", "dick", "dicks", "dildo", "dyke", "fag", "faggot", "fags",
                      "fuck", "fucked", "fucker", "fucking", "fucks", "goddamn", "hoe", "horny", "jerk", "kike",
                      "motherfucker", "nazi", "nigga", "niggas", "nigger", "niggers", "nude", "naked", "orgasm",
                      "penis", "piss", "porn", "porno", "pussy", "queer", "rape", "raped", "rapist", "retard",
                      "retarded", "sex", "sexy", "shit", "shits", "shitty", "slut", "sluts", "suicide", "tits", "twat",
                      "vagina", "whore", "whores", "wank", "kill", "killer", "murder", "murderer", "terrorist",
                      "terrorism", "genocide", "abuse", "abortion", "slave", "slavery", "erotic", "lesbian", "gay",
                      "negro", "breast", "breasts", "bullet", "gun", "guns", "bomb", "corpse", "torture", "porn",
                      "prostitute", "prostitution", "drug", "drugs", "cocaine", "heroin"])
ZH_BLOCK_CHARS = frozenset("操屌婊逼淫妓尸")  # words containing these are dropped
ZH_BLOCK = frozenset(["妈的", "他妈的", "傻逼", "牛逼", "婊子", "鸡巴", "色情", "强奸", "做爱", "性交", "自杀", "屁股",
                      "混蛋", "王八蛋", "贱", "骚", "裸体", "卖淫", "妓女", "尼玛", "去死", "草泥马", "日你", "滚",
                      "杀人", "恐怖", "恐怖分子", "暴力", "毒品", "吸毒", "黑鬼", "杀", "死", "尸体", "枪", "炸弹",
                      "屠杀", "谋杀", "性", "性感"])

# Function and grammar words: the grammar supplies them itself, so content slots get content words.
EN_FUNCTION = frozenset(["a", "an", "the", "and", "or", "but", "if", "so", "as", "of", "to", "in", "on", "at", "by",
                         "for", "from", "with", "about", "into", "over", "under", "than", "then", "that", "this",
                         "these", "those", "there", "here", "what", "which", "who", "whom", "whose", "when", "where",
                         "why", "how", "not", "no", "yes", "i", "me", "my", "mine", "you", "your", "yours", "he", "him",
                         "his", "she", "her", "hers", "it", "its", "we", "us", "our", "ours", "they", "them", "their",
                         "theirs", "is", "am", "are", "was", "were", "be", "been", "being", "do", "does", "did", "done",
                         "have", "has", "had", "having", "will", "would", "shall", "should", "can", "could", "may",
                         "might", "must", "just", "also", "very", "too", "only", "even", "still", "all", "any", "some",
                         "each", "every", "both", "either", "neither", "anyone", "everyone", "someone", "anything",
                         "everything", "something", "nothing", "nobody", "somebody", "everybody", "anybody", "none",
                         "another", "other", "others", "such", "same", "own", "whether", "though", "although", "unless",
                         "until", "since", "during", "without", "within", "upon", "among", "across", "toward",
                         "towards", "around", "because", "before", "after", "above", "below", "between", "through",
                         "against", "along", "yet", "already", "again", "ever", "never", "always", "often", "sometimes",
                         "really", "quite", "rather", "almost", "maybe", "perhaps", "up", "out", "off", "down", "back",
                         "well", "now", "once", "like", "else", "instead", "however", "therefore", "http", "https",
                         "www", "com", "org", "net", "html", "pdf", "etc", "lol", "omg", "im", "dont", "ive", "thats",
                         "ok", "okay", "yeah", "hey", "oh", "wow", "got", "went", "gone", "said", "made", "lets",
                         "much", "many", "more", "most", "less", "least", "few", "lot", "lots", "one", "two", "three",
                         "four", "five", "six", "seven", "eight", "nine", "ten", "hundred", "thousand", "million",
                         "billion", "first", "second", "third", "several", "various", "numerous", "multiple",
                         "countless", "mr", "mrs", "ms", "dr", "st", "vs"])
ZH_FUNCTION = frozenset(["的", "了", "是", "在", "和", "有", "不", "也", "就", "都", "而", "及", "与", "着", "吗", "呢",
                         "吧", "啊", "把", "被", "给", "让", "从", "对", "于", "之", "以", "将", "并", "或", "等", "个",
                         "这", "那", "其", "我", "你", "他", "她", "它", "我们", "你们", "他们", "她们", "您", "自己",
                         "这个", "那个", "这些", "那些", "什么", "怎么", "为什么", "哪里", "谁", "么", "们", "地", "得",
                         "所", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "百", "千", "万", "两", "第",
                         "很", "又", "还", "再", "才", "却", "已", "已经", "则", "即", "便", "如", "若", "因", "由",
                         "为", "向", "跟", "比", "但", "但是", "因为", "所以", "如果", "虽然", "而且", "或者", "还是",
                         "就是", "只是", "不是", "不过", "然后", "以及", "由于", "对于", "关于", "作为", "根据", "没有",
                         "没", "要", "会", "能", "可以", "想", "应该", "可能", "觉得", "知道", "说", "去", "来", "做",
                         "看", "到", "过", "上", "下", "里", "中", "好", "大", "小", "多", "少"])


@dataclass(frozen=True)
class Verb:
    """An English verb with every form the grammar needs."""

    base: str
    third: str  # 3rd person singular present
    past: str
    ing: str
    participle: str


@dataclass(frozen=True)
class Words:
    """Words of one part of speech, most frequent first, with sampling weights (same order)."""

    items: tuple
    weights: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "cum_weights", tuple(itertools.accumulate(self.weights)))  # for rng.choices

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class EnglishLexicon:
    """English content words by part of speech: nouns as (singular, plural or None for mass nouns)."""

    nouns: Words
    verbs: Words
    adjectives: Words
    adverbs: Words
    degree: dict  # adjective -> (comparative, superlative) where both are written forms in use ("good": better, best)

    def words(self) -> list[str]:
        """Every written form the lexicon can put in a sentence."""
        out = [w for pair in self.degree.values() for w in pair]
        for singular, plural in self.nouns.items:
            out += [singular] + ([plural] if plural else [])
        for v in self.verbs.items:
            out += [v.base, v.third, v.past, v.ing, v.participle]
        return sorted(set(out + list(self.adjectives.items) + list(self.adverbs.items)))


@dataclass(frozen=True)
class MandarinLexicon:
    """Mandarin content words by jieba tag group."""

    nouns: Words
    verbs: Words
    adjectives: Words
    places: Words

    def words(self) -> list[str]:
        return sorted({w for group in (self.nouns, self.verbs, self.adjectives, self.places) for w in group.items})


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the sentence generator needs the package {package!r}; pip install -e . installs it")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise UserFileNotFound(f"{path}: the data file the sentence generator reads from {package!r} is missing; "
                               f"reinstall {package}")
    return path


@functools.lru_cache(maxsize=1)
def brill_tags() -> dict[str, str]:
    """Lower-case word -> its most frequent Penn tag (Brill's lexicon, first entry of each word)."""
    tags: dict[str, str] = {}
    with open(_package_file("textblob", "en", "en-lexicon.txt"), encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and not line.startswith(";;;"):
                tags.setdefault(parts[0], parts[1])
    return tags


@functools.lru_cache(maxsize=1)
def jieba_tags() -> dict[str, str]:
    """Word -> jieba's tag (dict.txt holds one tag per word)."""
    tags: dict[str, str] = {}
    with open(_package_file("jieba", "dict.txt"), encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                tags.setdefault(parts[0], parts[2])
    return tags


def _weights(words: list[str], language: str) -> tuple[float, ...]:
    """frequency ** WEIGHT_EXPONENT per word (wordfreq's frequency table; 1e-9 floor)."""
    import wordfreq

    freq = wordfreq.get_frequency_dict(language)
    return tuple(max(freq.get(w, 0.0), 1e-9) ** WEIGHT_EXPONENT for w in words)


@functools.lru_cache(maxsize=4)
def english_lexicon(nouns: int, verbs: int, adjectives: int, adverbs: int) -> EnglishLexicon:
    """The most frequent English nouns, verbs, adjectives and -ly adverbs (sizes as given)."""
    import lemminflect
    import wordfreq

    from entropy_asr.text.english import cmu

    pron, tags = cmu(), brill_tags()
    found: dict[str, list] = {"nouns": [], "verbs": [], "adjectives": [], "adverbs": []}
    want = {"nouns": nouns, "verbs": verbs, "adjectives": adjectives, "adverbs": adverbs}
    for w in wordfreq.top_n_list("en", _SEARCH_DEPTH):
        if not _EN_WORD.fullmatch(w) or len(w) < 2 or w not in pron or w in EN_BLOCK or w in EN_FUNCTION:
            continue
        tag = tags.get(w)
        if tag == "NN" and len(found["nouns"]) < nouns:
            if w not in (lemminflect.getLemma(w, "NOUN") or (w,)):
                continue  # a plural tagged NN ("outfits"): "a" or "this" would go wrong before it
            plural = (lemminflect.getInflection(w, "NNS") or [None])[0]
            ok = plural and plural != w and plural in pron and plural not in EN_BLOCK
            # a plural nobody writes ("informations", "advices", "todays") marks a mass noun: no plural for it
            ok = ok and wordfreq.zipf_frequency(plural, "en") >= max(3.0, wordfreq.zipf_frequency(w, "en") - 2.5)
            found["nouns"].append((w, plural if ok else None))
        elif tag in ("VB", "VBP") and len(found["verbs"]) < verbs:
            forms = {t: (lemminflect.getInflection(w, t) or [None])[0] for t in ("VBZ", "VBD", "VBG", "VBN")}
            if all(f and f in pron and f not in EN_BLOCK for f in forms.values()) and forms["VBZ"] != w:
                found["verbs"].append(Verb(w, forms["VBZ"], forms["VBD"], forms["VBG"], forms["VBN"]))
        elif tag == "JJ" and len(found["adjectives"]) < adjectives:
            found["adjectives"].append(w)
        elif tag == "RB" and w.endswith("ly") and len(found["adverbs"]) < adverbs:
            found["adverbs"].append(w)
        if all(len(found[k]) >= want[k] for k in want):
            break
    for kind, n in want.items():
        if len(found[kind]) < n:
            raise UserError(f"english_lexicon: asked for {n} {kind}, only {len(found[kind])} pass the filters")
    keys = {"nouns": lambda x: x[0], "verbs": lambda x: x.base, "adjectives": str, "adverbs": str}
    degree = {}
    for adj in found["adjectives"]:  # "better", "biggest": kept where both forms are in CMUdict and in use
        forms = [(lemminflect.getInflection(adj, t) or [None])[0] for t in ("JJR", "JJS")]
        if all(f and f in pron and f != adj and wordfreq.zipf_frequency(f, "en") >= 3.0 for f in forms):
            degree[adj] = tuple(forms)
    return EnglishLexicon(**{k: Words(tuple(v), _weights([keys[k](x) for x in v], "en")) for k, v in found.items()},
                          degree=degree)


_ZH_GROUPS = {"n": "nouns", "vn": "nouns", "nz": "nouns", "v": "verbs", "a": "adjectives", "ns": "places"}


@functools.lru_cache(maxsize=4)
def mandarin_lexicon(nouns: int, verbs: int, adjectives: int, places: int) -> MandarinLexicon:
    """The most frequent Mandarin nouns, verbs, adjectives and place names (sizes as given)."""
    import opencc
    import wordfreq

    tags, t2s = jieba_tags(), opencc.OpenCC("t2s")
    want = {"nouns": nouns, "verbs": verbs, "adjectives": adjectives, "places": places}
    found: dict[str, list[str]] = {k: [] for k in want}
    for w in wordfreq.top_n_list("zh", _SEARCH_DEPTH):
        group = _ZH_GROUPS.get(tags.get(w, ""))
        if (group is None or not _HAN_WORD.fullmatch(w) or t2s.convert(w) != w or w in ZH_BLOCK or w in ZH_FUNCTION
                or any(c in ZH_BLOCK_CHARS for c in w)):
            continue
        if group == "adjectives" and (len(w) > 2 or w[0] in "很最不太更" or w in ("根本", "重新", "全", "明")):
            continue  # idioms, degree-marked forms and adverbs tagged a: not 很 + adjective material
        if group == "verbs" and (w[0] in "不没" or w[-1] in "了着"):
            continue  # negated or aspect-marked (不能, 看着): the grammar adds 不/没/了/着 itself
        if len(found[group]) < want[group]:
            found[group].append(w)
        if all(len(found[k]) >= want[k] for k in want):
            break
    for kind, n in want.items():
        if len(found[kind]) < n:
            raise UserError(f"mandarin_lexicon: asked for {n} {kind}, only {len(found[kind])} pass the filters")
    return MandarinLexicon(**{k: Words(tuple(v), _weights(v, "zh")) for k, v in found.items()})
