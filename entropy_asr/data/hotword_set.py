"""A synthetic hotword test set: sentences with names and rare words the training transcripts never say.

    python -m entropy_asr.data.hotword_set --out DIR [--utterances 200] [--seed 0] [--distractors 1000] [--train DIR]

Context biasing is measured on words a model cannot know from training: each utterance says one or two hotwords
(English proper nouns and rare words, Mandarin person and place names) in a carrier sentence, and the set comes with
a distractor list of words of the same kinds that no utterance says, so a test can put hotwords among distractors
into the prompt and count what the model gets right and what it copies wrongly.

Hotwords (`hotword_pools`):
* English proper nouns: Brill's lexicon (entropy_asr.data.lexicon) tags them NNP; kept where CMUdict pronounces
  them (so labels and eSpeak agree as for the corpus), the lowercase form is no common word of the lexicon, and
  wordfreq puts them at Zipf 2.5-4.5 (known names, not obscure ones). 70% of English hotwords.
* English rare words: lowercase nouns (NN) of 5+ letters in CMUdict at Zipf 2.0-3.0. The other 30%.
* Mandarin names from jieba's tagged dictionary: person names (nr) of 3 characters starting with a common
  surname, and place names (ns) of 2-3 characters ending in a place character (市, 县, 山, 河, ...) or of 4 ending
  in an administrative one (市, 省, 县, 区, 州, ...); jieba's nz and its other nr/ns entries are mostly common words,
  idioms and things (its nr holds 明白, 武功, 毛虾), so they are left out. Every character must occur in
  the corpus's Mandarin vocabulary (eSpeak and the tokenizer know it), Zipf <= 4.0, dictionary count >= 20.
Every hotword has >= 3 phones, normalizes to itself, and is said by no training transcript (scoring units,
contiguous; a Mandarin name is rejected even where its characters only run together across words).

Sentences: carrier templates of several forms with one or two slots (`TEMPLATES`), in the corpus's language shares
(40% zh, 40% en, 20% mix: a Mandarin carrier holding an English hotword, and maybe a Mandarin one). Speakers are drawn
as for the corpus's `test` split (the variants heard in training; draw_speaker), rendered with the corpus's own
`synthetic.render` (eSpeak NG, silence padding) and written as a shard dir like any split. Its cmvn.json is a copy
of the training split's, so features are normalized as in training.

Files in DIR: the shard dir (index.json, shard-*.tar, cmvn.json), hotwords.jsonl ({"key", "hotwords"} per
utterance, in shard order), distractors.txt (one word a line, sorted), hotword_set.json (settings, fingerprint).
Distractors: for each hotword in turn its phonetically nearest pool word not yet taken (phone edit distance,
entropy_asr.data.context.PhoneVocabulary), round after round, then random pool words if the rounds run dry; none is
said by any utterance of the set, none is a hotword or sounds exactly like one. The dir is built in a temp dir and
renamed; run again with the same settings and training split it is left as it is. The default (200 utterances,
1,000 distractors) takes about 25 s on a 2-core CPU, half of it choosing words, half eSpeak.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from entropy_asr.data.context import PhoneVocabulary, script_of
from entropy_asr.data.espeak import draw_speaker
from entropy_asr.data.lexicon import EN_BLOCK, ZH_BLOCK, ZH_BLOCK_CHARS, _package_file, brill_tags
from entropy_asr.data.sentences import GRAMMAR_VERSION, SentenceGenerator, _space_mixed
from entropy_asr.data.shards import (
    json_lines,
    read_index,
    read_text,
    read_transcripts,
    run_shard_jobs,
    shard_name,
    write_index,
)
from entropy_asr.data.synthetic import CORPUS_VERSION, LANGUAGE_SHARE, UttSpec, corpus_dir, render, voice_pools
from entropy_asr.errors import UserError, UserFileNotFound, run_main
from entropy_asr.io import atomic_write_bytes, atomic_write_dir, atomic_write_json, atomic_write_text
from entropy_asr.metrics.error_rate import score_units
from entropy_asr.text import Phonemizer, normalize_text

log = logging.getLogger(__name__)

HOTWORD_SET_VERSION = 1  # bump when the pools, templates or layout change: the fingerprint then differs
HOTWORDS_FILE, DISTRACTORS_FILE, INFO_FILE = "hotwords.jsonl", "distractors.txt", "hotword_set.json"
SHARD_SIZE = 50  # utterances per shard: 200 make four, so two workers stay busy to the end
MIN_PHONES = 3
PROPER_SHARE = 0.7  # of English hotwords: proper nouns; the rest rare common words
TWO_HOTWORDS = 0.5  # share of utterances saying two hotwords (the others one)
# Names a test sentence should not casually mention, on top of the corpus's block lists.
_EN_NAME_BLOCK = frozenset(["hitler", "stalin", "mussolini", "osama", "laden", "saddam", "auschwitz", "holocaust",
                            "uzi", "nazi", "nazis", "allah", "jesus", "christ", "muhammad", "mohammed", "buddha"])
_ZH_NAME_BLOCK = frozenset(["希特勒", "萨达姆", "墨索里尼", "本拉登", "拉登", "奥斯维辛"])
# The most common Chinese surnames: an nr entry starting with one is most likely a person's name, not an idiom.
_SURNAMES = frozenset("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕"
                      "丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃"
                      "武戴莫孔向汤")
_PLACE_ENDS = frozenset("市省县区镇乡村山岭峰河江湖海湾岛港州城路街门关寺桥堡洲川阳")
_ADMIN_ENDS = frozenset("市省县区州镇乡村")  # a four-character ns entry ending otherwise is often an idiom (高山峻岭)

# Carrier sentences: {a} and {b} are the hotword slots. English ones are capitalized when filled; mix uses the
# Mandarin ones (an English hotword in a Mandarin sentence), plus a few that code-switch in the carrier too.
TEMPLATES = {
    ("en", 1): ("Please add {a} to the list.", "Have you ever heard of {a}?",
                "I read something about {a} this morning.", "We talked about {a} for almost an hour.",
                "Can you spell {a} for me?",
                "The next word on the list is {a}.", "My friend keeps mentioning {a}.",
                "Nobody here knew much about {a}.", "She wrote {a} on the board yesterday.",
                "I think {a} came up in the meeting again."),
    ("en", 2): ("Did you mean {a} or {b}?", "We talked about {a} and then about {b}.",
                "Please add {a} and {b} to the list.", "I never remember whether it is {a} or {b}.",
                "{a} and {b} were both on the list.", "First we looked at {a}, then at {b}."),
    ("zh", 1): ("你听说过{a}吗？", "请把{a}写在本子上。", "我们昨天一直在讨论{a}。", "下一个名字是{a}。",
                "他刚才又提到了{a}。", "这份名单上有{a}。", "我对{a}不太熟悉。", "老师让我们查一下{a}。",
                "你知道{a}这个名字吗？", "会上有人说起了{a}。"),
    ("zh", 2): ("{a}和{b}都在名单上。", "你说的是{a}还是{b}？", "我们先聊了{a}，然后聊了{b}。", "请把{a}和{b}记下来。",
                "他总是分不清{a}和{b}。"),
    ("mix", 1): ("这个 project 的名字叫{a}。", "请在 email 里写上{a}。", "我们 team 里有人提到了{a}。"),
    ("mix", 2): ("明天的 meeting 要讨论{a}和{b}。",),
}


@dataclass
class HotwordPlan:
    """What a hotword set holds, before any audio: its utterances, each one's hotwords, the distractor list."""

    specs: list[UttSpec]
    hotwords: dict[str, list[str]]  # key -> the hotwords its sentence says, as written there
    distractors: list[str]  # sorted


class SaidIn:
    """Whether any of some transcripts says a word: its scoring units occur contiguously in one transcript's
    (as entropy_asr.data.context.hotword_contained decides, over many transcripts at once)."""

    def __init__(self, texts: Sequence[str], languages: Sequence[str]):
        # each transcript as " u1 u2 ... " on its own line: a word's " v1 v2 " is a substring iff its units are a
        # contiguous run of one transcript's units (units hold no spaces or newlines)
        self._text = "\n".join(f" {' '.join(score_units(t, lang))} " for t, lang in zip(texts, languages))

    def __call__(self, word: str) -> bool:
        units = score_units(word, script_of(word))
        return bool(units) and f" {' '.join(units)} " in self._text


@functools.lru_cache(maxsize=1)
def _candidate_pools() -> dict[str, tuple[str, ...]]:
    """The hotword kinds before the training transcripts and phone counts are checked (module docstring)."""
    import jieba
    import wordfreq

    from entropy_asr.text.english import cmu

    jieba.setLogLevel(logging.WARNING)  # wordfreq's Mandarin lookups load a jieba dictionary, chattily

    pron, tags = cmu(), brill_tags()
    zipf = lambda w, lang: wordfreq.zipf_frequency(w, lang)
    english_ok = lambda w: (w.lower() not in EN_BLOCK and w.lower() not in _EN_NAME_BLOCK
                            and normalize_text(w, "en") == w.lower())
    proper = [w for w, t in tags.items() if t == "NNP" and re.fullmatch(r"[A-Z][a-z]{3,}", w) and w.lower() in pron
              and w.lower() not in tags and 2.5 <= zipf(w.lower(), "en") <= 4.5 and english_ok(w)]
    rare = [w for w, t in tags.items() if t == "NN" and re.fullmatch(r"[a-z]{5,}", w) and w in pron
            and 2.0 <= zipf(w, "en") <= 3.0 and english_ok(w)]
    chars = set("".join(SentenceGenerator().vocabulary("zh")))
    mandarin = []
    with open(_package_file("jieba", "dict.txt"), encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) != 3:
                continue
            w, count, tag = parts[0], int(parts[1]), parts[2]
            person = tag == "nr" and len(w) == 3 and w[0] in _SURNAMES
            place = tag == "ns" and w[-1] in (_PLACE_ENDS if len(w) <= 3 else _ADMIN_ENDS) and 2 <= len(w) <= 4
            if ((person or place) and count >= 20 and all(c in chars for c in w) and w not in ZH_BLOCK
                    and w not in _ZH_NAME_BLOCK and not any(c in ZH_BLOCK_CHARS for c in w) and zipf(w, "zh") <= 4.0):
                mandarin.append(w)
    return {"en_proper": tuple(sorted(set(proper))), "en_rare": tuple(sorted(set(rare))),
            "zh": tuple(sorted(set(mandarin)))}


def hotword_pools(train_texts: Sequence[str], train_languages: Sequence[str],
                  phonemizer: Phonemizer | None = None) -> dict[str, list[str]]:
    """{"en_proper", "en_rare", "zh"} -> the words of that kind no training transcript says, with >= 3 phones
    (sorted). `train_*`: the training split's transcripts and languages."""
    phonemize = phonemizer or Phonemizer()
    said = SaidIn(train_texts, train_languages)
    return {kind: [w for w in words if not said(w) and len(phonemize(w, script_of(w))) >= MIN_PHONES]
            for kind, words in _candidate_pools().items()}


def plan_hotword_set(train_texts: Sequence[str], train_languages: Sequence[str], utterances: int = 200,
                     seed: int = 0, distractors: int = 1000) -> HotwordPlan:
    """The set's sentences, speakers, hotwords and distractors, drawn from `seed` only (no audio)."""
    rng = random.Random(f"entropy-asr-hotword-set/{seed}")
    phonemize = Phonemizer()
    pools = hotword_pools(train_texts, train_languages, phonemize)
    for words in pools.values():
        rng.shuffle(words)
    seen, _ = voice_pools()
    langs, weights = list(LANGUAGE_SHARE), list(LANGUAGE_SHARE.values())

    def take(kind: str) -> str:
        if not pools[kind]:
            raise UserError(f"--utterances {utterances}: the {kind} hotword pool ran out; ask for fewer utterances")
        return pools[kind].pop()

    def english() -> str:
        return take("en_proper" if rng.random() < PROPER_SHARE else "en_rare")

    specs, hotwords = [], {}
    for i in range(utterances):
        lang = rng.choices(langs, weights)[0]
        n = 2 if rng.random() < TWO_HOTWORDS else 1
        if lang == "en":
            words = [english() for _ in range(n)]
        elif lang == "zh":
            words = [take("zh") for _ in range(n)]
        else:  # a Mandarin sentence with an English hotword, maybe a Mandarin one beside it
            words = [english()] + [english() if rng.random() < 0.5 else take("zh") for _ in range(n - 1)]
        forms = TEMPLATES[("en" if lang == "en" else "zh", n)] + (TEMPLATES[("mix", n)] if lang == "mix" else ())
        text = rng.choice(forms).format(**dict(zip("ab", words)))
        text = text[0].upper() + text[1:] if lang == "en" else _space_mixed(text)
        key = f"hot{seed}_{i:06d}"
        specs.append(UttSpec(key, text, lang, draw_speaker(rng, seen), rng.getrandbits(32)))
        hotwords[key] = words
    chosen = pick_distractors([w for ws in hotwords.values() for w in ws],
                              [w for kind in pools.values() for w in kind], distractors,
                              SaidIn([s.text for s in specs], [s.language for s in specs]), rng, phonemize)
    return HotwordPlan(specs, hotwords, chosen)


def pick_distractors(hotwords: Sequence[str], pool: Sequence[str], n: int, said: Callable[[str], bool],
                     rng: random.Random, phonemize: Phonemizer, depth: int = 30) -> list[str]:
    """`n` words of `pool` that `said` does not reject and that are no hotword nor sound like one: each hotword's
    nearest ones by phone edit distance (same script), one per hotword per round, then random ones; sorted."""
    sound = {w: tuple(phonemize(w, script_of(w))) for w in (*hotwords, *pool)}
    heard = {sound[h] for h in hotwords}  # a hotword's homophone would be heard as said
    usable = sorted(w for w in set(pool) - set(hotwords) if sound[w] not in heard and not said(w))
    if len(usable) < n:
        raise UserError(f"--distractors {n}: only {len(usable)} words of the hotword kinds are left unsaid; "
                        f"ask for fewer")
    vocab = {s: PhoneVocabulary(ws, [sound[w] for w in ws])
             for s in ("en", "zh") for ws in [[w for w in usable if script_of(w) == s]]}
    near = [vocab[script_of(h)].nearest(sound[h], depth) for h in hotwords]
    chosen: dict[str, None] = {}
    for rank in range(depth):
        for ranked in near:
            if len(chosen) < n and rank < len(ranked):
                chosen.setdefault(ranked[rank])
    rest = [w for w in usable if w not in chosen]
    rng.shuffle(rest)
    chosen.update(dict.fromkeys(rest[:n - len(chosen)]))
    return sorted(chosen)


def _fingerprint(train_dir: Path, utterances: int, seed: int, distractors: int) -> str:
    """Identifies a build: the settings, this code's versions, the voices and the training split (index + cmvn)."""
    train = hashlib.sha256((train_dir / "index.json").read_bytes() + (train_dir / "cmvn.json").read_bytes())
    blob = json.dumps([HOTWORD_SET_VERSION, CORPUS_VERSION, GRAMMAR_VERSION, utterances, seed, distractors,
                       list(voice_pools()[0]), train.hexdigest()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_train_dir() -> Path:
    """The tiny recipe's training split (the synthetic corpus of 6,000 utterances, seed 0), built if missing."""
    from entropy_asr.data.synthetic import ensure_corpus

    if not (corpus_dir(utterances=6000, seed=0) / "corpus.json").exists():
        log.info("building the default synthetic corpus first (its train split is what hotwords must avoid)")
    return ensure_corpus(utterances=6000, seed=0) / "train"


def default_hotword_set() -> Path:
    """The tiny recipe's hotword set (200 utterances, seed 0, 1,000 distractors), beside its corpus in the cache,
    built there (and the corpus first) when missing."""
    train = default_train_dir()
    out = train.parent.parent / f"{train.parent.name}-hotwords-v{HOTWORD_SET_VERSION}"
    build_hotword_set(out, train)
    return out


def build_hotword_set(out: str | Path, train_dir: str | Path | None = None, utterances: int = 200, seed: int = 0,
                      distractors: int = 1000, num_workers: int | None = None) -> dict:
    """Build the hotword set into `out` (module docstring) unless it is there; returns hotword_set.json's content.

    `train_dir`: the training split whose transcripts the hotwords avoid and whose cmvn.json the set copies
    (default: the tiny recipe's, `default_train_dir`).
    """
    for name, value, low in (("--utterances", utterances, 1), ("--seed", seed, 0), ("--distractors", distractors, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{name}: expected an integer >= {low}, got {value!r}")
    out = Path(out)
    train_dir = Path(train_dir) if train_dir is not None else default_train_dir()
    read_index(train_dir)  # a clear error when it is no shard dir
    if not (train_dir / "cmvn.json").exists():
        raise UserFileNotFound(f"{train_dir / 'cmvn.json'} not found: the training split has no cmvn; rebuild it")
    fp = _fingerprint(train_dir, utterances, seed, distractors)
    if out.exists():
        info_path = out / INFO_FILE
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        if info.get("fingerprint") == fp:
            log.info("%s: hotword set already built", out)
            return info
        held = "a hotword set built with other settings or another training split" if info else "something else"
        raise UserError(f"{out} exists and holds {held}; use another --out or delete it")
    t0 = time.time()
    metas = read_transcripts(train_dir)
    plan = plan_hotword_set([m.get("text", "") for m in metas], [m.get("language", "none") for m in metas],
                            utterances, seed, distractors)
    info = {"version": HOTWORD_SET_VERSION, "fingerprint": fp,
            "settings": {"utterances": utterances, "seed": seed, "distractors": distractors},
            "train_dir": str(train_dir), "hotwords": sum(len(w) for w in plan.hotwords.values()),
            "distractors": len(plan.distractors), "speakers": "seen variants, as the corpus's test split"}

    def write(tmp: Path) -> None:
        chunks = [plan.specs[i:i + SHARD_SIZE] for i in range(0, len(plan.specs), SHARD_SIZE)]
        paths = [tmp / shard_name(i) for i in range(len(chunks))]
        run_shard_jobs([(render, p, c) for p, c in zip(paths, chunks)], num_workers or os.cpu_count() or 1)
        seen, unseen = voice_pools()
        speakers = {"seen_variants": list(seen), "unseen_variants": list(unseen)}
        index = write_index(tmp, paths, meta={"source": "synthetic-hotwords", "split": "hotwords",
                                              "cmvn_from": str(train_dir / "cmvn.json"), "speakers": speakers})
        atomic_write_bytes(tmp / "cmvn.json", (train_dir / "cmvn.json").read_bytes())  # normalize as in training
        lines = [json.dumps({"key": s.key, "hotwords": plan.hotwords[s.key]}, ensure_ascii=False) for s in plan.specs]
        atomic_write_text(tmp / HOTWORDS_FILE, "".join(f"{line}\n" for line in lines))
        atomic_write_text(tmp / DISTRACTORS_FILE, "".join(f"{w}\n" for w in plan.distractors))
        info.update(languages=index["languages"], hours=index["hours"], build_seconds=round(time.time() - t0, 1))
        atomic_write_json(tmp / INFO_FILE, info)

    atomic_write_dir(out, write)
    log.info("%s: %d utterances, %d hotwords, %d distractors in %.1f s", out, utterances, info["hotwords"],
             len(plan.distractors), time.time() - t0)
    return info


def load_hotword_set(path: str | Path) -> tuple[dict[str, list[str]], list[str]]:
    """(utterance key -> its hotwords, the distractor list) of a hotword set dir; a missing or damaged file is a
    UserError naming the file and line."""
    path = Path(path)
    hot_file, dis_file = path / HOTWORDS_FILE, path / DISTRACTORS_FILE
    for f in (hot_file, dis_file):
        if not f.is_file():
            raise UserFileNotFound(f"{f} not found: {path} is not a hotword set; build one with "
                                   f"`python -m entropy_asr.data.hotword_set --out {path}`")
    rebuild = f"delete {path} and build it again (python -m entropy_asr.data.hotword_set)"
    hotwords: dict[str, list[str]] = {}
    for n, row in json_lines(hot_file, rebuild):
        key, words = (row.get("key"), row.get("hotwords")) if isinstance(row, dict) else (None, None)
        if not isinstance(key, str) or not key or not isinstance(words, list) or not words \
                or not all(isinstance(w, str) and w.strip() for w in words):
            raise UserError(f"{hot_file}:{n}: expected {{\"key\": \"...\", \"hotwords\": [\"...\", ...]}} (a key and "
                            f"a non-empty list of words), got {json.dumps(row, ensure_ascii=False)[:80]}; {rebuild}")
        if key in hotwords:
            raise UserError(f"{hot_file}:{n}: key {key!r} appears twice; {rebuild}")
        empty = [w for w in words if not score_units(w, script_of(w))]
        if empty:
            raise UserError(f"{hot_file}:{n}: hotword {empty[0]!r} is no word (nothing left after normalization); "
                            f"{rebuild}")
        hotwords[key] = words
    distractors = []
    for n, line in enumerate(read_text(dis_file).splitlines(), 1):
        word = line.strip()
        if not word:
            continue
        if not score_units(word, script_of(word)):
            raise UserError(f"{dis_file}:{n}: {line[:80]!r} is no word (nothing left after normalization); "
                            f"remove the line")
        distractors.append(word)
    return hotwords, distractors


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m entropy_asr.data.hotword_set", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--utterances", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distractors", type=int, default=1000)
    p.add_argument("--train", type=Path, help="the training split to avoid and take cmvn.json from (default: the "
                                              "tiny recipe's synthetic train split, built if missing)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.time()
    info = build_hotword_set(a.out, a.train, a.utterances, a.seed, a.distractors, a.workers)
    print(json.dumps({"out": str(a.out), **info, "seconds": round(time.time() - t0, 1)}, ensure_ascii=False))
    return info


if __name__ == "__main__":
    run_main(main)
