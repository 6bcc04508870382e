"""Context biasing, measured: error rates and hotword use of a model under four prompt conditions.

python experiments/context_eval.py --export runs/tiny/context_sft/export [--data DIR] [--distractors-only 3]
    [--threshold -1] [--top-k 10] [--batch-size 16] [--conditions none,right,...] [--out results.json]
python experiments/context_eval.py --export EXPORT --own-words 2 [--data SHARD_DIR] [--train TRAIN_SPLIT] ...

On a hotword test set (entropy_asr.data.hotword_set: sentences with names and rare words that no training
transcript holds, hotwords.jsonl naming each utterance's, and distractors.txt, 1,000 words the set never says;
default: the tiny recipe's, built into the corpus cache when missing), each utterance is decoded with

- none: no hotword list (the prompt as before context SFT);
- right: exactly its own hotwords in the prompt;
- retrieval: the list the phone CTC head retrieves (entropy_asr.inference.hotwords, `--threshold`, `--top-k`)
  from a user's list of every hotword of the set plus the 1,000 distractors: what `transcribe --hotwords` does;
- distractors: `--distractors-only` distractors (drawn per utterance) and none of its own.

With `--own-words N` any shard dir is the set (default: the tiny recipe's test split): each utterance's
hotwords are its N rarest words in the training split's vocabulary (HotwordSampler.candidates: words it
knows, unlike the hotword set's), and the distractors 1,000 vocabulary words no utterance of the set says.

Reported per condition: CER zh / WER en / MER mix (as evaluate.py scores them), hotword recall (share of the
utterances' hotwords the hypothesis contains), precision (of the prompted words the hypothesis contains, the
share the reference says), false insertions (prompted words the hypothesis contains and the reference does
not, per utterance) and the mean prompt length. Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from entropy_asr.errors import UserError, run_main
from entropy_asr.io import atomic_write_json

CONDITIONS = ("none", "right", "retrieval", "distractors")


def hotword_counts(ref: str, hyp: str, language: str, prompted: list[str]) -> dict[str, int]:
    """For one utterance: prompted words the reference says (targets) and the hypothesis contains (found), prompted
    words the hypothesis contains (used) and, of those, the ones the reference does not say (inserted)."""
    from entropy_asr.data.context import hotword_contained

    said = [w for w in prompted if hotword_contained(ref, w, language)]
    used = [w for w in prompted if hotword_contained(hyp, w, language)]
    return {"targets": len(said), "found": sum(w in used for w in said), "used": len(used),
            "inserted": sum(w not in said for w in used)}


def own_words(data: Path, train: Path, n: int, seed: int, distractors: int = 1000) -> tuple[dict, list[str]]:
    """Each utterance of `data` with its n rarest words in `train`'s vocabulary (utterances without any left out),
    and `distractors` vocabulary words no utterance of `data` says (drawn with `seed`)."""
    from entropy_asr.data.context import HotwordSampler
    from entropy_asr.data.hotword_set import SaidIn
    from entropy_asr.data.shards import read_transcripts

    sampler = HotwordSampler.from_shards(train)
    metas = read_transcripts(data)
    hotwords = {m["key"]: words for m in metas if (words := sampler.candidates(m["text"], m["language"])[:n])}
    vocabulary = [w for script in ("en", "zh") for w in sampler.vocabulary[script].words]
    random.Random(seed).shuffle(vocabulary)
    said = SaidIn([m["text"] for m in metas], [m["language"] for m in metas])
    pool = (w for w in vocabulary if not said(w))
    return hotwords, [w for _, w in zip(range(distractors), pool)]


def evaluate(asr, utts: list[dict], lists: list[list[str]] | None, batch_size: int) -> list:
    """SegmentResults of `utts` (in order) decoded with `lists` as their prompts' hotwords (None: the recognizer's
    own retrieval decides), in batches of similar length."""
    order = sorted(range(len(utts)), key=lambda i: len(utts[i]["audio"]))
    out: list = [None] * len(utts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        prompts = [lists[i] for i in idx] if lists is not None else None
        results = asr.decode_audio([utts[i]["audio"] for i in idx], timestamps=False, prompt_hotwords=prompts)
        for i, r in zip(idx, results):
            out[i] = r
    return out


def main(argv: list[str] | None = None) -> dict:
    """Parse the options, decode the set under each condition, print the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", default="runs/tiny/context_sft/export")
    p.add_argument("--data", type=Path, help="a hotword test set dir (default: the tiny recipe's, built if missing)")
    p.add_argument("--distractors-only", type=int, default=3, help="distractors per utterance in that condition")
    p.add_argument("--threshold", type=float, default=-1.0)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--own-words", type=int, default=0, metavar="N",
                   help="instead of a hotword set: each utterance of --data (any shard dir) with its N rarest words")
    p.add_argument("--train", type=Path, help="with --own-words: the training split whose vocabulary ranks the words "
                                              "(default: the tiny recipe's)")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    from entropy_asr.data.hotword_set import default_hotword_set, default_train_dir, load_hotword_set
    from entropy_asr.data.shards import read_utterances
    from entropy_asr.inference.hotwords import HotwordIndex
    from entropy_asr.inference.recognizer import Recognizer
    from entropy_asr.metrics.error_rate import ErrorRates

    conditions = [c for c in a.conditions.split(",") if c]
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise UserError(f"--conditions {bad[0]}: unknown; choose from {','.join(CONDITIONS)}")
    if a.own_words < 0:
        raise UserError(f"--own-words must be >= 0 (0: a hotword set), got {a.own_words}")
    if a.own_words:
        data = a.data or default_train_dir().parent / "test"
        hotwords, distractors = own_words(data, a.train or default_train_dir(), a.own_words, a.seed)
    else:
        data = a.data or default_hotword_set()
        hotwords, distractors = load_hotword_set(data)
    asr = Recognizer.from_pretrained(a.export)
    utts = [u for u in read_utterances(data) if u["key"] in hotwords]
    if not utts:
        raise UserError(f"--data {data}: none of its utterances is listed in its hotwords.jsonl")
    rng = random.Random(a.seed)
    lists = {"none": [[] for _ in utts], "right": [list(hotwords[u["key"]]) for u in utts],
             "distractors": [rng.sample(distractors, min(a.distractors_only, len(distractors))) for _ in utts]}
    user_list = sorted({w for ws in hotwords.values() for w in ws} | set(distractors))
    rows = {}
    for cond in conditions:
        if cond == "retrieval":
            asr.set_hotwords(HotwordIndex(user_list), threshold=a.threshold, top_k=a.top_k, bias=True)
            results = evaluate(asr, utts, None, a.batch_size)
            prompted = [[h.text for h in r.hotwords or []] for r in results]  # what retrieval put in each prompt
            asr.set_hotwords(None)
        else:
            results = evaluate(asr, utts, lists[cond], a.batch_size)
            prompted = lists[cond]
        hyps = [r.text for r in results]
        rates = ErrorRates()
        rates.update(hyps, [u["text"] for u in utts], [u["language"] for u in utts])
        row = {k: float(v) for k, v in rates.compute().items()}
        own = [hotword_counts(u["text"], h, u["language"], hotwords[u["key"]]) for u, h in zip(utts, hyps)]
        got = [hotword_counts(u["text"], h, u["language"], ws) for u, h, ws in zip(utts, hyps, prompted)]
        targets = sum(c["targets"] for c in own)
        used = sum(c["used"] for c in got)
        row.update(recall=sum(c["found"] for c in own) / max(targets, 1),
                   precision=(used - sum(c["inserted"] for c in got)) / used if used else None,
                   insertions_per_utterance=sum(c["inserted"] for c in got) / len(utts),
                   prompt_words=sum(len(ws) for ws in prompted) / len(utts),
                   # the share of the utterances' hotwords that reached their prompts (retrieval's recall)
                   in_prompt=sum(w in ws for u, ws in zip(utts, prompted) for w in hotwords[u["key"]])
                   / max(sum(len(hotwords[u["key"]]) for u in utts), 1))
        rows[cond] = row
        print(f"{cond:>11}: CER zh {row.get('cer_zh', float('nan')):.1%}  WER en {row.get('wer_en', float('nan')):.1%}"
              f"  MER mix {row.get('mer_mix', float('nan')):.1%}  hotword recall {row['recall']:.1%}  precision "
              f"{row['precision'] if row['precision'] is not None else float('nan'):.1%}  false insertions "
              f"{row['insertions_per_utterance']:.2f}/utt  prompt {row['prompt_words']:.1f} words "
              f"({row['in_prompt']:.0%} of the hotwords)", flush=True)
    result = {"export": str(a.export), "data": str(data), "utterances": len(utts),
              "hotwords_per_utterance": sum(len(hotwords[u["key"]]) for u in utts) / len(utts),
              "user_list": len(user_list), "threshold": a.threshold, "top_k": a.top_k, "rows": rows}
    if a.out:
        atomic_write_json(a.out, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
