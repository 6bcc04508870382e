"""Measure and package the tiny LLM asset (entropy_asr/assets/tiny_llm; card: docs/tiny_llm.md).

    python -m entropy_asr.assets.tiny_llm measure [DIR]             # reading error on the dev sentences
    python -m entropy_asr.assets.tiny_llm package RUN_DIR [--out DIR]  # a pretrain_lm run -> the asset

Reading: each dev sentence of the default synthetic corpus (its plan; no audio is needed) is laid out
as clean pseudo speech (its phones as 25 Hz frames; entropy_asr.model.pseudo_speech), passed through
the asset's adapter, and decoded greedily by its LLM; CER (Mandarin), WER (English) and MER
(code-switched) are scored as everywhere else, and non-speech (silence-only frames) as the share that
got any text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from entropy_asr.assets import CARD, ROOT, card, expected_data
from entropy_asr.io import replace_dir
from entropy_asr.model.export import sha256_file

NAME = "tiny_llm"
READING_CONFUSION = 0.3  # the card also records reading with this share of tones and stresses confused
PROMPT = {"system": None, "user": "Transcribe: <speech>"}  # the prompt it was trained with; the tiny configs use it
CORPUS = {"utterances": 6000, "seed": 0}  # the default corpus: dev sentences for the reading test
SECONDS_PER_FRAME = 0.04


def dev_sentences(utterances: int = CORPUS["utterances"], seed: int = CORPUS["seed"]) -> list[tuple[str, str]]:
    """(text, language) of the synthetic corpus' dev split, from its plan (deterministic; no audio)."""
    from entropy_asr.data.synthetic import plan_corpus

    return [(s.text, s.language) for s in plan_corpus(utterances, seed)["dev"]]


def load_reader(path: str | Path):
    """(SpeechLLM with LLM + adapter + phone frames, its loaded state) of an asset or a pretrain_lm export dir."""
    from entropy_asr.model.export import load_component, read_component_meta
    from entropy_asr.model.llm import LLMConfig
    from entropy_asr.model.pseudo_speech import PhoneFramesConfig
    from entropy_asr.model.speech_llm import AdapterConfig, PromptConfig, SpeechLLM

    path = Path(path)
    frames_meta = read_component_meta(path / "phone_frames.safetensors")["meta"].get("config", {})
    adapter_meta = read_component_meta(path / "adapter.safetensors")["meta"].get("config", {})
    net = SpeechLLM(llm=LLMConfig(name_or_path=str(path / "llm")), adapter=AdapterConfig(**adapter_meta),
                    prompt=PromptConfig(**PROMPT), phone_frames=PhoneFramesConfig(**frames_meta))
    load_component(net.adapter, path / "adapter.safetensors", "adapter")
    load_component(net.phone_frames, path / "phone_frames.safetensors", "phone_frames")
    return net.eval()


@torch.no_grad()
def measure_reading(path: str | Path, sentences: list[tuple[str, str]] | None = None, nonspeech: int = 20,
                    batch_size: int = 32, seed: int = 0, confusion: float = 0.0,
                    held: bool = False) -> dict[str, float]:
    """Reading error rates of pseudo speech of `sentences` (default: the dev split) + `nonspeech` silences.

    Clean by default; confusion > 0: each tone-bearing phone (Mandarin final, English vowel) gets another tone or
    stress with that probability first (fixed draws): how well the reader copes with a CTC encoder's commonest
    confusion. held: the phones laid out as the speech stages read a CTC encoder (spikes at a CTC encoder's gaps,
    each held `phone_frames.hold` frames; entropy_asr.model.pseudo_speech) instead of 1-5 frames a phone.
    """
    from entropy_asr.errors import UserError
    from entropy_asr.metrics.error_rate import ErrorRates
    from entropy_asr.model.pseudo_speech import confuse_tone
    from entropy_asr.model.speech_llm import DecodeConfig
    from entropy_asr.text import Phonemizer, phones_to_ids

    if not 0 <= confusion <= 1:
        raise UserError(f"confusion must be in [0, 1], got {confusion}")
    net, rates, phonemize = load_reader(path), ErrorRates(), Phonemizer()
    confuse = random.Random(f"confusion/{seed}")
    items = [(t, lang, [confuse_tone(p, confusion, confuse) for p in phones_to_ids(phonemize(t, lang))])
             for t, lang in (sentences or dev_sentences())]
    items += [("", "none", None)] * nonspeech  # None: a silence-only layout
    rng = random.Random(f"reading/{seed}")
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        ids, lens = net.phone_frames.layout([p for _, _, p in chunk], rng, train=False, held=held)
        frames = net.phone_frames(ids, lens)
        speech, speech_lens = net.adapter(frames, lens)
        hyps = net.decode_speech(speech, speech_lens, (lens * SECONDS_PER_FRAME).tolist(), DecodeConfig())
        rates.update(hyps, [t for t, _, _ in chunk], [lang for _, lang, _ in chunk])
    return {k: round(float(v), 4) for k, v in rates.compute().items()}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parent).stdout.splitlines()
        dirty = [line for line in status  # code or configs changed since (the asset itself and docs do not count)
                 if not (line[3:].startswith(f"entropy_asr/assets/{NAME}") or line.endswith(".md"))]
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package(run_dir: str | Path, out: str | Path = ROOT / NAME, dtype: str = "float16", note: str = "",
            command: str | None = None) -> dict:
    """Copy a pretrain_lm run's export into an asset dir (weights in `dtype`), measure it, write its card.

    `command`: the command the run was made with, for the card (default: the plain pretrain_lm config's)."""
    from safetensors.torch import load_file, save_file

    from entropy_asr.model.export import read_component_meta

    run_dir, out = Path(run_dir), Path(out)
    export = run_dir / "export"
    results = json.loads((run_dir / "results.json").read_text())
    cast, commit = getattr(torch, dtype), _git_commit()  # before the temp dir exists
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shutil.copytree(export / "llm", tmp / "llm")
        for st in (tmp / "llm").glob("*.safetensors"):  # the LLM's tensors in the shipped precision
            tensors = {k: v.to(cast) if v.is_floating_point() else v for k, v in load_file(str(st)).items()}
            save_file(tensors, str(st), metadata={"format": "pt"})
        for c in ("adapter", "phone_frames"):
            src = export / f"{c}.safetensors"
            meta = read_component_meta(src)
            tensors = {k: v.to(cast) for k, v in load_file(str(src)).items()}
            save_file(tensors, str(tmp / f"{c}.safetensors"),
                      metadata={"component": meta["component"], "meta": json.dumps(meta["meta"])})
        t0 = time.perf_counter()
        reading = {"float32_export": measure_reading(export), dtype: measure_reading(tmp),
                   f"{dtype}_confusion_{READING_CONFUSION}": measure_reading(tmp, confusion=READING_CONFUSION),
                   f"{dtype}_held": measure_reading(tmp, held=True)}
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        config = json.loads((tmp / "llm" / "config.json").read_text())
        info = {
            "name": NAME,
            "data": {**expected_data(), "corpus": CORPUS},
            "prompt": PROMPT,
            "llm": {k: config.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size")},
            "dtype": dtype,
            "training": {"command": command or f"python experiments/run.py --config experiments/tiny/pretrain_lm.yaml "
                                               f"--run_dir {run_dir}", "steps": results.get("global_step"),
                         "fit_seconds": results.get("fit_seconds"), "val": results.get("val", {}),
                         "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
                         "commit": commit, **({"note": note} if note else {})},
            "reading_dev": reading,
            "reading_seconds": round(time.perf_counter() - t0, 1),
            "files": files,
        }
        (tmp / CARD).write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
        for p in [tmp, *tmp.rglob("*")]:  # a shipped asset: readable by everyone (mkdtemp and save_file make 0700/0600)
            p.chmod(0o755 if p.is_dir() else 0o644)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m entropy_asr.assets.tiny_llm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="reading error on the dev sentences")
    m.add_argument("dir", nargs="?", default=str(ROOT / NAME), help="asset or pretrain_lm export dir")
    m.add_argument("--confusion", type=float, default=0.0,
                   help=f"share of tones and stresses confused first (the card also records {READING_CONFUSION})")
    m.add_argument("--held", action="store_true",
                   help="lay the phones out as the speech stages read a CTC encoder (adapter.hold) instead")
    k = sub.add_parser("package", help="a pretrain_lm run dir -> the asset (weights, card)")
    k.add_argument("run_dir")
    k.add_argument("--out", default=str(ROOT / NAME))
    k.add_argument("--note", default="", help="how the run went, for the card (e.g. resumed at step N)")
    k.add_argument("--command", default=None, help="the command the run was made with, for the card (default: "
                                                   "the plain experiments/tiny/pretrain_lm.yaml run)")
    a = p.parse_args(argv)
    if a.cmd == "measure":
        print(json.dumps({"dir": a.dir, "card": card(a.dir).get("reading_dev") if (Path(a.dir) / CARD).exists()
                          else None, "measured": measure_reading(a.dir, confusion=a.confusion, held=a.held)}))
    else:
        info = package(a.run_dir, a.out, note=a.note, command=a.command)
        print(json.dumps({k: info[k] for k in ("data", "reading_dev", "training")}, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
