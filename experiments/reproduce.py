"""The paper's claims in miniature, one question per comparison: `python experiments/reproduce.py` (docs/reproduce.md).

Six recipes on the synthetic corpus, each for several seeds, at equal data and equal optimizer
steps (pretraining counted):
  a  single-stage: a fresh encoder, the adapter and the pretrained LLM trained together;
  b  multi-stage without IA-SFT: phone-CTC pretraining; alignment on the final encoder; SFT in
     which the encoder trains too (IA-SFT's steps and learning rate); joint SFT;
  c  the method: phone-CTC pretraining; alignment on its first snapshot; IA-SFT with hot-swaps
     (a deterministic replay of pretraining running beside it); joint SFT;
  d  as c, with character-CTC pretraining (entropy_asr.text.chars) instead of phones;
  e  as c without hot-swaps: alignment and IA-SFT on the final pretrained encoder, frozen and
     never replaced;
  f  as c, with the paper's frame adapter (d's pair: phone vs character CTC under one adapter).
b, c and e give the adapter and the LLM the same learning-rate schedule over the same steps
(alignment, then IA-SFT's, then joint SFT's); they differ only in what the encoder does: b
trains it, c swaps it, e keeps one. Every speech stage draws the same share of clips without
speech (empty transcripts) from the corpus' train_nonspeech (the tiny configs' nonspeech_share).
Each stage is experiments/run.py on the tiny configs plus the overrides built here. The LLM and
its pseudo-speech reader are the shipped asset (docs/tiny_llm.md), the same for every recipe and
seed; a seed sets the speech stages' initialization and data order. What the adapter reads
(--adapter): by default (mixed) a, b, c and e read the CTC head's phone posteriors through the LLM
asset's phone table (the tiny pipeline's bridge: at this size only that makes them recognizers),
and d and f read encoder frames (the paper's adapter; a character head has no phone posteriors),
so every comparison is between recipes with the same adapter. `--adapter frames` runs a-e on
frames (the paper's setup, no recognizer at this size), `--adapter posteriors` a, b, c, e only.

After each recipe: evaluate.py on test, test_unseen_voice and the two hallucination sets of
entropy_asr.data.stress (nonspeech_wide: 240 non-speech clips of ten kinds; test_padded: test
speech with 2-6 s of silence or noise on both sides); the encoder's NSE, PAI and CSAI and the
LLM's H0/H1 before and after the last stage (callbacks.AccessibleInformationProbe, frames
labelled by the seed's phone pretraining, the same labeller for every recipe); linear CKA of the
final encoder to the pretrained encoder it started from; NSE per encoder layer. Per pretraining
run: NSE over its steps (callbacks.SpectralEntropyLogger) and per layer of its export.

Each claim is a paired difference between two recipes (same seed, same test utterances) with a
two-level bootstrap 95% interval over seeds and utterances (entropy_asr.metrics.bootstrap) and a
verdict: reproduces / does not / undecided (the interval spans 0).

Per run: OUT/seed<s>/<recipe>/summary.json; finished runs are skipped, an interrupted stage
resumes from its last checkpoint. --jobs N runs N pretraining runs or recipes at a time as their own
processes, each pinned to its share of the cores (logs in OUT/logs/). At the end: OUT/table.md and
OUT/results.json (every seed's value, the intervals and verdicts).

  python experiments/reproduce.py --jobs 2             # tiny: seeds 0 1 2, recipes a-f, this 2-core CPU
  python experiments/reproduce.py --size gpu           # 4x the steps, bf16 on a GPU, 5 seeds
  python experiments/reproduce.py --size smoke         # every stage and measurement for a few steps
  python experiments/reproduce.py --adapter frames --out runs/reproduce_frames
      # a-e with the paper's frame adapter everywhere
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from entropy_asr.assets import asset_dir
from entropy_asr.data.stress import build_stress_sets
from entropy_asr.data.synthetic import corpus_dir, ensure_corpus
from entropy_asr.errors import UserError, run_main
from entropy_asr.io import atomic_write_bytes, atomic_write_json
from entropy_asr.metrics.bootstrap import paired_difference, verdict
from entropy_asr.metrics.cka import linear_cka
from entropy_asr.metrics.spectral import normalized_spectral_entropy
from entropy_asr.text.chars import build_char_inventory
from lightning_modules import STAGES as STAGE_MODULES

RECIPES = {
    "a": "single-stage (fresh encoder + adapter + LLM together)",
    "b": "multi-stage without IA-SFT (the encoder trains in SFT)",
    "c": "the method (IA-SFT with hot-swaps)",
    "d": "as c, character-CTC pretraining",
    "e": "as c, no hot-swaps (IA-SFT on the final encoder)",
    "f": "as c, the paper's frame adapter (d's pair)",
}
CONFIGS = Path(__file__).resolve().parent / "tiny"
# what the adapter reads: encoder frames (the paper's adapter; every recipe), or the CTC head's phone posteriors
# through the LLM asset's phone table (the tiny pipeline's bridge; recipes a, b, c, e: a character head has none)
# `mixed` (the default) runs a, b, c, e with posteriors (recognizers at this size) and the phone-vs-character pair
# f, d with frames (the only adapter a character head can feed)
ADAPTERS = {"frames": "encoder frames (the paper's adapter)",
            "posteriors": "phone posteriors through the asset's phone table (the tiny pipeline's bridge)",
            "mixed": "phone posteriors in a, b, c, e; encoder frames in d and its pair f"}
# the recipes each mode runs by default (f is c with frames: in frames mode c is already that)
MODE_RECIPES = {"frames": "abcde", "posteriors": "abce", "mixed": "abcdef"}
EVAL_SETS = ("test", "test_unseen_voice", "nonspeech_wide", "test_padded")


@dataclass(frozen=True)
class StageSpec:
    """One stage of a recipe: its run dir (under the recipe's), its module (a lightning_modules.STAGES name, whose
    config is experiments/tiny/<stage>.yaml) and its role, which names the Study method that builds its overrides."""

    name: str
    stage: str
    role: str  # single (the single-stage recipe's one stage), align, sft (after alignment) or joint (the last)

    @property
    def config(self) -> Path:
        return CONFIGS / f"{STAGE_MODULES[self.stage].stage}.yaml"


@dataclass(frozen=True)
class Recipe:
    """A recipe's stages in order, the CTC pretraining it starts from (None: none) and whether its IA-SFT swaps the
    pretraining snapshots in (then it aligns on pretraining's first snapshot; else on its final encoder)."""

    stages: tuple[StageSpec, ...]
    pretraining: str | None = "phones"
    swaps: bool = False


_ALIGN = StageSpec("align", "align", "align")
_IA_SFT = StageSpec("ia_sft", "ia_sft", "sft")
_JOINT = StageSpec("joint_sft", "joint_sft", "joint")
RECIPE_TABLE = {
    "a": Recipe((StageSpec("joint_sft", "joint_sft", "single"),), pretraining=None),
    # b: the same steps and schedule as IA-SFT, with the encoder training (joint SFT's module)
    "b": Recipe((_ALIGN, StageSpec("sft", "joint_sft", "sft"), _JOINT)),
    "c": Recipe((_ALIGN, _IA_SFT, _JOINT), swaps=True),
    "d": Recipe((_ALIGN, _IA_SFT, _JOINT), pretraining="chars", swaps=True),
    "e": Recipe((_ALIGN, _IA_SFT, _JOINT)),
    "f": Recipe((_ALIGN, _IA_SFT, _JOINT), swaps=True),  # c with the frame adapter
}


@dataclass(frozen=True)
class Size:
    """One study size: steps and learning rates per stage (the step total is every recipe's budget)."""

    pretrain: int = 1200
    align: int = 150
    ia_sft: int = 300
    joint: int = 150
    reference_step: int = 500  # pretraining's first snapshot (drift monitor warm-up): where c and d align
    cka_every: int = 100
    final_by_step: int = 225  # IA-SFT (c, d) swaps in pretraining's final snapshot by this step
    # pretraining steps that pass per alignment step and per IA-SFT step when they run side by side on
    # 2 cores (the tiny pipeline); the replay is at least this fast
    pace_align: float = 1.25
    pace_ia: float = 1.8
    utterances: int = 6000  # the tiny corpus (the LLM asset is checked against its version)
    pretrain_lr: float = 4.0e-3
    align_lr: float = 2.0e-3
    sft_lr: float = 5.0e-4  # IA-SFT's (c, d, e) and b's SFT stage: adapter + LLM (+ b's encoder)
    joint_lr: float = 1.0e-5
    single_stage_lr: float = 5.0e-4  # a: a fresh encoder needs more than joint SFT's
    nonspeech: int = 240  # clips in the nonspeech_wide test set
    padded: int = 180  # test utterances in test_padded
    probe_batches: int = 8
    trainer: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)

    @property
    def total(self) -> int:
        return self.pretrain + self.align + self.ia_sft + self.joint

    @property
    def replay_start(self) -> int:
        return round(self.reference_step + self.pace_align * self.align)

    def replay_pace(self) -> float:
        """Steps per IA-SFT step so that pretraining ends by final_by_step (at least pace_ia)."""
        return max(self.pace_ia, (self.pretrain - self.replay_start) / max(self.final_by_step, 1))


SIZES = {
    "tiny": Size(),
    "gpu": Size(pretrain=6000, align=600, ia_sft=1200, joint=600, reference_step=2400, cka_every=400,
                final_by_step=900, probe_batches=16, seeds=(0, 1, 2, 3, 4),
                trainer=("--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
                         "--data.init_args.num_workers", "4")),
    # minutes, for the tests and a first look: every stage and measurement, few steps, small test sets
    "smoke": Size(pretrain=40, align=6, ia_sft=12, joint=6, reference_step=20, cka_every=10, final_by_step=8,
                  nonspeech=20, padded=12, probe_batches=2, seeds=(0,)),
}


def _optim(lr: float, warmup: int) -> dict:
    # lr_scale named: the override merges into the stage config's optim, and the tiny joint SFT's {encoder: 100} is
    # not what the study measured
    return {"lr": lr, "warmup_steps": warmup, "weight_decay": 0.01, "lr_scale": None}


def _snapshot(pretrain: Path, component: str, step: int) -> str:
    return str(pretrain / "export" / "snapshots" / f"{component}-step{step:08d}.safetensors")


class Study:
    """The stage lists of every recipe for one seed, and the measurements after them."""

    def __init__(self, out: Path, size: Size, seed: int, adapter: str = "mixed"):
        if adapter not in ADAPTERS:
            raise UserError(f"--adapter {adapter!r}: choose from {sorted(ADAPTERS)}")
        self.out, self.size, self.seed, self.adapter = out, size, seed, adapter
        self.dir = out / f"seed{seed}"
        self.lm = asset_dir("tiny_llm")  # the pretrained LLM and its reader, checked against this code's corpus
        self.chars = out / "chars.json"
        self.synthetic = {"utterances": size.utterances, "seed": 0}
        # equal data: every stage of every recipe hears the augmentation pretraining does (the single-stage recipe's
        # encoder trains from scratch in joint SFT's config, whose own augmentation is off), as when the study's
        # recorded results were made
        import yaml

        self.augment = yaml.safe_load((CONFIGS / "pretrain_ctc.yaml").read_text())["data"]["init_args"]["augment"]

    def common(self) -> list[str]:
        """run.py arguments of every stage: the seed, the data (pretraining's augmentation), no per-stage validation
        or test."""
        return ["--seed_everything", str(self.seed), "--data.init_args.seed", str(self.seed),
                "--data.init_args.synthetic", json.dumps(self.synthetic),
                "--data.init_args.augment", json.dumps(self.augment),
                "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
                "--test", "false", *self.size.trainer]

    def pretrain_dir(self, units: str) -> Path:
        return self.dir / f"pretrain_{units}"

    def pretraining(self, units: str) -> dict:
        s = self.size
        head = {"dropout": 0.0, "units": units, "inventory": str(self.chars) if units == "chars" else None}
        return {"name": f"pretrain_{units}", "config": str(CONFIGS / "pretrain_ctc.yaml"), "overrides": {
            "trainer.max_steps": s.pretrain,
            "model.init_args.ctc_head": head,
            "model.init_args.optim": _optim(s.pretrain_lr, 50),
            "trainer.callbacks": [
                {"class_path": "callbacks.CKADriftMonitor", "init_args": {
                    "every_n_steps": s.cka_every, "warmup_steps": s.reference_step, "threshold": 0.975,
                    "probe_batches": 2}},
                # NSE over the whole run (the drift monitor starts at warm-up): how phone and character CTC differ
                {"class_path": "callbacks.SpectralEntropyLogger", "init_args": {
                    "every_n_steps": s.cka_every, "probe_batches": 2}}]}}

    def probe(self, steps: int) -> dict:
        """The last stage's probe: before its first step and after its last, frames labelled by the phone run."""
        aligner = self.pretrain_dir("phones") / "export"
        return {"class_path": "callbacks.AccessibleInformationProbe",
                "init_args": {"every_n_steps": steps + 1, "probe_batches": self.size.probe_batches, "at_start": True,
                              "aligner": {"encoder": str(aligner / "encoder.safetensors"),
                                          "ctc_head": str(aligner / "ctc_head.safetensors")}}}

    def adapter_of(self, name: str) -> str:
        """What recipe `name`'s adapter reads in this study: 'frames' or 'posteriors'."""
        if name not in RECIPES:
            raise UserError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
        if name not in MODE_RECIPES[self.adapter]:
            raise UserError(f"recipe {name} with --adapter {self.adapter}: "
                            + ("a character CTC head gives no phone posteriors to read; compare phone and character "
                                "CTC with --adapter mixed or frames" if name == "d" else
                                f"choose from {' '.join(MODE_RECIPES[self.adapter])}"))
        if self.adapter == "mixed":
            return "frames" if name in "df" else "posteriors"
        return self.adapter

    def recipe(self, name: str) -> list[dict]:
        """The stages of recipe `name` in order (RECIPE_TABLE), run dir OUT/seed<s>/<name>; the last is always
        joint_sft."""
        plan = _RecipePlan(self, name)
        stages: list[dict] = []
        for spec in plan.recipe.stages:
            overrides = getattr(self, f"_{spec.role}_overrides")(plan, stages)
            stages.append({"name": spec.name, "config": str(spec.config), "overrides": overrides})
        return stages

    def _single_overrides(self, p: _RecipePlan, before: list[dict]) -> dict:
        """The single-stage recipe: a fresh encoder, the adapter and the LLM together for the whole budget."""
        s = self.size
        # posteriors mode: a fresh CTC head between the fresh encoder and the table, trained with them
        head = {"model.init_args.trainable": ["encoder.*", "ctc_head.*", "adapter.*", "llm.*"]} if p.bridged else {}
        return {**p.lm_init, **p.no_head, **head, "trainer.max_steps": s.total,
                "model.init_args.init": p.init(None, None, str(self.lm / "adapter.safetensors")),
                "model.init_args.optim": _optim(s.single_stage_lr, 100),
                "trainer.callbacks": [self.probe(s.total)]}

    def _align_overrides(self, p: _RecipePlan, before: list[dict]) -> dict:
        """Alignment: the adapter, on the pretrained encoder, distilled toward the LLM's reader."""
        s = self.size
        align_init = {"encoder": p.align_enc, "adapter": str(self.lm / "adapter.safetensors")}
        align_extra: dict = {}
        distill = p.distill
        if p.align_head is None:  # a character head cannot time phones: the phone run's first snapshot does
            phone = self.pretrain_dir("phones")
            align_extra = {"model.init_args.ctc_head": None}
            distill = {**distill, "aligner": {"encoder": _snapshot(phone, "encoder", s.reference_step),
                                              "ctc_head": _snapshot(phone, "ctc_head", s.reference_step)}}
        else:  # alignment's distillation times the phones with the encoder's own phone head
            align_init["ctc_head"] = p.align_head
        if p.bridged:
            align_init["phone_frames"] = p.table
        return {**p.lm_init, **p.frames, **align_extra, "trainer.max_steps": s.align,
                "model.init_args.init": align_init, "model.init_args.optim": _optim(s.align_lr, 20),
                "model.init_args.distill": distill}

    def _sft_overrides(self, p: _RecipePlan, before: list[dict]) -> dict:
        """SFT after alignment: adapter + LLM (IA-SFT, swapping the snapshots in when the recipe does; b's module
        also trains the encoder), from the alignment's adapter."""
        s = self.size
        align_adapter = str(p.run / before[-1]["name"] / "export" / "adapter.safetensors")
        swap = [{"class_path": "callbacks.EncoderHotSwap", "init_args": {
            "snapshot_dir": str(p.pre / "export" / "snapshots"), "poll_every_n_steps": 5,
            "final_by_step": s.final_by_step, "replay_start": s.replay_start,
            "replay_pace": round(s.replay_pace(), 3)}}] if p.recipe.swaps else []
        return {**p.lm_init, **p.no_head, "trainer.max_steps": s.ia_sft, "model.init_args.optim": _optim(s.sft_lr, 40),
                "model.init_args.init": p.init(p.align_enc, p.align_head, align_adapter), "trainer.callbacks": swap}

    def _joint_overrides(self, p: _RecipePlan, before: list[dict]) -> dict:
        """The last stage, joint SFT: everything trains, from the previous stage's exports."""
        s = self.size
        last = p.run / before[-1]["name"] / "export"
        return {"model.init_args.llm.name_or_path": str(last / "llm"), **p.no_head, "trainer.max_steps": s.joint,
                "model.init_args.init": {**p.init(str(last / "encoder.safetensors"), str(last / "ctc_head.safetensors"),
                                                  str(last / "adapter.safetensors")),
                                         **({"phone_frames": str(last / "phone_frames.safetensors")} if p.bridged
                                            else {})},
                "model.init_args.optim": _optim(s.joint_lr, 20), "trainer.callbacks": [self.probe(s.joint)]}

    def pretrained_encoder(self, name: str) -> Path | None:
        """The pretraining export the recipe's encoder ends up from (None for the single-stage recipe)."""
        units = RECIPE_TABLE[name].pretraining
        return None if units is None else self.pretrain_dir(units) / "export" / "encoder.safetensors"


class _RecipePlan:
    """What the stages of one recipe's run share: its dir, what its adapter reads, the pretraining it starts from."""

    def __init__(self, study: Study, name: str):
        self.bridged = study.adapter_of(name) == "posteriors"
        self.recipe = RECIPE_TABLE[name]
        s, lm = study.size, study.lm
        self.run = study.dir / name
        self.table = str(lm / "phone_frames.safetensors")
        # every recipe reads all silence (no adapter.max_silence: the frame recipes have no CTC head past alignment
        # to find it with), as the study's recorded results were made
        if self.bridged:  # the CTC head's phone posteriors through the asset's phone table, soft (hold 0), as the
            # study's recorded results were made; the tiny pipeline now holds the greedy phones (adapter.hold 3)
            self.frames = {"model.init_args.adapter": {"k": 4, "input": "phone_posteriors", "hold": 0,
                                                       "max_silence": None}}
            self.no_head = dict(self.frames)
        else:  # the paper's adapter reads encoder frames (no phone table, no CTC head past alignment)
            self.frames = {"model.init_args.adapter": {"k": 4, "input": "encoder", "hold": 0, "max_silence": None},
                           "model.init_args.phone_frames": None}
            self.no_head = {**self.frames, "model.init_args.ctc_head": None}
        # the LM loss alone in every SFT stage, as recorded (the tiny joint SFT now keeps the encoder's phone CTC)
        self.no_head["model.init_args.ctc_weight"] = 0.0
        self.lm_init = {"model.init_args.llm.name_or_path": str(lm / "llm")}
        self.distill = {"phone_frames": self.table, "adapter": str(lm / "adapter.safetensors"), "weight": 1.0}
        units = self.recipe.pretraining
        self.pre = study.pretrain_dir(units) if units else None
        if self.pre is None:
            self.align_enc = self.align_head = None
            return
        swaps = self.recipe.swaps
        # c and d align on pretraining's first snapshot (the method); b and e on its final encoder (and so do
        # their SFT stages: only the swapping recipes move on from there)
        self.align_enc = (_snapshot(self.pre, "encoder", s.reference_step) if swaps
                          else str(self.pre / "export" / "encoder.safetensors"))
        # the encoder's own phone head (None for a character head, which cannot time phones)
        self.align_head = None if units == "chars" else (_snapshot(self.pre, "ctc_head", s.reference_step) if swaps
                                                         else str(self.pre / "export" / "ctc_head.safetensors"))

    def init(self, encoder: str | None, head: str | None, adapter: str) -> dict:
        """A stage's init: in posteriors mode the encoder's CTC head and the phone table come with it."""
        out = {"adapter": adapter} if encoder is None else {"encoder": encoder, "adapter": adapter}
        if self.bridged:
            out.update(phone_frames=self.table, **({"ctc_head": head} if head else {}))
        return out


def schedules(size: Size, adapters: dict[str, str]) -> str:
    """Markdown: each recipe's stages, steps, learning rates, what the encoder does and what the adapter reads."""
    s = size
    pre = f"CTC pretraining {s.pretrain} @ {s.pretrain_lr:g}"
    align = f"alignment {s.align} @ {s.align_lr:g}"
    sft = f"{s.ia_sft} @ {s.sft_lr:g}"
    joint = f"joint SFT {s.joint} @ {s.joint_lr:g}"
    rows = {
        "a": f"joint SFT of a fresh encoder {s.total} @ {s.single_stage_lr:g} | trains from scratch",
        "b": f"phone {pre} → {align} (final encoder) → SFT {sft}, encoder trains → {joint} | trains from "
             "alignment on",
        "c": f"phone {pre} → {align} (snapshot at step {s.reference_step}) → IA-SFT {sft}, hot-swaps (final one by "
             f"step {s.final_by_step}) → {joint} | frozen, swapped; trains in joint SFT",
        "d": f"character {pre} → as c | as c",
        "e": f"phone {pre} → {align} (final encoder) → IA-SFT {sft}, no swaps → {joint} | frozen (final); trains in "
             "joint SFT",
        "f": "as c | as c",
    }
    rows = {r: row for r, row in rows.items() if r in adapters}
    lines = ["| recipe | stages: optimizer steps @ peak learning rate | the encoder | the adapter reads |",
             "|---|---|---|---|"]
    lines += [f"| {r}: {RECIPES[r].split(' (')[0]} | {row} | {ADAPTERS[adapters[r]].split(' (')[0]} |"
              for r, row in rows.items()]
    return "\n".join(lines)


def _probe_data(data, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    probe = []
    for i, batch in enumerate(data.val_dataloader()):  # read once, for every encoder
        if i == batches:
            break
        probe.append((batch["feats"], batch["feat_lens"]))
    return probe


def _load_encoder(path: Path, config_path: Path):
    import yaml

    from entropy_asr.model.encoder import ConformerEncoder, EncoderConfig
    from entropy_asr.model.export import load_component

    enc = ConformerEncoder(EncoderConfig(**yaml.safe_load(config_path.read_text())["model"]["init_args"]["encoder"]))
    load_component(enc, path, "encoder")
    return enc.eval()


def encoder_layers(path: Path, config_path: Path, probe: list, max_frames: int = 8192) -> list[torch.Tensor]:
    """The valid frames (padding dropped, evenly thinned to max_frames) after each Conformer block and after the
    final norm (the encoder's output, last), in float64."""
    from callbacks.common import evenly_spaced
    from entropy_asr.model.masks import length_mask

    enc = _load_encoder(path, config_path)
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(len(enc.layers) + 1)]
    current: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: current.append(o)) for layer in enc.layers]
    try:
        with torch.no_grad():
            for x, x_lens in probe:
                current.clear()
                out, lens = enc(x, x_lens)
                valid = length_mask(lens, out.shape[1])
                for k, h in enumerate([*current, out]):
                    per_layer[k].append(h[valid].double())
    finally:
        for h in hooks:
            h.remove()
    return [evenly_spaced(torch.cat(frames), max_frames) for frames in per_layer]


def nse_by_layer(path: Path, config_path: Path, probe: list) -> list[float]:
    """NSE after each Conformer block, then of the encoder's output (after its final norm)."""
    return [normalized_spectral_entropy(x) for x in encoder_layers(path, config_path, probe)]


def _study_data(study: Study):
    from datamodules.speech import SpeechDataModule
    from entropy_asr.data.augment import AugmentConfig

    data = SpeechDataModule(synthetic=study.synthetic, num_workers=0, augment=AugmentConfig(
        speed_factors=[1.0], noise_prob=0.0, spec_freq_masks=0, spec_time_masks=0))
    data.setup("validate")
    return _probe_data(data, 4)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def measure_pretraining(study: Study, units: str, probe: list) -> dict:
    """NSE over a pretraining run's steps and per layer of its export."""
    run = study.pretrain_dir(units)
    curve = [{"step": e["step"], "nse": e["encoder"]["nse"]} for e in _read_jsonl(run / "entropy.jsonl")
             if "encoder" in e]
    export = run / "export" / "encoder.safetensors"
    return {"units": units, "nse_by_step": curve, "nse_by_layer": nse_by_layer(export, run / "config.yaml", probe)}


def measure(study: Study, name: str, stress: dict[str, Path], probe: list) -> dict:
    """Evaluate the recipe's final model; its probe figures before/after the last stage; CKA; NSE per layer."""
    from experiments import evaluate

    run = study.dir / name
    final = run / "joint_sft"
    root = corpus_dir(**study.synthetic)
    argv = ["--checkpoint", str(final), "--out", str(run / "eval"), "--wandb", "disabled",
            "--beam", "1",  # greedy, as the recorded results were decoded (the tiny configs now decode with 4 beams)
            "--device", "cuda" if torch.cuda.is_available() and study.size.trainer else "cpu",
            "--data", str(root / "test"), "--data", str(root / "test_unseen_voice"),
            "--data", str(stress["nonspeech_wide"]), "--data", str(stress["test_padded"])]
    metrics = evaluate.main(argv)
    summary: dict = {"recipe": name, "seed": study.seed, "eval": metrics["sets"]}
    entries = _read_jsonl(final / "accessible_information.jsonl")
    if len(entries) < 2:
        raise RuntimeError(f"{final}/accessible_information.jsonl: expected the probe before and after the stage, "
                           f"found {len(entries)} entries")
    summary["probe_before"], summary["probe"] = entries[0], entries[-1]
    layers = encoder_layers(final / "export" / "encoder.safetensors", final / "config.yaml", probe)
    summary["nse_by_layer"] = [normalized_spectral_entropy(x) for x in layers]
    pretrained = study.pretrained_encoder(name)
    if pretrained is not None:
        summary["cka_to_pretrained"] = linear_cka(layers[-1],
                                                  encoder_layers(pretrained, final / "config.yaml", probe)[-1])
    swaps = run / "ia_sft" / "swaps.jsonl"
    summary["swaps"] = [e["step"] for e in _read_jsonl(swaps)]
    summary["fit_seconds"] = {p.parent.name: json.loads(p.read_text()).get("fit_seconds")
                              for p in sorted(run.glob("*/results.json"))}
    return summary


# Per-utterance rates: (row label, set, language or None for all, errors(record), units(record))
def _errors(r: dict) -> float:
    return r["errors"]


def _ref_units(r: dict) -> float:
    return r["ref_units"]


def _one(r: dict) -> float:
    return 1.0


UTTERANCE_ROWS = [
    ("test CER zh %", "test", "zh", _errors, _ref_units),
    ("test WER en %", "test", "en", _errors, _ref_units),
    ("test MER mix %", "test", "mix", _errors, _ref_units),
    ("unseen-voice CER zh %", "test_unseen_voice", "zh", _errors, _ref_units),
    ("unseen-voice WER en %", "test_unseen_voice", "en", _errors, _ref_units),
    ("unseen-voice MER mix %", "test_unseen_voice", "mix", _errors, _ref_units),
    ("test insertion rate %", "test", None, lambda r: r["insertions"], _ref_units),
    ("test hallucination rate %", "test", None, lambda r: float("hallucination" in r["flags"]), _one),
    ("non-speech emission rate %", "nonspeech_wide", None, lambda r: float(r["hyp_units"] > 0), _one),
    ("padded speech error rate %", "test_padded", None, _errors, _ref_units),
    ("padded speech insertion rate %", "test_padded", None, lambda r: r["insertions"], _ref_units),
    ("padded speech hallucination rate %", "test_padded", None, lambda r: float("hallucination" in r["flags"]), _one),
]
# Once-per-model figures: (row label, path in summary.json, format)
MODEL_ROWS = [
    ("encoder NSE before last stage", ("probe_before", "nse_encoder"), ".3f"),
    ("encoder NSE", ("probe", "nse_encoder"), ".3f"),
    ("encoder PAI bits/frame before last stage", ("probe_before", "pai_bits"), ".2f"),
    ("encoder PAI bits/frame", ("probe", "pai_bits"), ".2f"),
    ("encoder CSAI bits/unit before last stage", ("probe_before", "csai_bits"), ".2f"),
    ("encoder CSAI bits/unit", ("probe", "csai_bits"), ".2f"),
    ("CKA final vs pretrained encoder", ("cka_to_pretrained",), ".3f"),
    ("H0 bits/char", ("probe", "h0_bits_per_char"), ".2f"),
    ("H1 bits/char before last stage", ("probe_before", "h1_bits_per_char"), ".2f"),
    ("H1 bits/char", ("probe", "h1_bits_per_char"), ".2f"),
    ("I = H0 - H1 bits/char", ("probe", "info_bits_per_char"), ".2f"),
]
ROWS = [label for label, *_ in UTTERANCE_ROWS] + [label for label, *_ in MODEL_ROWS]

# (claim, x, y, rows, expected sign of x - y): x - y is expected "lower" (better error, less drift...) or "higher"
CLAIMS = [
    ("Staged training (the method) beats single-stage training at equal steps", "c", "a",
     ["test CER zh %", "test WER en %", "test MER mix %", "unseen-voice CER zh %", "unseen-voice WER en %",
      "unseen-voice MER mix %"], "lower"),
    ("The method hallucinates less than single-stage training", "c", "a",
     ["non-speech emission rate %", "padded speech insertion rate %", "padded speech hallucination rate %",
      "test hallucination rate %"], "lower"),
    ("Phone-CTC pretraining beats character-CTC pretraining", "c", "d",
     ["test CER zh %", "test WER en %", "test MER mix %", "unseen-voice CER zh %", "unseen-voice WER en %",
      "unseen-voice MER mix %"], "lower"),
    ("Phone CTC gives a lower-entropy encoder than character CTC (NSE)", "c", "d", ["encoder NSE"], "lower"),
    ("Phone CTC keeps more phonetic information in the encoder (PAI)", "c", "d", ["encoder PAI bits/frame"],
     "higher"),
    ("Freezing the encoder in SFT keeps it close to its pretrained self (CKA): e vs b", "e", "b",
     ["CKA final vs pretrained encoder"], "higher"),
    ("Freezing the encoder in SFT improves recognition: e vs b", "e", "b",
     ["test CER zh %", "test WER en %", "test MER mix %", "unseen-voice CER zh %", "unseen-voice WER en %",
      "unseen-voice MER mix %"], "lower"),
    ("Freezing the encoder in SFT cuts hallucination: e vs b", "e", "b",
     ["non-speech emission rate %", "padded speech insertion rate %", "padded speech hallucination rate %"], "lower"),
    ("Hot-swapping improves on a fixed final encoder: c vs e", "c", "e",
     ["test CER zh %", "test WER en %", "test MER mix %", "unseen-voice CER zh %", "unseen-voice WER en %",
      "unseen-voice MER mix %"], "lower"),
    ("The method beats multi-stage training without IA-SFT: c vs b", "c", "b",
     ["test CER zh %", "test WER en %", "test MER mix %", "unseen-voice CER zh %", "unseen-voice WER en %",
      "unseen-voice MER mix %", "non-speech emission rate %", "padded speech insertion rate %"], "lower"),
]


def _get(summary: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(summary, dict) or key not in summary:
            return None
        summary = summary[key]
    return float(summary) if isinstance(summary, (int, float)) else None


def utterance_arrays(records: list[dict], row: tuple) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, errors, units) of one per-utterance row from a run's eval/hyps.jsonl records, sorted by id."""
    _, set_name, lang, err, units = row
    chosen = sorted((r for r in records if r["set"] == set_name and (lang is None or r["language"] == lang)),
                    key=lambda r: r["id"])
    return ([r["id"] for r in chosen], np.array([err(r) for r in chosen], np.float64),
            np.array([units(r) for r in chosen], np.float64))


def _stats(values: list[float | None]) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "sd": None, "n": 0, "values": values}
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": len(vals), "values": values}


class Evidence:
    """Every recipe's per-seed values: per-utterance (errors, units) arrays and once-per-model figures."""

    def __init__(self, summaries: dict[str, list[dict]], records: dict[str, list[list[dict]]]):
        self.summaries, self.seeds = summaries, {r: [s["seed"] for s in runs] for r, runs in summaries.items()}
        self.arrays: dict[str, dict[str, tuple]] = {}
        for recipe, per_seed in records.items():
            self.arrays[recipe] = {}
            for row in UTTERANCE_ROWS:
                got = [utterance_arrays(recs, row) for recs in per_seed]
                ids = {tuple(g[0]) for g in got}
                if len(ids) > 1:
                    raise ValueError(f"recipe {recipe}: the seeds decoded different {row[1]} utterances; "
                                     "rerun the eval")
                if got and got[0][0]:
                    self.arrays[recipe][row[0]] = (got[0][0], np.stack([g[1] for g in got]),
                                                   np.stack([g[2] for g in got]))

    def model_values(self, recipe: str, label: str) -> list[float | None]:
        path = next(p for lab, p, _ in MODEL_ROWS if lab == label)
        return [_get(s, path) for s in self.summaries[recipe]]

    def values(self, recipe: str, label: str) -> list[float | None]:
        """Each seed's value of a row (a rate over the set's utterances, or the model figure)."""
        if label in self.arrays.get(recipe, {}):
            _, err, units = self.arrays[recipe][label]
            return [float(e.sum() / u.sum()) if u.sum() > 0 else None for e, u in zip(err, units)]
        if any(label == lab for lab, *_ in UTTERANCE_ROWS):
            return [None] * len(self.summaries[recipe])
        return self.model_values(recipe, label)

    def table(self) -> dict:
        return {r: {label: _stats(self.values(r, label)) for label in ROWS} for r in self.summaries}

    def compare(self, x: str, y: str, label: str, reps: int = 4000) -> dict | None:
        """Paired difference x - y over the seeds both have (and the same utterances), or None if not measured."""
        if x not in self.summaries or y not in self.summaries:
            return None
        common = [s for s in self.seeds[x] if s in self.seeds[y]]
        if not common:
            return None
        ix, iy = ([self.seeds[r].index(s) for s in common] for r in (x, y))
        if label in self.arrays.get(x, {}) and label in self.arrays.get(y, {}):
            (idx, ex, ux), (idy, ey, uy) = self.arrays[x][label], self.arrays[y][label]
            if idx != idy:
                raise ValueError(f"{label}: recipes {x} and {y} decoded different utterances; rerun their eval")
            return paired_difference(ex[ix], ux[ix], ey[iy], uy[iy], reps=reps)
        if any(label == lab for lab, *_ in UTTERANCE_ROWS):
            return None  # a set or language one of them did not decode
        vx, vy = self.model_values(x, label), self.model_values(y, label)
        pairs = [(vx[i], vy[j]) for i, j in zip(ix, iy) if vx[i] is not None and vy[j] is not None]
        if not pairs:
            return None
        a = np.array(pairs)
        return paired_difference(a[:, :1], np.ones((len(a), 1)), a[:, 1:], np.ones((len(a), 1)), reps=reps)

    def claims(self) -> list[dict]:
        out = []
        for claim, x, y, rows, expect in CLAIMS:
            if y == "d" and "f" in self.summaries:  # d's pair is the phone recipe with d's (frame) adapter
                x = "f"
            tests = []
            for label in rows:
                d = self.compare(x, y, label)
                if d is not None:  # one seed says nothing about training noise: no verdict from it
                    v = verdict(d["low"], d["high"], expect) if d["seeds"] > 1 else "undecided (one seed)"
                    tests.append({"row": label, **d, "verdict": v})
            if tests:
                out.append({"claim": claim, "x": x, "y": y, "expect": expect, "tests": tests,
                            "verdict": overall_verdict([t["verdict"] for t in tests])})
        return out


def overall_verdict(verdicts: list[str]) -> str:
    """One claim's verdict from its rows': all agree -> that; mixed -> 'mixed (k of n reproduce)'."""
    if len(set(verdicts)) == 1:
        return verdicts[0]
    return (f"mixed: {verdicts.count('reproduces')} reproduce, {verdicts.count('does not')} do not, "
            f"{verdicts.count('undecided')} undecided")


def _scale(label: str) -> float:
    return 100.0 if label.endswith("%") else 1.0


def _fmt(label: str) -> str:
    return next((f for lab, _, f in MODEL_ROWS if lab == label), ".1f")


def format_table(table: dict) -> str:
    """Markdown: one row per metric, one column per recipe, 'mean ± sd' (sample sd over seeds)."""
    recipes = list(table)
    lines = ["| metric | " + " | ".join(f"{r}: {RECIPES[r].split(' (')[0]}" for r in recipes) + " |",
             "|---" * (len(recipes) + 1) + "|"]
    for label in ROWS:
        k, f = _scale(label), _fmt(label)
        cells = ["n/a" if table[r][label]["mean"] is None else
                 f"{k * table[r][label]['mean']:{f}} ± {k * table[r][label]['sd']:{f}}" for r in recipes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_claims(claims: list[dict]) -> str:
    """Markdown: each claim's rows with the paired difference x - y and its 95% interval, and the verdicts."""
    lines = ["| claim | x − y | row | difference [95% interval] | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        for i, t in enumerate(c["tests"]):
            k, f = _scale(t["row"]), _fmt(t["row"])
            head = f"**{c['claim']}** ({c['verdict']})" if i == 0 else ""
            lines.append(f"| {head} | {c['x']} − {c['y']} | {t['row']} | {k * t['diff']:+{f}} "
                         f"[{k * t['low']:+{f}}, {k * t['high']:+{f}}] | {t['verdict']} |")
    return "\n".join(lines)


def format_nse(pretraining: dict[str, list[dict]], summaries: dict[str, list[dict]]) -> str:
    """Markdown: NSE per encoder layer (pretraining exports and each recipe's final encoder), mean over seeds."""
    rows = {f"{u} CTC export": [p["nse_by_layer"] for p in runs] for u, runs in pretraining.items()}
    rows.update({f"{r}: final encoder": [s["nse_by_layer"] for s in runs if "nse_by_layer" in s]
                 for r, runs in summaries.items()})
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return ""
    n = len(next(iter(rows.values()))[0])
    lines = ["| encoder | " + " | ".join([f"block {i + 1}" for i in range(n - 1)] + ["output"]) + " |",
             "|---" * (n + 1) + "|"]
    for name, per_seed in rows.items():
        mean = np.mean(np.array(per_seed), axis=0)
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in mean) + " |")
    return "\n".join(lines)


def format_nse_steps(pretraining: dict[str, list[dict]]) -> str:
    """Markdown: the encoder output's NSE over pretraining steps, phone vs character CTC (mean over seeds)."""
    curves = {}
    for units, runs in pretraining.items():
        by_step: dict[int, list[float]] = {}
        for p in runs:
            for e in p["nse_by_step"]:
                by_step.setdefault(e["step"], []).append(e["nse"])
        curves[units] = {s: float(np.mean(v)) for s, v in by_step.items()}
    steps = sorted(set().union(*[c.keys() for c in curves.values()])) if curves else []
    if not steps:
        return ""
    lines = ["| step | " + " | ".join(f"{u} CTC" for u in curves) + " |", "|---" * (len(curves) + 1) + "|"]
    for s in steps:
        lines.append(f"| {s} | " + " | ".join(f"{c[s]:.3f}" if s in c else "" for c in curves.values()) + " |")
    return "\n".join(lines)


def _records(run: Path) -> list[dict]:
    return _read_jsonl(run / "eval" / "hyps.jsonl")


def check_mode(out: Path, size_name: str, adapter: str) -> None:
    """OUT/study.json records the size and adapter mode its runs were made with; another mode is refused (a
    finished run is skipped by name, so runs of another mode would be reported as this one's)."""
    path, mode = out / "study.json", {"size": size_name, "adapter": adapter}
    if path.exists():
        made = json.loads(path.read_text())
        if made != mode:
            raise UserError(f"{out} holds a study made with {made}, not {mode}; use another --out (or the same "
                            "--size and --adapter)")
        return
    if any(out.glob("seed*/*/summary.json")):
        raise UserError(f"{out} holds runs from a study that did not record its size and adapter mode ({path}); use "
                        f"another --out, or write {json.dumps(mode)} into {path} if they were made so")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, mode)


def prepare_study(out: Path, size: Size, recipes: list[str]) -> dict[str, Path]:
    """The corpus, the character inventory (if d runs) and the hallucination sets; returns the latter."""
    out.mkdir(parents=True, exist_ok=True)
    root = ensure_corpus(utterances=size.utterances, seed=0)
    if "d" in recipes and not (out / "chars.json").exists():
        inv = build_char_inventory(root / "train", out / "chars.json")
        print(f"== character inventory: {len(inv)} symbols -> {out / 'chars.json'}", flush=True)
    return build_stress_sets(root, out / "stress", nonspeech=size.nonspeech, padded=size.padded,
                             paused=0)


class _Probe:
    """The probe batches (the same for every seed and recipe), read once when first needed."""

    def __init__(self):
        self.data: list | None = None

    def get(self, study: Study) -> list:
        self.data = self.data or _study_data(study)
        return self.data


def pretrain(study: Study, units: str, extra: list[str], probe: _Probe) -> dict:
    """One seed's CTC pretraining on `units` and its measurements (skipped when done)."""
    from experiments.pipeline import run_pipeline

    done = study.pretrain_dir(units) / "measured.json"
    if not done.exists():
        run_pipeline({"run_dir": str(study.dir), "stages": [study.pretraining(units)]}, study.common() + extra)
        atomic_write_json(done, measure_pretraining(study, units, probe.get(study)))
    return json.loads(done.read_text())


def run_recipe(study: Study, name: str, stress: dict[str, Path], extra: list[str], probe: _Probe) -> dict:
    """One seed's recipe, evaluated and measured (skipped when done); needs the seed's pretraining."""
    from experiments.pipeline import run_pipeline

    done = study.dir / name / "summary.json"
    if not done.exists():
        t = time.perf_counter()
        run_pipeline({"run_dir": str(study.dir / name), "stages": study.recipe(name)}, study.common() + extra)
        summary = measure(study, name, stress, probe.get(study))
        summary["wall_seconds"] = round(time.perf_counter() - t, 1)
        atomic_write_json(done, summary)
        print(f"== seed {study.seed} recipe {name}: done in {summary['wall_seconds']:.0f} s", flush=True)
    return json.loads(done.read_text())


def _units(recipes: list[str]) -> list[str]:
    return ["phones"] + (["chars"] if "d" in recipes else [])


# rough relative run times for --jobs' order (tiny size): single-stage a > a pretraining run > d > the rest
TASK_COST = {"a": 3.0, "phones": 2.0, "chars": 2.0, "d": 1.5}


def run_tasks(out: Path, size: Size, seeds: list[int], recipes: list[str], adapter: str, jobs: int,
              argv: list[str]) -> None:
    """Every seed's pretraining runs and recipes as their own processes, `jobs` at a time, each pinned to its
    share of this process's cores (a recipe starts once its seed's pretraining is done). On 2 cores two
    1-core runs train 1.5x as fast together as one 2-core run (measured on the tiny pretraining)."""
    cores = sorted(os.sched_getaffinity(0))
    if not 1 <= jobs <= len(cores):
        raise UserError(f"--jobs {jobs}: choose 1 to {len(cores)} (the cores this process may use)")
    slots = [cores[i::jobs] for i in range(jobs)]
    tasks: list[tuple[str, str, list[str], Path]] = []  # (name, --task value, dependencies, done file)
    for s in seeds:
        study = Study(out, size, s, adapter)
        tasks += [(f"seed{s}/pretrain_{u}", f"pretrain:{s}:{u}", [], study.pretrain_dir(u) / "measured.json")
                  for u in _units(recipes)]
        for r in recipes:
            deps = [f"seed{s}/pretrain_phones"] + ([f"seed{s}/pretrain_chars"] if r == "d" else [])
            tasks.append((f"seed{s}/{r}", f"recipe:{s}:{r}", deps, study.dir / r / "summary.json"))
    done = {name for name, _, _, file in tasks if file.exists()}
    pending = [t for t in tasks if t[0] not in done]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running: dict[int, tuple[str, subprocess.Popen, float]] = {}
    failed: dict[str, str] = {}
    print(f"== {len(pending)} of {len(tasks)} runs to do, {jobs} at a time on cores {slots}; logs in {out / 'logs'}",
          flush=True)
    def stop(signum, frame):  # a SIGTERM to this process ends its runs too (through the finally below)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            for slot, (name, proc, t) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                log = out / "logs" / f"{name.replace('/', '_')}.log"
                if proc.returncode == 0:
                    done.add(name)
                    print(f"== {name}: done in {time.perf_counter() - t:.0f} s", flush=True)
                else:
                    failed[name] = f"exit code {proc.returncode}, log {log}"
                    print(f"== {name}: FAILED ({failed[name]})", flush=True)
            for t in [t for t in pending if any(d in failed for d in t[2])]:
                pending.remove(t)
                failed[t[0]] = "its pretraining failed"
            for slot in [i for i in range(jobs) if i not in running]:
                ready = [t for t in pending if all(d in done for d in t[2])]
                if not ready:
                    break
                # the longest first (the last runs then end together), in seed order among equals
                ready = max(ready, key=lambda t: TASK_COST.get(t[1].split(":")[2], 1.0))
                pending.remove(ready)
                log = (out / "logs" / f"{ready[0].replace('/', '_')}.log").open("a")
                cores_arg = ",".join(map(str, slots[slot]))
                # OpenMP sizes its pool when torch loads, before the child pins itself: without this its idle
                # threads spin on the one core and a smoke pretraining takes 7.8 min instead of 24 s (measured)
                env = {**os.environ, "OMP_NUM_THREADS": str(len(slots[slot])), "MKL_NUM_THREADS": str(len(slots[slot]))}
                proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv, "--task", ready[1],
                                         "--task-cores", cores_arg], stdout=log, stderr=subprocess.STDOUT, env=env)
                log.close()  # the child holds its own handle
                running[slot] = (ready[0], proc, time.perf_counter())
                print(f"== {ready[0]}: started on cores {slots[slot]}", flush=True)
            time.sleep(1.0)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for _, proc, _ in running.values():  # interrupted: no orphan keeps training or holds a run dir's lock
            proc.terminate()
        for _, proc, _ in running.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if failed:
        raise RuntimeError("reproduce: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))


def run_task(out: Path, size: Size, adapter: str, task: str, extra: list[str]) -> None:
    """--task pretrain:SEED:UNITS or recipe:SEED:NAME (one process of run_tasks)."""
    kind, seed, what = task.split(":")
    study = Study(out, size, int(seed), adapter)
    if kind == "pretrain":
        pretrain(study, what, extra, _Probe())
    else:
        run_recipe(study, what, prepare_study(out, size, [what]), extra, _Probe())


def run_study(out: Path, size: Size, seeds: list[int], recipes: list[str], extra: list[str],
              adapter: str = "mixed", t0: float | None = None) -> dict:
    t0 = time.perf_counter() if t0 is None else t0
    stress = prepare_study(out, size, recipes)
    summaries: dict[str, list[dict]] = {r: [] for r in recipes}
    records: dict[str, list[list[dict]]] = {r: [] for r in recipes}
    pretraining: dict[str, list[dict]] = {}
    probe = _Probe()
    for seed in seeds:
        study = Study(out, size, seed, adapter)
        for u in _units(recipes):
            pretraining.setdefault(u, []).append(pretrain(study, u, extra, probe))
        for name in recipes:
            summaries[name].append(run_recipe(study, name, stress, extra, probe))
            records[name].append(_records(study.dir / name))
    evidence = Evidence(summaries, records)
    table, claims = evidence.table(), evidence.claims()
    adapters = {r: Study(out, size, seeds[0], adapter).adapter_of(r) for r in recipes}
    sections = [("Schedules", schedules(size, adapters)), ("Results: mean ± sample sd over seeds", format_table(table)),
                ("Claims: paired differences x − y, two-level bootstrap 95% intervals", format_claims(claims)),
                ("NSE per encoder layer (mean over seeds)", format_nse(pretraining, summaries)),
                ("NSE of the encoder output over pretraining steps (mean over seeds)", format_nse_steps(pretraining))]
    markdown = "\n\n".join(f"## {title}\n\n{body}" for title, body in sections if body)
    results = {"size": {**asdict(size), "total_steps": size.total}, "seeds": seeds, "recipes": recipes,
               "adapter": adapter, "adapters": adapters,
               "table": table, "claims": claims, "pretraining": pretraining,
               "per_run": {r: [{k: s.get(k) for k in ("seed", "swaps", "nse_by_layer", "cka_to_pretrained",
                                                         "fit_seconds", "wall_seconds")} for s in runs]
                           for r, runs in summaries.items()},
               "wall_seconds": round(time.perf_counter() - t0, 1),
               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}",
               "date": time.strftime("%Y-%m-%d")}
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "table.md", (markdown + "\n").encode())
    print(markdown)
    print(f"reproduce: {results['wall_seconds']:.0f} s; {out}/table.md, {out}/results.json")
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    p.add_argument("--size", choices=sorted(SIZES), default="tiny",
                   help="tiny: this 2-core CPU in under 3 h; gpu: 4x steps, bf16 on one GPU, 5 seeds; "
                        "smoke: every stage for a few steps (checks the script)")
    p.add_argument("--seeds", type=int, nargs="+", help="default: the size's (tiny 0 1 2, gpu 0-4, smoke 0)")
    p.add_argument("--recipes", nargs="+", choices=sorted(RECIPES),
                   help="default: a-f (mixed), a-e (frames), a b c e (posteriors)")
    p.add_argument("--adapter", choices=sorted(ADAPTERS), default="mixed",
                   help="what the adapter reads: mixed (default): the CTC head's phone posteriors through the LLM "
                        "asset's phone table (the tiny pipeline's bridge) in a, b, c, e, and encoder frames in the "
                        "phone-vs-character pair f, d; frames: encoder frames everywhere (the paper's adapter, "
                        "a-e); posteriors: a, b, c, e only. Give each mode its own --out")
    p.add_argument("--wandb", choices=["offline", "online", "disabled"], default="disabled",
                   help="W&B for every stage (default disabled: the study's figures are the table; an offline "
                        "run costs ~7 s a stage)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each on its own share of the cores (2 on a 2-core machine: about 1.5x the "
                        "throughput of one run on both); logs in OUT/logs/")
    p.add_argument("--task", help=argparse.SUPPRESS)  # one run of --jobs: pretrain:SEED:UNITS or recipe:SEED:NAME
    p.add_argument("--task-cores", help=argparse.SUPPRESS)  # the cores it runs on (its stages inherit them)
    a, extra = p.parse_known_args(argv)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    size = SIZES[a.size]
    recipes = a.recipes or list(MODE_RECIPES[a.adapter])
    wrong = [r for r in recipes if r not in MODE_RECIPES[a.adapter]]
    if wrong:
        p.error(f"--recipes {' '.join(wrong)} with --adapter {a.adapter}: that mode runs "
                f"{' '.join(MODE_RECIPES[a.adapter])} (d needs a frame adapter; f is c with frames, c itself in "
                "frames mode)")
    if a.adapter == "mixed" and "d" in recipes and "f" not in recipes:
        p.error("--recipes d with --adapter mixed needs f too: d's phone-CTC pair is f (both read encoder frames)")
    extra = ["--wandb", a.wandb, *extra]
    if a.task:
        if a.task_cores:  # before any stage starts a thread: they all inherit it
            os.sched_setaffinity(0, {int(c) for c in a.task_cores.split(",")})
        return run_task(a.out, size, a.adapter, a.task, extra)
    seeds, t0 = list(a.seeds or size.seeds), time.perf_counter()
    check_mode(a.out, a.size, a.adapter)
    if a.jobs > 1:
        prepare_study(a.out, size, recipes)
        run_tasks(a.out, size, seeds, recipes, a.adapter, a.jobs,
                  ["--out", str(a.out), "--size", a.size, "--adapter", a.adapter, *extra])
    return run_study(a.out, size, seeds, recipes, extra, a.adapter, t0)


if __name__ == "__main__":
    run_main(main)
