"""Evaluate a trained stage on shard dirs, or score hypotheses: error rates, edit operations, hallucination.

python experiments/evaluate.py --checkpoint RUN_DIR --data DIR [--data DIR ...] --out OUT [--batch-size B] [--beam N]
    [--max-silence F]
python experiments/evaluate.py --score HYPS.jsonl [--score MORE.jsonl ...] --out OUT

--checkpoint: a speech stage's run dir (align, ia_sft, joint_sft): its config.yaml gives the
architecture, prompt and decoding, its export/ the trained weights (components it did not
train come from the config's `init`, as in training); or a Lightning .ckpt inside such a run
dir (checkpoints/last.ckpt), whose weights are loaded instead; or an export dir alone (copied
anywhere): its model.json describes the model and its cmvn.json normalizes the features, no
config.yaml or data cache needed; or a .ckpt away from its run dir (it holds the same). --data: WebDataset shard dirs
(entropy_asr.data.prepare or the synthetic corpus' splits), decoded in batches; each is a set,
named after the dir, with `rtfx` (audio seconds per decoding second) besides the scores.
--score: HYPS.jsonl, one JSON object a line with `ref`, `hyp`, `language` ("zh", "en", "mix",
or "none" for non-speech clips with an empty reference) and optionally `id`; any system's output
is scored the same way.

Writes (atomically) OUT/metrics.json, OUT/hyps.jsonl (each utterance with its operations and
flags) and OUT/report.md (the table, the worst utterances, the flagged ones), and, unless W&B is
disabled (--wandb, else $WANDB_MODE, else offline as in training), a W&B run with the scores and
a transcript table per set. The scoring and
the flags are entropy_asr/metrics/scoring.py's; the schema is in docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml

from entropy_asr.data.shards import json_lines, read_index
from entropy_asr.errors import UserError, UserFileNotFound, run_main
from entropy_asr.io import atomic_write_bytes, atomic_write_json
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
    for n, row in json_lines(path, "write one JSON object per line"):
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


@dataclass
class ModelSource:
    """Where a trained stage comes from: the config that builds it, the weights to load and the CMVN statistics."""

    checkpoint: Path  # what --checkpoint named
    model_cls: type  # the stage's LightningModule
    config: str  # build_cli's --config: the run's config.yaml (a path, or its text), or one made from model.json
    init: dict  # the model's init.* (its starting points), to put the export's components over
    export: Path | None = None  # the trained weights as exports (over the starting points)
    state: dict | None = None  # a .ckpt's state dict, loaded after the build instead
    fits: str = ""  # what a .ckpt's weights must fit (for its error)
    cmvn: Path | None = None  # --cmvn or the described statistics; None: the run's data config's
    cmvn_fallback: Path | None = None  # when the data config's statistics are gone (another cache): the export's


def read_description(path: Path) -> dict:
    """An export's model.json (lightning_modules.base: SpeechLLMModule.describe), checked."""
    try:
        desc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); re-export the stage, or give its run dir "
                        f"(config.yaml, export/)") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; re-export the stage, or give its run dir (config.yaml, export/)") \
            from None
    return check_description(desc, str(path))


def check_description(desc, where: str) -> dict:
    """A model description (model.json's, or the one a checkpoint holds) with what a build needs, or one line
    why not."""
    fix = "re-export the stage, or give its run dir (config.yaml, export/)"
    if not isinstance(desc, dict):
        raise UserError(f"{where}: expected a JSON object with class_path and init_args, got {type(desc).__name__}; "
                        f"{fix}")
    missing = [k for k in ("class_path", "init_args") if k not in desc]
    if missing:
        raise UserError(f"{where}: no {' and no '.join(missing)}; {fix}")
    if not isinstance(desc["class_path"], str) or not isinstance(desc["init_args"], dict):
        raise UserError(f"{where}: class_path must be a string and init_args an object; {fix}")
    return desc


def model_class(class_path: str, where: str) -> type:
    """The LightningModule class a config or description names."""
    from lightning_modules import SpeechLLMModule

    module, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, SpeechLLMModule)):
        raise UserError(f"{where}: class_path {class_path!r} is not a stage's LightningModule; evaluate a speech stage "
                        f"(lightning_modules.Align, IASFT, JointSFT)")
    return cls


def _check_transcribes(checkpoint: Path, class_path: str, args: dict) -> None:
    if not args.get("llm") or not args.get("adapter"):
        raise UserError(f"--checkpoint {checkpoint}: {class_path} has no adapter and LLM to transcribe with; evaluate "
                        f"a speech stage (align, ia_sft, joint_sft)")


def resolve_source(checkpoint: Path, cmvn: Path | None, scratch: Path) -> ModelSource:
    """What --checkpoint names: a run dir (its config.yaml and export/, as in training), an export dir (its model.json
    and cmvn.json), or a .ckpt (its run's config.yaml, else the description it holds). `scratch`: a temp dir."""
    from entropy_asr.model.export import CMVN_FILE, MODEL_FILE

    if cmvn is not None and not cmvn.is_file():
        raise UserFileNotFound(f"--cmvn {cmvn}: no such file; give the cmvn.json of the data the stage trained on (its "
                               f"shard dir's, or the {CMVN_FILE} in its export dir)")
    if not checkpoint.exists():
        raise UserFileNotFound(f"--checkpoint {checkpoint}: no such file or dir; give a stage's run dir, its export/ "
                               f"dir or a .ckpt")
    ckpt = checkpoint if checkpoint.is_file() else None
    run_dir = checkpoint.parent.parent if ckpt else checkpoint
    config = run_dir / "config.yaml"
    if config.is_file():  # the run dir: its config, as in training
        return _run_dir_source(checkpoint, ckpt, run_dir, cmvn)
    if ckpt:
        return _ckpt_source(ckpt, cmvn, scratch)
    export = checkpoint if (checkpoint / MODEL_FILE).exists() or not (checkpoint / "export").is_dir() \
        else checkpoint / "export"
    if not (export / MODEL_FILE).exists():
        what = "an export written before exports described themselves" if any(export.glob("*.safetensors")) \
            else "not a stage's run dir or export dir"
        raise UserFileNotFound(f"--checkpoint {checkpoint}: no config.yaml and no {MODEL_FILE} ({what}); give a "
                               f"stage's run dir (config.yaml, export/), an export dir with {MODEL_FILE} or a .ckpt "
                               f"under its checkpoints/")
    desc = read_description(export / MODEL_FILE)
    if cmvn is None and not (export / CMVN_FILE).is_file():
        raise UserFileNotFound(f"--checkpoint {checkpoint}: no {export / CMVN_FILE}; pass --cmvn PATH (the cmvn.json "
                               f"of the data the stage trained on)")
    return _described_source(checkpoint, desc, str(export / MODEL_FILE), cmvn or export / CMVN_FILE, export=export)


def _run_dir_source(checkpoint: Path, ckpt: Path | None, run_dir: Path, cmvn: Path | None) -> ModelSource:
    """The run's config.yaml builds the stage (as today); the export's, or the .ckpt's, weights go over it."""
    config = run_dir / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    model_cfg = saved["model"]
    args = model_cfg.get("init_args", {})
    _check_transcribes(checkpoint, model_cfg.get("class_path"), args)
    cls = model_class(model_cfg.get("class_path"), str(config))
    config_arg = str(config)
    gone = sorted(set(args) - cls.init_arg_names())  # saved by an older version (IASFT's encoder_snapshots, ...)
    if gone:
        for key in gone:
            del args[key]
        config_arg = yaml.safe_dump(saved, allow_unicode=True, sort_keys=False)  # the config without them, as a string
    export = run_dir / "export"
    if not ckpt and not (export.is_dir() and any(export.iterdir())):
        raise UserFileNotFound(f"--checkpoint {checkpoint}: no export/ there, so the stage has not finished and has no "
                               f"trained weights to evaluate; give {run_dir / 'checkpoints' / 'last.ckpt'} or finish "
                               f"the run")
    return ModelSource(checkpoint, cls, config_arg, dict(args.get("init") or {}), export=None if ckpt else export,
                       state=_load_state(ckpt)["state_dict"] if ckpt else None, fits=f"{config}'s model", cmvn=cmvn,
                       cmvn_fallback=export / "cmvn.json")


def _ckpt_source(ckpt: Path, cmvn: Path | None, scratch: Path) -> ModelSource:
    """A .ckpt away from its run's config.yaml: the model description and CMVN statistics it holds."""
    saved = _load_state(ckpt)
    held = saved.get("entropy_asr", {})
    if "model" not in held:
        raise UserFileNotFound(f"--checkpoint {ckpt}: no {ckpt.parent.parent / 'config.yaml'} and the checkpoint holds "
                               f"no model description (written before checkpoints did); give it inside its run dir "
                               f"(config.yaml, checkpoints/), or the run's export/")
    where = f"--checkpoint {ckpt} (its model description)"
    desc = check_description(held["model"], where)
    if cmvn is None and "cmvn" in held:
        cmvn = scratch / "cmvn.json"
        cmvn.write_text(held["cmvn"])
    if cmvn is None:
        raise UserFileNotFound(f"--checkpoint {ckpt}: it holds no CMVN statistics; pass --cmvn PATH (the cmvn.json of "
                               f"the data the stage trained on)")
    # the stage builds from its init files before the checkpoint's weights go over them: build it from the
    # checkpoint's own (the files the run started from may be on another machine); the LLM's dir still gives its
    # config and tokenizer
    desc = {**desc, "init_args": {**desc["init_args"], "init": _components_of(saved["state_dict"], scratch,
                                                                               desc["init_args"].get("init") or {})}}
    return _described_source(ckpt, desc, where, cmvn, state=saved["state_dict"])


def _components_of(state: dict, scratch: Path, init: dict) -> dict:
    """init.* pointed at the checkpoint's own weights, one safetensors file per component in `scratch`."""
    from entropy_asr.model.export import save_tensors

    out = {}
    for component, described in init.items():
        prefix = f"net.{component}."
        tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        out[component] = str(save_tensors(tensors, scratch / f"{component}.safetensors", component)) if tensors \
            else described  # not a module the checkpoint holds: the described file
    return out


def _described_source(checkpoint: Path, desc: dict, where: str, cmvn: Path, export: Path | None = None,
                      state: dict | None = None) -> ModelSource:
    """A config made from a model description (read from `where`): the module's init args (those its class still
    takes), and the data read as the run read its evaluation sets, normalized with `cmvn`."""
    cls = model_class(desc["class_path"], where)
    args = {k: v for k, v in desc["init_args"].items() if k in cls.init_arg_names()}
    _check_transcribes(checkpoint, desc["class_path"], args)
    data = {k: v for k, v in (desc.get("data") or {}).items() if k in ("batch", "num_workers")}
    config = {"model": {"class_path": desc["class_path"], "init_args": args},
              "data": {"class_path": "datamodules.SpeechDataModule", "init_args": {**data, "cmvn": str(cmvn)}},
              "trainer": {"accelerator": "cpu", "devices": 1}}  # (built, never run: decoding moves the model itself)
    return ModelSource(checkpoint, cls, yaml.safe_dump(config, allow_unicode=True, sort_keys=False),
                       dict(args.get("init") or {}), export=export, state=state, fits=f"the model {where} describes")


def _load_state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def build_stage(source: ModelSource, batch_size: int | None, data_dirs: list[Path], out: Path):
    """(module in eval mode with its trained weights, datamodule over `data_dirs`) of a resolved source."""
    from experiments.run import build_cli

    # the data config stays the training run's: its CMVN statistics are the ones the model learned with
    overrides = ["--trainer.callbacks", "[]", "--trainer.logger", "false", "--wandb", "disabled",
                 "--trainer.enable_progress_bar", "false",
                 "--data.init_args.test_dirs", json.dumps([str(d) for d in data_dirs])]
    for key, value in source.model_cls.decoding_overrides().items():  # what only training reads, off
        overrides += [f"--model.init_args.{key}", json.dumps(value)]
    if source.cmvn:
        overrides += ["--data.init_args.cmvn", str(source.cmvn)]
    if batch_size:
        overrides += ["--data.init_args.batch.max_batch_size", str(batch_size)]
    export = source.export
    if export is not None:  # the stage's own exports over its starting points
        init = dict(source.init)
        init.update({c: str(export / f"{c}.safetensors") for c in ("encoder", "ctc_head", "adapter", "phone_frames")
                     if (export / f"{c}.safetensors").is_file()})
        overrides += ["--model.init_args.init", json.dumps(init)]
        if (export / "llm").is_dir():
            overrides += ["--model.init_args.llm.name_or_path", str(export / "llm")]
    cli = build_cli(["--config", source.config, "--run_dir", str(out), *overrides])  # (nothing trains or writes there)
    model, data = cli.model, cli.datamodule
    _check_cmvn(source, data)
    model.configure_model()
    if source.state is not None:
        result = model.load_state_dict(source.state, strict=False)
        # training-only parts: the distill reader and phone aligner (`teacher.` in checkpoints from before the split)
        unexpected = [k for k in result.unexpected_keys
                      if not k.startswith(("distill_reader.", "phone_aligner.", "teacher."))]
        if result.missing_keys or unexpected:
            raise UserError(f"--checkpoint {source.checkpoint} does not fit {source.fits}: missing "
                            f"{result.missing_keys[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), data


def _check_cmvn(source: ModelSource, data) -> None:
    """The CMVN statistics the data config names must be there (else the export's copy, else --cmvn)."""
    path = data.cmvn_file() if hasattr(data, "cmvn_file") else None
    if path is None or path.is_file():
        return
    if source.cmvn_fallback is not None and source.cmvn_fallback.is_file():
        data.cmvn_path = str(source.cmvn_fallback)  # the copy the export keeps of the run's statistics
        return
    raise UserFileNotFound(f"--checkpoint {source.checkpoint}: the CMVN statistics the stage trained with, {path}, are "
                           f"not there (another cache or machine?); pass --cmvn PATH (the training data's cmvn.json)")


def set_max_silence(net, frames: int) -> None:
    """--max-silence: the model reads at most `frames` (>= 0, checked by main) of silence next to speech (0: all)."""
    if frames and net.ctc_head is None:
        raise UserError(f"--max-silence {frames}: the model has no CTC head to find silence with; use 0 or leave it "
                        f"out")
    net.max_silence = frames or None


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path,
                     help="a speech stage's run dir, its export/ dir, or a .ckpt (in its checkpoints/)")
    src.add_argument("--score", type=Path, action="append", help="a hypotheses JSONL file (repeatable)")
    p.add_argument("--data", type=Path, action="append", help="a shard dir to decode (repeatable; with --checkpoint)")
    p.add_argument("--batch-size", type=int, help="at most this many utterances a batch (default: the config's)")
    p.add_argument("--beam", type=int, help="beam size (default: the config's decode.num_beams)")
    p.add_argument("--max-silence", type=int,
                   help="adapter.max_silence for this evaluation: frames of silence next to speech the LLM reads (0: "
                        "all of it; default: the model's own)")
    p.add_argument("--cmvn", type=Path, help="cmvn.json of the training data (default: from the run's data config, "
                                             "else the export's cmvn.json)")
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
    return p


def check_data_dirs(p: argparse.ArgumentParser, data: list[Path] | None) -> None:
    """--data with --checkpoint: shard dirs with distinct names (each names a set), or a usage error."""
    if not data:
        p.error("--checkpoint needs at least one --data DIR to decode")
    names = [d.name for d in data]
    if len(set(names)) != len(names):
        p.error(f"--data {[str(d) for d in data]}: each dir names a set; give dirs with distinct names")
    missing = [str(d) for d in data if not (d / "index.json").is_file()]
    if missing:
        p.error(f"--data {missing}: not shard dirs (no index.json); make them with entropy_asr.data.prepare")


def score_decoded(data_dirs: list[Path], decoded: dict[str, list[dict]], rtfx: dict[str, float],
                  params: HallucinationParams, normalize, sets: dict) -> dict[str, list[dict]]:
    """Score each decoded set into `sets` (with its RTFx and completeness); returns the per-utterance records."""
    records: dict[str, list[dict]] = {}
    for d in data_dirs:  # every utterance the set's index lists must be scored: a short read is said, none is an error
        name, expected = d.name, int(read_index(d).get("utterances", 0))
        rows = decoded.get(name, [])
        if not rows:
            raise UserError(f"--data {d}: no utterance could be decoded (index.json lists {expected}); the set is "
                            f"empty or its shards are unreadable")
        sets[name], records[name] = score_rows(rows, params, normalize)
        overall = sets[name]["overall"]
        overall.update(rtfx=rtfx[name], expected_utterances=expected, scored_utterances=len(rows),
                       complete=len(rows) == expected)
        if len(rows) != expected:
            print(f"WARNING {name}: scored {len(rows)} of the {expected} utterances index.json lists (damaged or "
                  f"truncated shards?); metrics.json marks the set incomplete", flush=True)
    return records


def score_files(paths: list[Path], params: HallucinationParams, normalize, sets: dict) -> dict[str, list[dict]]:
    """Score each hypotheses file into `sets` (a set per file, named by its stem); returns the records."""
    records: dict[str, list[dict]] = {}
    for path in paths:
        if not path.is_file():
            raise UserFileNotFound(f"--score {path}: no such file")
        name = path.stem
        if name in sets:
            raise UserError(f"--score {path}: a set named {name!r} is already scored; rename one of the files")
        sets[name], records[name] = score_rows(read_hyps(path), params, normalize)
    return records


def write_outputs(out: Path, metrics: dict, records: dict[str, list[dict]], wandb_mode: str | None,
                  wandb_project: str) -> None:
    """OUT/metrics.json, hyps.jsonl and report.md (atomically), the W&B run unless disabled, a line per set."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    lines = [json.dumps({"set": name, **r}, ensure_ascii=False) for name, recs in records.items() for r in recs]
    atomic_write_bytes(out / "hyps.jsonl", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(out / "report.md", report(metrics, records).encode())
    mode = wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    if mode != "disabled":
        log_wandb(mode, wandb_project, out, metrics, records)
    for name, groups in metrics["sets"].items():
        overall = groups["overall"]
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in overall.items() if isinstance(v, float)))
    print(f"evaluate: {out}/metrics.json, hyps.jsonl, report.md")


def main(argv: list[str] | None = None) -> dict:
    p = build_parser()
    a = p.parse_args(argv)
    params = HallucinationParams(length_ratio=a.length_ratio, max_overlap=a.max_overlap, min_repeats=a.min_repeats)
    metrics: dict = {"params": {**asdict(params), "normalizer": a.normalizer}, "sets": {}}
    normalize = wetext_normalizer() if a.normalizer == "wetext" else None
    if a.checkpoint:
        check_data_dirs(p, a.data)
        if a.max_silence is not None and a.max_silence < 0:  # before the model loads
            raise UserError(f"--max-silence {a.max_silence}: give frames >= 1, or 0 to read all silence")
        with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:  # (a checkpoint's CMVN statistics, as a file)
            source = resolve_source(a.checkpoint, a.cmvn, Path(scratch))
            model, data = build_stage(source, a.batch_size, a.data, a.out)
            if a.max_silence is not None:
                set_max_silence(model.net, a.max_silence)
            metrics["decode"] = {"num_beams": a.beam or model.decode.num_beams, "max_silence": model.net.max_silence}
            decoded, rtfx = decode_sets(model, data, a.beam, torch.device(a.device))
        metrics["checkpoint"] = str(a.checkpoint)
        records = score_decoded(a.data, decoded, rtfx, params, normalize, metrics["sets"])
    else:
        records = score_files(a.score, params, normalize, metrics["sets"])
    write_outputs(a.out, metrics, records, a.wandb, a.wandb_project)
    return metrics


if __name__ == "__main__":
    run_main(main)
