"""The paper's claims in miniature: `python experiments/reproduce.py` (issue 5; docs/reproduce.md).

Four recipes on the synthetic corpus, at equal data and equal total optimizer steps, each for
several seeds:
  a  single-stage: a fresh encoder, the adapter and the text-pretrained LLM trained together;
  b  multi-stage without IA-SFT: phone-CTC pretraining, alignment (on the pretrained encoder),
     joint SFT for the steps IA-SFT and joint SFT get in c;
  c  the method: phone-CTC pretraining, alignment on its first snapshot, IA-SFT hot-swapping the
     later snapshots (a deterministic replay of pretraining running beside it), joint SFT;
  d  as c, with character-CTC pretraining (entropy_asr.text.chars) instead of phones.
Each stage is experiments/run.py on the tiny configs plus the overrides built here. The LLM and its
pseudo-speech reader are the shipped pretrained asset (docs/tiny_llm.md), the same for every
recipe and seed; a seed sets the speech stages' initialization and data order (seed_everything,
data.seed). Pretraining runs once per seed and
unit (b and c share the phone run), and IA-SFT replays its snapshots (callbacks.EncoderHotSwap
replay_*) as if pretraining ran beside it at the pace measured in the tiny pipeline, so each
run is reproducible and the recipes differ only in what they train.

After each recipe: evaluate.py on test, test_unseen_voice and nonspeech; the final encoder's
NSE, PAI and CSAI and the LLM's H0/H1 (callbacks.AccessibleInformationProbe at the end of the
last stage, frames labelled by the seed's phone pretraining, the same labeller for every recipe);
linear CKA of the final encoder to the pretraining export it started from. Per run:
OUT/seed<s>/<recipe>/summary.json; finished runs are skipped, an interrupted stage resumes.
At the end: OUT/table.md and OUT/results.json (mean, sample sd and each seed's value).

  python experiments/reproduce.py                      # tiny, seeds 0 1 2, recipes a b c d, CPU
  python experiments/reproduce.py --size gpu           # 4x the steps and corpus, bf16 on a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from entropy_asr.assets import asset_dir
from entropy_asr.data.shards import atomic_write_bytes, atomic_write_json
from entropy_asr.data.synthetic import corpus_dir, ensure_corpus
from entropy_asr.metrics.cka import linear_cka
from entropy_asr.text.chars import build_char_inventory

RECIPES = {
    "a": "single-stage (fresh encoder + adapter + LLM together)",
    "b": "multi-stage without IA-SFT (pretrain, align, joint)",
    "c": "full method (pretrain, align, IA-SFT with hot-swaps, joint)",
    "d": "as c, character-CTC pretraining",
}
CONFIGS = Path(__file__).resolve().parent / "tiny"


@dataclass(frozen=True)
class Size:
    """One study size: steps per stage (the total is every recipe's budget) and the replay pace."""

    pretrain: int = 1000
    align: int = 150
    ia_sft: int = 300
    joint: int = 120
    reference_step: int = 400  # pretraining's first snapshot (drift monitor warm-up): where c and d align
    cka_every: int = 50
    final_by_step: int = 220  # IA-SFT waits for pretraining's final snapshot here
    # pretraining steps that pass per alignment step and per IA-SFT step when they run side by side on
    # 2 cores (the tiny pipeline: 250 during 200 alignment steps, 550 during 300 IA-SFT steps)
    pace_align: float = 1.25
    pace_ia: float = 1.8
    utterances: int = 2000
    single_stage_lr: float = 5.0e-4  # a fresh encoder needs more than joint SFT's 1e-4; IA-SFT's LR
    trainer: tuple[str, ...] = ()

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
    "gpu": Size(pretrain=4000, align=600, ia_sft=1200, joint=480, reference_step=1600, cka_every=200,
                final_by_step=880, utterances=8000,
                trainer=("--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
                         "--data.init_args.num_workers", "4")),
    # seconds, for the tests and a first look: every stage and measurement, few steps
    "smoke": Size(pretrain=40, align=6, ia_sft=12, joint=6, reference_step=20, cka_every=10, final_by_step=8,
                  utterances=2000),
}


def _probe(aligner_dir: Path, steps: int) -> dict:
    """The end-of-run probe: PAI/CSAI/NSE of the encoder and H0/H1, frames labelled by `aligner_dir`'s exports."""
    return {"class_path": "callbacks.AccessibleInformationProbe",
            "init_args": {"every_n_steps": steps + 1, "probe_batches": 8, "at_start": False,
                          "aligner": {"encoder": str(aligner_dir / "encoder.safetensors"),
                                      "ctc_head": str(aligner_dir / "ctc_head.safetensors")}}}


def _snapshot(pretrain: Path, component: str, step: int) -> str:
    return str(pretrain / "export" / "snapshots" / f"{component}-step{step:08d}.safetensors")


class Study:
    """The stage lists of every recipe for one seed, and the measurements after them."""

    def __init__(self, out: Path, size: Size, seed: int):
        self.out, self.size, self.seed = out, size, seed
        self.dir = out / f"seed{seed}"
        self.lm = asset_dir("tiny_llm")  # the pretrained LLM and its reader, checked against this code's corpus
        self.chars = out / "chars.json"
        self.synthetic = {"utterances": size.utterances, "seed": 0}

    def common(self) -> list[str]:
        """run.py arguments of every speech stage: the seed, the data, no per-stage validation or test."""
        return ["--seed_everything", str(self.seed), "--data.init_args.seed", str(self.seed),
                "--data.init_args.synthetic", json.dumps(self.synthetic),
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
            "trainer.callbacks": [{"class_path": "callbacks.CKADriftMonitor", "init_args": {
                "every_n_steps": s.cka_every, "warmup_steps": s.reference_step, "threshold": 0.975,
                "probe_batches": 2}}]}}

    def recipe(self, name: str) -> list[dict]:
        """The stages of recipe `name` (a, b, c, d) in order, run dir OUT/seed<s>/<name>."""
        s, lm, run = self.size, self.lm, self.dir / name
        phone = self.pretrain_dir("phones")
        probe = _probe(phone / "export", s.total)
        # the recipes compare the paper's stages: the adapter reads encoder frames (the tiny pipeline's configs
        # read the CTC head's phone posteriors instead; a character head could not)
        frames = {"model.init_args.adapter": {"k": 4, "input": "encoder"}, "model.init_args.phone_frames": None}
        no_head = {**frames, "model.init_args.ctc_head": None}
        lm_init = {"model.init_args.llm.name_or_path": str(lm / "llm")}
        distill = {"phone_frames": str(lm / "phone_frames.safetensors"), "adapter": str(lm / "adapter.safetensors"),
                   "weight": 1.0}
        if name == "a":
            return [{"name": "joint_sft", "config": str(CONFIGS / "joint_sft.yaml"), "overrides": {
                **lm_init, **no_head, "trainer.max_steps": s.total,
                "model.init_args.init": {"adapter": str(lm / "adapter.safetensors")},
                "model.init_args.optim": {"lr": s.single_stage_lr, "warmup_steps": 100, "weight_decay": 0.01},
                "trainer.callbacks": [probe]}}]
        if name == "b":
            pre = phone / "export"
            return [
                {"name": "align", "config": str(CONFIGS / "align.yaml"), "overrides": {
                    **lm_init, **frames, "trainer.max_steps": s.align,
                    "model.init_args.init": {"encoder": str(pre / "encoder.safetensors"),
                                             "ctc_head": str(pre / "ctc_head.safetensors"),
                                             "adapter": str(lm / "adapter.safetensors")},
                    "model.init_args.distill": distill}},
                {"name": "joint_sft", "config": str(CONFIGS / "joint_sft.yaml"), "overrides": {
                    **lm_init, **no_head, "trainer.max_steps": s.ia_sft + s.joint,
                    "model.init_args.init": {"encoder": str(pre / "encoder.safetensors"),
                                             "adapter": str(run / "align" / "export" / "adapter.safetensors")},
                    # the LLM gets IA-SFT's learning rate, as in c, over the steps IA-SFT and joint SFT share there
                    "model.init_args.optim": {"lr": s.single_stage_lr, "warmup_steps": 50, "weight_decay": 0.01},
                    "trainer.callbacks": [probe]}}]
        if name not in ("c", "d"):
            raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
        pre = self.pretrain_dir("phones" if name == "c" else "chars")
        ref = s.reference_step
        align_init = {"encoder": _snapshot(pre, "encoder", ref), "adapter": str(lm / "adapter.safetensors")}
        if name == "c":  # alignment's distillation times the phones with the snapshot's own phone head
            align_init["ctc_head"] = _snapshot(pre, "ctc_head", ref)
            align_extra = {}
        else:  # a character head cannot time phones: the phone run's first snapshot does (one more forward)
            align_extra = {"model.init_args.ctc_head": None}
            distill = {**distill, "aligner": {"encoder": _snapshot(phone, "encoder", ref),
                                              "ctc_head": _snapshot(phone, "ctc_head", ref)}}
        ia = run / "ia_sft" / "export"
        return [
            {"name": "align", "config": str(CONFIGS / "align.yaml"), "overrides": {
                **lm_init, **frames, **align_extra, "trainer.max_steps": s.align, "model.init_args.init": align_init,
                "model.init_args.distill": distill}},
            {"name": "ia_sft", "config": str(CONFIGS / "ia_sft.yaml"), "overrides": {
                **lm_init, **no_head, "trainer.max_steps": s.ia_sft,
                "model.init_args.init": {"encoder": _snapshot(pre, "encoder", ref),
                                         "adapter": str(run / "align" / "export" / "adapter.safetensors")},
                "trainer.callbacks": [{"class_path": "callbacks.EncoderHotSwap", "init_args": {
                    "snapshot_dir": str(pre / "export" / "snapshots"), "poll_every_n_steps": 5,
                    "final_by_step": s.final_by_step, "replay_start": s.replay_start,
                    "replay_pace": round(s.replay_pace(), 3)}}]}},
            {"name": "joint_sft", "config": str(CONFIGS / "joint_sft.yaml"), "overrides": {
                "model.init_args.llm.name_or_path": str(ia / "llm"), **no_head, "trainer.max_steps": s.joint,
                "model.init_args.init": {"encoder": str(ia / "encoder.safetensors"),
                                         "adapter": str(ia / "adapter.safetensors")},
                "trainer.callbacks": [probe]}}]

    def pretrained_encoder(self, name: str) -> Path | None:
        """The pretraining export the recipe's encoder started from (None for the single-stage recipe)."""
        if name == "a":
            return None
        return self.pretrain_dir("chars" if name == "d" else "phones") / "export" / "encoder.safetensors"


def _stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "sd": None, "n": 0, "values": values}
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": len(vals), "values": values}


# (row label, how to read it from a run's summary, scale for display, format)
ROWS: list[tuple[str, tuple[str, ...], float, str]] = [
    ("test CER zh %", ("eval", "test", "zh", "cer"), 100, ".1f"),
    ("test WER en %", ("eval", "test", "en", "wer"), 100, ".1f"),
    ("test MER mix %", ("eval", "test", "mix", "mer"), 100, ".1f"),
    ("unseen-voice CER zh %", ("eval", "test_unseen_voice", "zh", "cer"), 100, ".1f"),
    ("unseen-voice WER en %", ("eval", "test_unseen_voice", "en", "wer"), 100, ".1f"),
    ("unseen-voice MER mix %", ("eval", "test_unseen_voice", "mix", "mer"), 100, ".1f"),
    ("test insertion rate %", ("eval", "test", "overall", "insertion_rate"), 100, ".1f"),
    ("test hallucination rate %", ("eval", "test", "overall", "hallucination_rate"), 100, ".1f"),
    ("unseen-voice hallucination rate %", ("eval", "test_unseen_voice", "overall", "hallucination_rate"), 100, ".1f"),
    ("test repetition rate %", ("eval", "test", "overall", "repetition_rate"), 100, ".1f"),
    ("non-speech emission rate %", ("eval", "nonspeech", "overall", "nonspeech_emission_rate"), 100, ".0f"),
    ("non-speech chars / clip", ("eval", "nonspeech", "overall", "nonspeech_mean_chars"), 1, ".1f"),
    ("encoder NSE", ("probe", "nse_encoder"), 1, ".3f"),
    ("encoder PAI bits/frame", ("probe", "pai_bits"), 1, ".2f"),
    ("encoder CSAI bits/unit", ("probe", "csai_bits"), 1, ".2f"),
    ("CKA final vs pretrained encoder", ("cka_to_pretrained",), 1, ".3f"),
    ("H0 bits/char", ("probe", "h0_bits_per_char"), 1, ".2f"),
    ("H1 bits/char", ("probe", "h1_bits_per_char"), 1, ".2f"),
    ("I = H0 - H1 bits/char", ("probe", "info_bits_per_char"), 1, ".2f"),
]


def _get(summary: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(summary, dict) or key not in summary:
            return None
        summary = summary[key]
    return float(summary) if isinstance(summary, (int, float)) else None


def aggregate(summaries: dict[str, list[dict]]) -> dict:
    """{recipe: {row label: stats over seeds}} from each recipe's per-seed summaries."""
    return {r: {label: _stats([_get(s, path) for s in runs]) for label, path, _, _ in ROWS}
            for r, runs in summaries.items()}


def format_table(table: dict) -> str:
    """Markdown: one row per metric, one column per recipe, 'mean ± sd' (sd over seeds)."""
    recipes = list(table)
    lines = ["| metric | " + " | ".join(f"{r}: {RECIPES[r].split(' (')[0]}" for r in recipes) + " |",
             "|---" * (len(recipes) + 1) + "|"]
    for label, _, scale, fmt in ROWS:
        cells = []
        for r in recipes:
            st = table[r][label]
            cells.append("n/a" if st["mean"] is None else
                         f"{scale * st['mean']:{fmt}} ± {scale * st['sd']:{fmt}}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def encoder_cka(a: Path, b: Path, config_path: Path, data, max_frames: int = 8192, batches: int = 4) -> float:
    """Linear CKA of two encoder exports' frames on the first validation batches (padding dropped)."""
    import yaml

    from callbacks.common import evenly_spaced
    from entropy_asr.model.encoder import ConformerEncoder, EncoderConfig
    from entropy_asr.model.export import load_component

    cfg = EncoderConfig(**yaml.safe_load(config_path.read_text())["model"]["init_args"]["encoder"])
    probe = []
    for i, batch in enumerate(data.val_dataloader()):  # read once, for both encoders
        if i == batches:
            break
        probe.append((batch["feats"], batch["feat_lens"]))
    feats = []
    for path in (a, b):
        enc = ConformerEncoder(cfg)
        load_component(enc, path, "encoder")
        enc.eval()
        out = []
        with torch.no_grad():
            for x, x_lens in probe:
                frames, lens = enc(x, x_lens)  # (B, T', D)
                valid = torch.arange(frames.shape[1])[None, :] < lens[:, None]
                out.append(frames[valid].double())
        feats.append(evenly_spaced(torch.cat(out), max_frames))
    return linear_cka(feats[0], feats[1])


def measure(study: Study, name: str) -> dict:
    """Evaluate the recipe's final model; its probe figures and CKA to its pretrained encoder."""
    from datamodules.speech import SpeechDataModule
    from entropy_asr.data.augment import AugmentConfig
    from experiments import evaluate

    run = study.dir / name
    final = run / "joint_sft"
    root = corpus_dir(**study.synthetic)
    argv = ["--checkpoint", str(final), "--out", str(run / "eval"), "--wandb", "disabled",
            "--device", "cuda" if torch.cuda.is_available() and study.size.trainer else "cpu"]
    for s in ("test", "test_unseen_voice", "nonspeech"):
        argv += ["--data", str(root / s)]
    metrics = evaluate.main(argv)
    summary: dict = {"recipe": name, "seed": study.seed,
                     "eval": {s: groups for s, groups in metrics["sets"].items()}}
    probe = final / "accessible_information.jsonl"
    if probe.exists():
        entries = [json.loads(line) for line in probe.read_text().splitlines() if line.strip()]
        summary["probe"] = entries[-1] if entries else {}
    pretrained = study.pretrained_encoder(name)
    if pretrained is not None:
        data = SpeechDataModule(synthetic=study.synthetic, num_workers=0, augment=AugmentConfig(
            speed_factors=[1.0], noise_prob=0.0, spec_freq_masks=0, spec_time_masks=0))
        data.setup("validate")
        summary["cka_to_pretrained"] = encoder_cka(final / "export" / "encoder.safetensors", pretrained,
                                                   final / "config.yaml", data)
    summary["fit_seconds"] = {p.parent.name: json.loads(p.read_text()).get("fit_seconds")
                              for p in sorted(run.glob("*/results.json"))}
    return summary


def run_study(out: Path, size: Size, seeds: list[int], recipes: list[str], extra: list[str]) -> dict:
    from experiments.pipeline import run_pipeline

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    root = ensure_corpus(utterances=size.utterances, seed=0)
    if "d" in recipes and not (out / "chars.json").exists():
        inv = build_char_inventory(root / "train", out / "chars.json")
        print(f"== character inventory: {len(inv)} symbols -> {out / 'chars.json'}", flush=True)
    summaries: dict[str, list[dict]] = {r: [] for r in recipes}
    for seed in seeds:
        study = Study(out, size, seed)
        units = ["phones"] + (["chars"] if "d" in recipes else [])
        run_pipeline({"run_dir": str(study.dir), "stages": [study.pretraining(u) for u in units]},
                     study.common() + extra)
        for name in recipes:
            done = study.dir / name / "summary.json"
            if not done.exists():
                t = time.perf_counter()
                run_pipeline({"run_dir": str(study.dir / name), "stages": study.recipe(name)},
                             study.common() + extra)
                summary = measure(study, name)
                summary["wall_seconds"] = round(time.perf_counter() - t, 1)
                atomic_write_json(done, summary)
                print(f"== seed {seed} recipe {name}: done in {summary['wall_seconds']:.0f} s", flush=True)
            summaries[name].append(json.loads(done.read_text()))
    table = aggregate(summaries)
    markdown = format_table(table)
    results = {"size": {**asdict(size), "total_steps": size.total}, "seeds": seeds, "recipes": recipes,
               "table": table, "wall_seconds": round(time.perf_counter() - t0, 1),
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
                   help="tiny: this 2-core CPU in under 2 h; gpu: 4x steps and corpus, bf16 on one GPU; "
                        "smoke: every stage for a few steps (checks the script)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    p.add_argument("--wandb", choices=["offline", "online", "disabled"], default="disabled",
                   help="W&B for every stage (default disabled: the study's figures are the table; an offline "
                        "run costs ~7 s a stage)")
    a, extra = p.parse_known_args(argv)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    size = SIZES[a.size]
    return run_study(a.out, size, a.seeds, a.recipes, ["--wandb", a.wandb, *extra])


if __name__ == "__main__":
    main()
