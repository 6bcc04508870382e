"""Score ASR hypotheses: error rates, edit operations and hallucination measures, per language.

python experiments/evaluate.py --score HYPS.jsonl [--score MORE.jsonl ...] --out OUT

HYPS.jsonl: one JSON object a line with `ref`, `hyp`, `language` ("zh", "en", "mix", or "none"
for non-speech clips with an empty reference) and optionally `id`; any system's output can be
scored the same way. Writes (atomically) OUT/metrics.json, OUT/hyps.jsonl (each utterance with
its operations and flags) and OUT/report.md (the table, the worst utterances, the flagged ones).
The scoring and the flags are entropy_asr/metrics/scoring.py's; the schema is in the README.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from entropy_asr.data.shards import atomic_write_bytes, atomic_write_json
from entropy_asr.metrics.error_rate import GROUPS
from entropy_asr.metrics.scoring import (
    HallucinationParams,
    as_record,
    score_utterance,
    summarize,
)

REPORT_COLUMNS = [("utterances", "utts", "{:d}"), ("error_rate", "error rate", "{:.2%}"),
                  ("substitutions", "S", "{:d}"), ("deletions", "D", "{:d}"), ("insertions", "I", "{:d}"),
                  ("hallucination_rate", "halluc.", "{:.2%}"), ("repetition_rate", "repet.", "{:.2%}"),
                  ("nonspeech_emission_rate", "non-speech emits", "{:.2%}")]


def read_hyps(path: Path) -> list[dict]:
    """The lines of a hypotheses file, checked: each has ref, hyp and a known language."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg}); write one JSON object per line") from None
        missing = [k for k in ("ref", "hyp", "language") if k not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing {missing}; each line needs ref, hyp and language (id optional)")
        if row["language"] not in GROUPS:
            raise ValueError(f"{path}:{n}: language {row['language']!r} is not one of {GROUPS} (none = non-speech)")
        rows.append({"id": row.get("id", f"{path.stem}-{n}"), "ref": row["ref"], "hyp": row["hyp"],
                     "language": row["language"]})
    if not rows:
        raise ValueError(f"{path}: no hypotheses in it")
    return rows


def score_rows(rows: list[dict], params: HallucinationParams) -> tuple[dict, list[dict]]:
    """(summary per language and overall, per-utterance records) of one set."""
    scores = [score_utterance(r["ref"], r["hyp"], r["language"], params) for r in rows]
    return summarize(scores), [{**r, **as_record(s)} for r, s in zip(rows, scores, strict=True)]


def report(metrics: dict, records: dict[str, list[dict]], worst: int = 10) -> str:
    """Markdown: a table per set (rows: overall and each language), then the worst and the flagged utterances."""
    lines = ["# Evaluation", ""]
    for name, groups in metrics["sets"].items():
        lines += [f"## {name}", "", "| group | " + " | ".join(c for _, c, _ in REPORT_COLUMNS) + " |",
                  "|---" * (len(REPORT_COLUMNS) + 1) + "|"]
        for group, row in groups.items():
            cells = [fmt.format(row[k]) if k in row else "-" for k, _, fmt in REPORT_COLUMNS]
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        recs = records[name]
        ranked = sorted((r for r in recs if r["ref_units"]), key=lambda r: -r["errors"] / r["ref_units"])[:worst]
        lines += ["", f"Worst {len(ranked)} (errors / reference units):", ""]
        lines += [f"- `{r['id']}` {r['errors']}/{r['ref_units']}: ref «{r['ref']}» hyp «{r['hyp']}»" for r in ranked]
        flagged = [r for r in recs if r["flags"] or (not r["ref_units"] and r["hyp_units"])]
        lines += ["", f"Flagged ({len(flagged)}: hallucination, repetition, or text on non-speech):", ""]
        lines += [f"- `{r['id']}` {', '.join(r['flags']) or 'non-speech emission'}: ref «{r['ref']}» hyp «{r['hyp']}»"
                  for r in flagged]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--score", type=Path, action="append", required=True, help="a hypotheses JSONL file (repeatable)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--length-ratio", type=float, default=HallucinationParams.length_ratio,
                   help="hallucination: hypothesis longer than this times the reference (units)")
    p.add_argument("--max-overlap", type=float, default=HallucinationParams.max_overlap,
                   help="hallucination: at most this share of the reference units matched ('negligible overlap')")
    p.add_argument("--min-repeats", type=int, default=HallucinationParams.min_repeats,
                   help="repetition: an n-gram repeated back to back at least this often")
    a = p.parse_args(argv)
    params = HallucinationParams(length_ratio=a.length_ratio, max_overlap=a.max_overlap, min_repeats=a.min_repeats)
    metrics: dict = {"params": asdict(params), "sets": {}}
    records: dict[str, list[dict]] = {}
    for path in a.score:
        if not path.is_file():
            raise FileNotFoundError(f"--score {path}: no such file")
        name = path.stem
        if name in metrics["sets"]:
            raise ValueError(f"--score {path}: a set named {name!r} is already scored; rename one of the files")
        metrics["sets"][name], records[name] = score_rows(read_hyps(path), params)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "metrics.json", metrics)
    lines = [json.dumps({"set": name, **r}, ensure_ascii=False) for name, recs in records.items() for r in recs]
    atomic_write_bytes(a.out / "hyps.jsonl", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(a.out / "report.md", report(metrics, records).encode())
    for name, groups in metrics["sets"].items():
        overall = groups["overall"]
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in overall.items() if isinstance(v, float)))
    print(f"evaluate: {a.out}/metrics.json, hyps.jsonl, report.md")
    return metrics


if __name__ == "__main__":
    main()
