"""How well a trained model's phone CTC head retrieves hotwords: recall and false retrievals among distractors.

python experiments/hotword_retrieval.py [--export runs/tiny/joint_sft/export] [--data DIR] [--utterances 200]
    [--distractors 1000] [--thresholds -1,-2,-3] [--top-k 10] [--out results.json]

For each of the first `--utterances` utterances of a test shard dir (default: the tiny recipe's synthetic test
split), its hotwords are its own longer words (English words of 6+ letters, Mandarin words of 2+ characters by
jieba), and the list searched is those plus `--distractors` words of the same kinds drawn from the other
utterances' transcripts (never words of this one). The utterance's phone CTC posteriors are searched with
entropy_asr.inference.hotwords (the Recognizer's --hotwords path). Reported per threshold: recall (share of the
utterances' hotwords retrieved), false retrievals per utterance (distractors retrieved), precision, and the
share of utterances with every hotword retrieved. Prints lines, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import torch

from entropy_asr.errors import UserError, run_main
from entropy_asr.io import atomic_write_json


def hotwords_of(text: str) -> list[str]:
    """An utterance's longer words: English of 6+ letters, Mandarin (jieba) of 2+ characters, each once."""
    import jieba

    words = [w for w in re.findall(r"[A-Za-z']+", text) if len(w) >= 6]
    for run in re.findall(r"[\u4e00-\u9fff]+", text):
        words += [w for w in jieba.lcut(run) if len(w) >= 2]
    return list(dict.fromkeys(w.lower() for w in words))


def main(argv: list[str] | None = None) -> dict:
    """Parse the options, search every utterance, print the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", default="runs/tiny/joint_sft/export")
    p.add_argument("--data", type=Path, help="a test shard dir (default: the tiny recipe's synthetic test split)")
    p.add_argument("--utterances", type=int, default=200)
    p.add_argument("--distractors", type=int, default=1000)
    p.add_argument("--thresholds", default="-1,-2,-3")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    import jieba

    from entropy_asr.data.synthetic import corpus_dir
    from entropy_asr.inference.hotwords import HotwordIndex
    from entropy_asr.inference.recognizer import Recognizer
    from experiments.benchmark_inference import iter_utterances

    jieba.setLogLevel(60)
    thresholds = [float(t) for t in a.thresholds.split(",")]
    if any(t > 0 for t in thresholds):
        raise UserError(f"--thresholds: each is a log-likelihood ratio per phone, <= 0; got {a.thresholds}")
    data = a.data or corpus_dir(utterances=6000, seed=0) / "test"
    asr = Recognizer.from_pretrained(a.export)
    every = [{"audio": x, "text": text} for _, x, text, _ in iter_utterances(data)]
    utts = [u for u in every if hotwords_of(u["text"])][:a.utterances]
    pool = sorted({w for u in every for w in hotwords_of(u["text"])})
    rng = random.Random(a.seed)
    counts = {t: {"found": 0, "targets": 0, "false": 0, "all_found": 0} for t in thresholds}
    for u in utts:
        targets = hotwords_of(u["text"])
        others = [w for w in pool if w not in targets and w not in u["text"].lower()]
        index = HotwordIndex(targets + rng.sample(others, min(a.distractors, len(others))))
        feats = asr.features(u["audio"])[None]
        with torch.no_grad():
            frames, lens = asr.net.encode(feats, torch.tensor([feats.shape[1]]))
            log_probs = asr.net.ctc_log_probs(frames)[0, :int(lens[0])]
        hits = index.search(log_probs, a.top_k, min(thresholds))  # one search: a stricter threshold's hits are a
        for t in thresholds:                                        # prefix of these (best first)
            got = {h.text for h in hits if h.score >= t}
            c = counts[t]
            c["targets"] += len(targets)
            c["found"] += len(got & set(targets))
            c["false"] += len(got - set(targets))
            c["all_found"] += set(targets) <= got
    rows = []
    for t, c in counts.items():
        retrieved = c["found"] + c["false"]
        rows.append({"threshold": t, "recall": c["found"] / c["targets"], "false_per_utterance": c["false"] / len(utts),
                     "precision": c["found"] / retrieved if retrieved else None,
                     "all_found": c["all_found"] / len(utts)})
        r = rows[-1]
        print(f"threshold {t:g}: recall {r['recall']:.1%}, false retrievals {r['false_per_utterance']:.2f} per "
              f"utterance, precision {r['precision'] or 0:.1%}, every hotword found in {r['all_found']:.1%}")
    result = {"export": str(a.export), "data": str(data), "utterances": len(utts),
              "hotwords_per_utterance": counts[thresholds[0]]["targets"] / len(utts),
              "distractors": a.distractors, "top_k": a.top_k, "rows": rows}
    if a.out:
        atomic_write_json(a.out, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
