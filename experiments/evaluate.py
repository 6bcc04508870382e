"""Evaluate a trained stage on shard dirs, or score hypotheses: error rates, edit operations, hallucination.

python experiments/evaluate.py --checkpoint RUN_DIR --data DIR [--data DIR ...] --out OUT [--batch-size B] [--beam N]
python experiments/evaluate.py --score HYPS.jsonl [--score MORE.jsonl ...] --out OUT

--checkpoint: a speech stage's run dir (align, ia_sft, joint_sft): its config.yaml gives the
architecture, prompt and decoding, its export/ the trained weights (components it did not
train come from the config's `init`, as in training); or a Lightning .ckpt inside such a run
dir (checkpoints/last.ckpt), whose weights are loaded instead. --data: WebDataset shard dirs
(entropy_asr.data.prepare or the synthetic corpus' splits), decoded in batches; each is a set,
named after the dir, with `rtfx` (audio seconds per decoding second) besides the scores.
--score: HYPS.jsonl, one JSON object a line with `ref`, `hyp`, `language` ("zh", "en", "mix",
or "none" for non-speech clips with an empty reference) and optionally `id`; any system's output
is scored the same way.

Writes (atomically) OUT/metrics.json, OUT/hyps.jsonl (each utterance with its operations and
flags) and OUT/report.md (the table, the worst utterances, the flagged ones), and, unless W&B is
disabled (--wandb, else $WANDB_MODE, else offline as in training), a W&B run with the scores and
a transcript table per set. The scoring and
the flags are entropy_asr/metrics/scoring.py's; the schema is in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import yaml

from entropy_asr.data.shards import (
    atomic_write_bytes,
    atomic_write_json,
    read_index,
    read_text,
)
from entropy_asr.errors import UserError, UserFileNotFound, run_main
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
    rows, lines_of = [], {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e.msg}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object with ref, hyp and language, got {type(row).__name__}")
        missing = [k for k in ("ref", "hyp", "language") if k not in row]
        if missing:
            raise UserError(f"{path}:{n}: missing {missing}; each line needs ref, hyp and language (id optional)")
        for k in ("ref", "hyp"):
            if not isinstance(row[k], str):
                raise UserError(f"{path}:{n}: {k} must be a string, got {json.dumps(row[k])}; write \"\" for "
                                + ("no output" if k == "hyp" else "a clip without speech (language none)"))
        if row["language"] not in GROUPS:
            raise UserError(f"{path}:{n}: language {row['language']!r} is not one of {GROUPS} (none = non-speech)")
        if row["language"] == "none" and row["ref"].strip():
            raise UserError(f"{path}:{n}: language none (a clip without speech) has the reference {row['ref'][:40]!r}; "
                            "give the clip its language, or empty ref")
        uid = str(row["id"]) if row.get("id") is not None else f"{path.stem}-{n}"
        if uid in lines_of:
            raise UserError(f"{path}:{n}: id {uid!r} repeats line {lines_of[uid]}; each utterance is scored once")
        lines_of[uid] = n
        rows.append({"id": uid, "ref": row["ref"], "hyp": row["hyp"], "language": row["language"]})
    if not rows:
        raise UserError(f"{path}: no hypotheses in it")
    return rows


def wetext_normalizer():
    """WeTextProcessing's Mandarin text normalization (the paper's), applied to Mandarin and mixed text."""
    try:
        from tn.chinese.normalizer import Normalizer
    except ImportError:
        raise SystemExit("--normalizer wetext needs WeTextProcessing: pip install -e '.[wetext]'") from None
    zh = Normalizer()  # its FSTs ship in the wheel: no download
    return lambda text, language: zh.normalize(text) if language in ("zh", "mix") and text else text


def score_rows(rows: list[dict], params: HallucinationParams, normalize=None) -> tuple[dict, list[dict]]:
    """(summary per language and overall, per-utterance records) of one set.

    normalize(text, language): applied to both sides before the standard normalization, if given.
    """
    n = normalize or (lambda text, language: text)
    scores = [score_utterance(n(r["ref"], r["language"]), n(r["hyp"], r["language"]), r["language"], params)
              for r in rows]
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


def load_stage(checkpoint: Path, batch_size: int | None, data_dirs: list[Path], out: Path, cmvn: Path | None = None):
    """(module in eval mode, datamodule over `data_dirs`) of a trained stage, from its run dir or a .ckpt in it."""
    from experiments.run import build_cli

    ckpt = checkpoint if checkpoint.is_file() else None
    run_dir = checkpoint.parent.parent if ckpt else checkpoint
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserFileNotFound(f"--checkpoint {checkpoint}: no {config}; give a stage's run dir (config.yaml, "
                               f"export/) or a .ckpt under its checkpoints/")
    model_cfg = yaml.safe_load(config.read_text())["model"]
    args = model_cfg.get("init_args", {})
    if "llm" not in args or not args.get("adapter"):
        raise UserError(f"--checkpoint {checkpoint}: {model_cfg.get('class_path')} has no adapter and LLM to "
                        f"transcribe with; evaluate a speech stage (align, ia_sft, joint_sft)")
    # the data config stays the training run's: its CMVN statistics are the ones the model learned with
    overrides = ["--trainer.callbacks", "[]", "--trainer.logger", "false", "--wandb", "disabled",
                 "--trainer.enable_progress_bar", "false",
                 "--data.init_args.test_dirs", json.dumps([str(d) for d in data_dirs]),
                 "--model.init_args.distill", "null"]
    if cmvn:
        overrides += ["--data.init_args.cmvn", str(cmvn)]
    if "encoder_snapshots" in args:
        overrides += ["--model.init_args.encoder_snapshots", "[]"]
    if batch_size:
        overrides += ["--data.init_args.batch.max_batch_size", str(batch_size)]
    export = run_dir / "export"
    if not ckpt and not (export.is_dir() and any(export.iterdir())):
        raise UserFileNotFound(f"--checkpoint {checkpoint}: no export/ there, so the stage has not finished and has no "
                               f"trained weights to evaluate; give {run_dir / 'checkpoints' / 'last.ckpt'} or finish "
                               f"the run")
    if not ckpt:  # the stage's own exports over its starting points
        init = dict(args.get("init") or {})
        init.update({c: str(export / f"{c}.safetensors") for c in ("encoder", "ctc_head", "adapter", "phone_frames")
                     if (export / f"{c}.safetensors").is_file()})
        overrides += ["--model.init_args.init", json.dumps(init)]
        if (export / "llm").is_dir():
            overrides += ["--model.init_args.llm.name_or_path", str(export / "llm")]
    cli = build_cli(["--config", str(config), "--run_dir", str(out), *overrides])  # (nothing trains or writes there)
    model, data = cli.model, cli.datamodule
    model.configure_model()
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        result = model.load_state_dict(state, strict=False)
        unexpected = [k for k in result.unexpected_keys if not k.startswith("teacher.")]  # training-only parts
        if result.missing_keys or unexpected:
            raise UserError(f"--checkpoint {ckpt} does not fit {run_dir / 'config.yaml'}'s model: missing "
                            f"{result.missing_keys[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), data


@torch.no_grad()
def decode_sets(model, data, beam: int | None, device: torch.device) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Per data dir: rows {id, ref, hyp, language} and the RTFx (audio seconds per decoding second)."""
    decode = replace(model.decode, num_beams=beam) if beam else model.decode
    model.to(device)
    data.setup("test")
    rows: dict[str, list[dict]] = {}
    rtfx: dict[str, float] = {}
    for d, loader in zip(data.test_dirs, data.test_dataloader(), strict=True):
        name, audio, seconds, out = Path(d).name, 0.0, 0.0, []
        for batch in loader:
            t = time.perf_counter()
            hyps = model.net.transcribe(batch["feats"].to(device), batch["feat_lens"].to(device),
                                        batch["durations"].tolist(), decode)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t
            audio += float(batch["durations"].sum())
            out += [{"id": k, "ref": r, "hyp": h, "language": lang}
                    for k, r, h, lang in zip(batch["keys"], batch["text"], hyps, batch["language"], strict=True)]
        rows[name], rtfx[name] = out, audio / max(seconds, 1e-9)
    return rows, rtfx


def log_wandb(mode: str, project: str, out: Path, metrics: dict, records: dict[str, list[dict]]) -> None:
    """The scores and a table of the transcripts per set, as one W&B run (offline: under OUT/wandb)."""
    import wandb

    run = wandb.init(project=project, dir=str(out), mode=mode, job_type="evaluate",
                     config={**metrics["params"], "checkpoint": metrics.get("checkpoint")})
    columns = ["id", "language", "ref", "hyp", "errors", "ref_units", "flags"]
    for name, recs in records.items():
        table = wandb.Table(columns=columns, data=[[r["id"], r["language"], r["ref"], r["hyp"], r["errors"],
                                                    r["ref_units"], ",".join(r["flags"])] for r in recs])
        scores = {f"{name}/{group}/{k}": v for group, row in metrics["sets"][name].items() for k, v in row.items()}
        run.log({f"{name}/transcripts": table, **scores})
    run.finish()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a speech stage's run dir, or a .ckpt in its checkpoints/")
    src.add_argument("--score", type=Path, action="append", help="a hypotheses JSONL file (repeatable)")
    p.add_argument("--data", type=Path, action="append", help="a shard dir to decode (repeatable; with --checkpoint)")
    p.add_argument("--batch-size", type=int, help="at most this many utterances a batch (default: the config's)")
    p.add_argument("--beam", type=int, help="beam size (default: the config's decode.num_beams)")
    p.add_argument("--cmvn", type=Path, help="cmvn.json of the training data (default: from the run's data config)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--normalizer", choices=["default", "wetext"], default="default",
                   help="wetext: WeTextProcessing's Mandarin normalization first (numbers spoken out: 3个 -> 三个)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--wandb", choices=["offline", "online", "disabled"],
                   help="also log the scores and a transcript table to W&B (default: $WANDB_MODE, else offline)")
    p.add_argument("--wandb_project", default="entropy-asr")
    p.add_argument("--length-ratio", type=float, default=HallucinationParams.length_ratio,
                   help="hallucination: hypothesis longer than this times the reference (units)")
    p.add_argument("--max-overlap", type=float, default=HallucinationParams.max_overlap,
                   help="hallucination: at most this share of the reference units matched ('negligible overlap')")
    p.add_argument("--min-repeats", type=int, default=HallucinationParams.min_repeats,
                   help="repetition: an n-gram repeated back to back at least this often")
    a = p.parse_args(argv)
    params = HallucinationParams(length_ratio=a.length_ratio, max_overlap=a.max_overlap, min_repeats=a.min_repeats)
    metrics: dict = {"params": {**asdict(params), "normalizer": a.normalizer}, "sets": {}}
    normalize = wetext_normalizer() if a.normalizer == "wetext" else None
    records: dict[str, list[dict]] = {}
    if a.checkpoint:
        if not a.data:
            p.error("--checkpoint needs at least one --data DIR to decode")
        names = [d.name for d in a.data]
        if len(set(names)) != len(names):
            p.error(f"--data {[str(d) for d in a.data]}: each dir names a set; give dirs with distinct names")
        missing = [str(d) for d in a.data if not (d / "index.json").is_file()]
        if missing:
            p.error(f"--data {missing}: not shard dirs (no index.json); make them with entropy_asr.data.prepare")
        model, data = load_stage(a.checkpoint, a.batch_size, a.data, a.out, a.cmvn)
        decoded, rtfx = decode_sets(model, data, a.beam, torch.device(a.device))
        metrics["checkpoint"] = str(a.checkpoint)
        for d in a.data:  # every utterance the set's index lists must be scored: a short read is said, none is an error
            name, expected = d.name, int(read_index(d).get("utterances", 0))
            rows = decoded.get(name, [])
            if not rows:
                raise UserError(f"--data {d}: no utterance could be decoded (index.json lists {expected}); the set is "
                                f"empty or its shards are unreadable")
            metrics["sets"][name], records[name] = score_rows(rows, params, normalize)
            overall = metrics["sets"][name]["overall"]
            overall.update(rtfx=rtfx[name], expected_utterances=expected, scored_utterances=len(rows),
                           complete=len(rows) == expected)
            if len(rows) != expected:
                print(f"WARNING {name}: scored {len(rows)} of the {expected} utterances index.json lists (damaged or "
                      f"truncated shards?); metrics.json marks the set incomplete", flush=True)
    else:
        for path in a.score:
            if not path.is_file():
                raise UserFileNotFound(f"--score {path}: no such file")
            name = path.stem
            if name in metrics["sets"]:
                raise UserError(f"--score {path}: a set named {name!r} is already scored; rename one of the files")
            metrics["sets"][name], records[name] = score_rows(read_hyps(path), params, normalize)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "metrics.json", metrics)
    lines = [json.dumps({"set": name, **r}, ensure_ascii=False) for name, recs in records.items() for r in recs]
    atomic_write_bytes(a.out / "hyps.jsonl", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(a.out / "report.md", report(metrics, records).encode())
    mode = a.wandb or os.environ.get("WANDB_MODE") or "offline"
    if mode != "disabled":
        log_wandb(mode, a.wandb_project, a.out, metrics, records)
    for name, groups in metrics["sets"].items():
        overall = groups["overall"]
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in overall.items() if isinstance(v, float)))
    print(f"evaluate: {a.out}/metrics.json, hyps.jsonl, report.md")
    return metrics


if __name__ == "__main__":
    run_main(main)
