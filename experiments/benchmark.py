"""Speed, per stage: `python experiments/benchmark.py --size paper` on a GPU (docs/benchmarks.md).

For each training stage, the step run.py trains with: the stage's LightningModule at the size, with the
paper config's recipe (experiments/<stage>.yaml: dynamic-chunk attention, dropout, CR-CTC's two
augmented views in pretraining, AdamW and its schedule, gradient clipping), stepped by Lightning's
fit loop (bf16-mixed on a GPU) and timed per step by a callback. What trains decides the work
(pretrain_ctc: encoder + CTC head on both views; align: adapter, gradients through the frozen LLM;
ia_sft: adapter + LLM on a frozen encoder, no encoder backward; joint_sft: everything), on batches
of `--seconds`-long utterances with transcripts:
  - step time, audio seconds and LLM tokens (positions) per second, peak memory;
  - MFU: the step's model FLOPs (torch.utils.flop_counter on one eager step without activation
    checkpointing, so attention is counted and recomputation is not) per second, over the card's
    peak measured in this run by a large bf16 matmul (float32 on a CPU);
then decoding RTFx (batched greedy decoding of `--decode-batch` utterances, exactly
`--decode-tokens` new tokens each, so random weights cannot stop early or run long) and the data
pipeline's audio seconds per second per CPU core (entropy_asr.data.benchmark's measurement: reading, fbank,
augmentation, batching, one worker on one thread) with the padded share of its batches (fbank frames, LLM
positions). Each stage's row also has the optimizer's part of the step (the module's gradient-norm check,
clipping, AdamW), timed apart. --keep-export DIR keeps joint SFT's random-weight export for the inference benchmark.

Prints one table, writes JSON (--out) and, with --record, appends the table with the card's name,
the command and the date to docs/benchmarks.md. --size tiny runs on a CPU in seconds (the tests).
Random weights; nothing is downloaded. The paper size is the 600M Conformer + a Qwen3-1.7B-shaped
LLM with Qwen3's 151,936-row vocabulary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from entropy_asr.errors import run_main
from entropy_asr.io import atomic_write_bytes, atomic_write_dir, atomic_write_json
from entropy_asr.model.llm import LLMConfig
from entropy_asr.model.prompt import generate
from entropy_asr.model.speech_llm import AdapterConfig, CTCHeadConfig, PromptConfig
from experiments.sizes import component, encoder_config
from lightning_modules import SPEECH_STAGES, PretrainCTC
from lightning_modules import STAGES as STAGE_MODULES

STAGES = SPEECH_STAGES  # the training stages on speech, as lightning_modules.STAGES lists them
PAPER_CONFIGS = Path(__file__).resolve().parent  # experiments/<stage>.yaml: the training recipe timed
# the paper LLM's shapes (Qwen3-1.7B's config.json), built with random weights: the benchmark downloads nothing
QWEN3_1_7B = {"hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
              "head_dim": 128, "intermediate_size": 6144, "max_position_embeddings": 4096, "tie_word_embeddings": True}
# size -> (LLM shapes, vocabulary rows); the encoders are experiments/models/<size>/encoder.yaml
SIZES = {"paper": (QWEN3_1_7B, 151936), "tiny": ({}, None)}
# transcripts of about 10 s of speech, Mandarin and English (the corpus' kind of text)
SENTENCES = ["我们明天下午去看看那个新的图书馆吧，听说里面的环境特别安静，很适合周末学习。",
             "She bought a new computer and a small table for the study room, and it arrived on Monday."]


@dataclass
class Options:
    size: str = "tiny"
    stages: tuple[str, ...] = STAGES
    batch: int = 16
    seconds: float = 10.0
    steps: int = 5
    decode_batch: int = 64
    decode_tokens: int = 48
    static_cache: bool = False
    compile: bool = False
    activation_checkpointing: bool = False
    data_seconds: float = 10.0  # how long the data pipeline is measured
    tokenizer: str | None = None
    profile: Path | None = None  # write a torch.profiler trace of each stage's timed steps here, and summarize it
    keep_export: Path | None = None  # keep the joint_sft fit's export here (random weights: for inference speed)
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")


def peak_flops(device: torch.device, n: int | None = None) -> float:
    """Measured matmul FLOP/s: bf16 n x n on a GPU (n = 8192), float32 on a CPU (n = 1024)."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, best = (20 if cuda else 5), float("inf")
    for _ in range(3):  # best of 3: a stall (another process, a clock change) must not lower the peak
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paper_recipe(stage: str) -> dict:
    """What experiments/<stage>.yaml trains with besides the sizes: the encoder's dynamic chunks and dropout, the
    CTC head's dropout, CR-CTC's consistency weight (two augmented views), the optimizer, gradient clipping."""
    import yaml

    cfg = yaml.safe_load((PAPER_CONFIGS / f"{stage}.yaml").read_text())
    args = cfg["model"]["init_args"]
    keys = ("dynamic_chunk", "max_chunk", "max_left_chunks", "full_context_prob", "dropout")
    encoder = component(args.get("encoder"), PAPER_CONFIGS)  # the size file the config names
    return {"encoder": {k: v for k, v in encoder.items() if k in keys},
            "ctc_head_dropout": float((args.get("ctc_head") or {}).get("dropout", 0.0)),
            "consistency_weight": float(args.get("consistency_weight", 0.0)),
            "optim": args.get("optim") or {}, "gradient_clip_val": cfg.get("trainer", {}).get("gradient_clip_val")}


def build_stage(stage: str, o: Options):
    """The stage's LightningModule at the size with the paper config's training recipe (weights random), on the
    device."""
    from lightning_modules.base import OptimConfig

    llm, rows = SIZES[o.size]
    recipe = paper_recipe(stage)
    encoder = encoder_config(o.size, **recipe["encoder"], activation_checkpointing=o.activation_checkpointing)
    optim = OptimConfig(**recipe["optim"])
    cls = STAGE_MODULES[stage]
    if issubclass(cls, PretrainCTC):
        module = cls(encoder=encoder, ctc_head=CTCHeadConfig(dropout=recipe["ctc_head_dropout"]),
                     consistency_weight=recipe["consistency_weight"], optim=optim)
    else:
        llm_cfg = LLMConfig(tokenizer=o.tokenizer, tiny=llm, vocab_rows=rows,
                            gradient_checkpointing=o.activation_checkpointing)
        module = cls(encoder=encoder, adapter=AdapterConfig(), llm=llm_cfg, optim=optim,
                     prompt=PromptConfig(system=None, user="Transcribe: <speech>"))
    with torch.device(o.device):  # weights are made where they run: a 2.3B random init on a CPU takes minutes
        module.configure_model()
    return module.to(o.device).train()


def synthetic_batch(o: Options, device: torch.device, batch: int | None = None, views: int = 1) -> dict:
    """B utterances of `seconds` of random fbank with transcripts and phones (the shapes are what count); with
    views 2 the second augmented view CR-CTC trains on (feats2)."""
    B, T = batch or o.batch, int(o.seconds * 100)
    g = torch.Generator().manual_seed(0)
    phones = torch.randint(2, 60, (B, int(o.seconds * 12)), generator=g)
    out = {"feats": torch.randn(B, T, 80, generator=g).to(device), "feat_lens": torch.full((B,), T, device=device),
           "phones": phones.to(device), "phone_lens": torch.full((B,), phones.shape[1], device=device),
           "text": [SENTENCES[i % 2] for i in range(B)], "norm_text": [SENTENCES[i % 2] for i in range(B)],
           "durations": torch.full((B,), o.seconds)}
    if views == 2:
        out["feats2"] = (out["feats"].cpu() + 0.1 * torch.randn(B, T, 80, generator=g)).to(device)
    return out


class _Repeat(IterableDataset):
    """One batch, `n` times (the loader of the timed steps)."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        return iter([self.batch] * self.n)


class _StepTimes(L.Callback):
    """Wall time of each training step as Lightning runs it (batch start to batch end, the device synchronized), and
    of its optimizer part: from Lightning's on_before_optimizer_step (forward and backward done) to the batch end,
    i.e. the module's own gradient-norm check (lightning_modules.base), gradient clipping, the optimizer step and the
    schedule's. A batch without an optimizer step (gradient accumulation) has NaN there."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.optimizer_times, self._t, self._t_opt = device, [], [], 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _sync(self.device)
        self._t, self._t_opt = time.perf_counter(), None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        _sync(self.device)
        self._t_opt = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(self.device)
        end = time.perf_counter()
        self.times.append(end - self._t)
        self.optimizer_times.append(end - self._t_opt if self._t_opt is not None else float("nan"))


@torch.no_grad()
def llm_positions(module, batch: dict) -> int:
    """LLM input positions of the batch (prompt + speech tokens + transcript + EOS), 0 without an LLM."""
    from entropy_asr.model.llm import llm_embed
    from entropy_asr.model.prompt import build_train_inputs

    net = module.net
    if net.llm is None:
        return 0
    speech, lens = net.speech_embeddings(batch["feats"], batch["feat_lens"])
    inputs = build_train_inputs(net.prompt, lambda ids: llm_embed(net.llm, ids), speech, lens, batch["text"])
    return int(inputs["attention_mask"].sum())


def train_step_flops(module, batch: dict, device: torch.device) -> float:
    """FLOPs of one forward + backward, eager, without activation checkpointing (model FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    enc = module.net.encoder.config
    saved = enc.activation_checkpointing
    enc.activation_checkpointing = False
    llm = module.net.llm
    ckpt = bool(llm is not None and getattr(llm, "is_gradient_checkpointing", False))
    if ckpt:
        llm.gradient_checkpointing_disable()
    try:
        with FlopCounterMode(display=False) as counter, _autocast(device), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"You are trying to `self.log\(\)`")  # (outside a Trainer)
            loss = module.model_step(batch)
            loss.backward()
        module.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())
    finally:
        enc.activation_checkpointing = saved
        if ckpt:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# what each operator or kernel is, by name, for the profile's shares (first match wins; the rest is elementwise work:
# norms, activations, copies, reductions, indexing)
PROFILE_KINDS = (
    ("optimizer", re.compile(r"optimizer|adamw|_fused_adam|foreach", re.I)),
    ("attention", re.compile(r"scaled_dot_product|flash|attention|fmha|sdpa", re.I)),
    ("matmul", re.compile(r"\b(aten::)?(mm|addmm|bmm|matmul|linear|baddbmm)\b|gemm|cutlass|cublas|sm\d+_xmma|"
                          r"ampere_|hopper_", re.I)),
    ("convolution", re.compile(r"conv", re.I)),
)


def profile_kind(name: str) -> str:
    """The kind of an operator or kernel (PROFILE_KINDS), by its name; "elementwise" for anything else."""
    return next((kind for kind, pattern in PROFILE_KINDS if pattern.search(name)), "elementwise")


class _Profile(L.Callback):
    """torch.profiler over the timed steps (from batch `warm` on): a Chrome trace per stage, summarized."""

    def __init__(self, out_dir: Path, stage: str, device: torch.device, warm: int):
        self.out_dir, self.stage, self.device, self.warm = Path(out_dir), stage, device, warm
        self.prof = self.trace = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warm and self.prof is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.prof = profile(activities=activities)
            self.prof.__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.prof is None:
            return
        _sync(self.device)
        self.prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.trace = self.out_dir / f"{self.stage}.trace.json"
        self.prof.export_chrome_trace(str(self.trace))


def summarize_profile(prof, device: torch.device, wall_s: float, top: int = 10) -> dict:
    """Self time per kind (of the GPU's kernels on a GPU, else of the CPU's operators), the top operators or
    kernels, and on a GPU the host gap: the share of the profiled wall time no kernel ran."""
    cuda = device.type == "cuda"
    rows = []
    for e in prof.key_averages():
        t = (getattr(e, "self_device_time_total", 0) if cuda else e.self_cpu_time_total) / 1e6  # seconds
        if t > 0:
            rows.append((e.key, t, e.count))
    total = sum(t for _, t, _ in rows)
    shares: dict[str, float] = {}
    for name, t, _ in rows:
        shares[profile_kind(name)] = shares.get(profile_kind(name), 0.0) + t / total
    rows.sort(key=lambda r: -r[1])
    out = {"measured_on": "GPU kernels" if cuda else "CPU operators (self time)", "busy_s": total,
           "shares": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
           "top": [{"name": n[:90], "kind": profile_kind(n), "s": t, "share": t / total, "calls": c}
                   for n, t, c in rows[:top]]}
    if cuda and wall_s > 0:
        out["host_gap"] = max(0.0, 1 - total / wall_s)
    return out


def bench_stage(stage: str, o: Options, peak: float) -> dict:
    """The stage's training step as run.py trains it: Lightning's fit loop with the paper config's recipe (its
    optimizer and schedule, gradient clipping, bf16-mixed on a GPU; the module's own training_step), timed per step
    by a callback."""
    device = torch.device(o.device)
    module = build_stage(stage, o)
    recipe = paper_recipe(stage)
    views = 2 if stage == "pretrain_ctc" and recipe["consistency_weight"] > 0 else 1
    batch = synthetic_batch(o, device, views=views)
    flops = train_step_flops(module, batch, device)
    if o.compile:
        module.net.compile_blocks()
    params = [p for p in module.parameters() if p.requires_grad]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = 2 if o.compile else 1  # the first step(s) warm up (and compile): not timed
    timer = _StepTimes(device)
    profiler = _Profile(o.profile, stage, device, warm) if o.profile else None
    scratch = tempfile.mkdtemp(prefix="entropy-asr-bench-")  # the fit's exports and logs go here, then away
    module.export_dir_arg = str(Path(scratch) / "export")
    trainer = L.Trainer(default_root_dir=scratch, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if device.type == "cuda" else "32-true", max_steps=o.steps + warm,
                        gradient_clip_val=recipe["gradient_clip_val"], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[timer] + ([profiler] if profiler else []),
                        use_distributed_sampler=False)
    cpu_batch = {k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()}
    try:
        trainer.fit(module, train_dataloaders=DataLoader(_Repeat(cpu_batch, o.steps + warm), batch_size=None))
        if o.keep_export and stage == "joint_sft":
            keep_export(Path(scratch) / "export", o.keep_export)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    loss = trainer.callback_metrics.get("train/loss", torch.tensor(float("nan")))
    timed = sorted(timer.times[warm:])
    step_s = timed[len(timed) // 2]  # median
    opt = sorted(t for t in timer.optimizer_times[warm:] if t == t)  # (NaN: a batch without an optimizer step)
    optimizer_s = opt[len(opt) // 2] if opt else float("nan")
    audio = o.batch * o.seconds
    # Rows keep full precision (derived figures stay consistent with the ones they come from);
    # format_table rounds for display.
    out = {"stage": stage, "batch": o.batch, "seconds": o.seconds, "step_s": step_s, "optimizer_s": optimizer_s,
           "optimizer_share": optimizer_s / step_s, "views": views,
           "dynamic_chunk": bool(module.net.encoder.config.dynamic_chunk),
           "audio_s_per_s": audio / step_s, "tokens_per_s": llm_positions(module, batch) / step_s,
           "tflops_per_step": flops / 1e12, "mfu": flops / step_s / peak, "loss": float(loss),
           "trainable_M": sum(p.numel() for p in params) / 1e6,
           "params_M": sum(p.numel() for p in module.parameters()) / 1e6}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if profiler is not None and profiler.trace is not None:  # (the timed steps ran under the profiler: slower)
        out["profile"] = {"trace": str(profiler.trace),
                          **summarize_profile(profiler.prof, device, sum(timer.times[warm:]))}
    del module, trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def keep_export(export: Path, dest: Path) -> None:
    """Copy a benchmark fit's export (random weights at the benchmark's size) to `dest` (main() refuses one that
    exists), with the CMVN statistics of the small synthetic corpus, so that it decodes like a trained export
    (experiments/benchmark_inference.py on it measures the long-form and streaming paths' speed at that size; its
    transcripts mean nothing)."""
    from entropy_asr.data.synthetic import ensure_corpus

    cmvn = ensure_corpus(utterances=200, seed=0) / "train" / "cmvn.json"

    def write(tmp: Path) -> None:
        shutil.copytree(export, tmp, dirs_exist_ok=True)
        shutil.copyfile(cmvn, tmp / "cmvn.json")

    atomic_write_dir(dest, write)


@torch.no_grad()
def bench_decode(o: Options) -> dict:
    """Batched greedy decoding of decode_batch utterances, exactly decode_tokens new tokens each; RTFx."""
    device = torch.device(o.device)
    module = build_stage("joint_sft", o).eval()
    if device.type == "cuda":
        module.to(torch.bfloat16)
    net = module.net
    batch = synthetic_batch(o, device, o.decode_batch)
    if device.type == "cuda":
        batch["feats"] = batch["feats"].to(torch.bfloat16)
    n = o.decode_tokens

    def once() -> float:
        _sync(device)
        t = time.perf_counter()
        speech, lens = net.speech_embeddings(batch["feats"], batch["feat_lens"])
        extra = {"cache_implementation": "static"} if o.static_cache else {}  # (transformers compiles its step)
        generate(net.llm, net.tokenizer, net.prompt, speech, lens, n, min_new_tokens=n, **extra)
        _sync(device)
        return time.perf_counter() - t

    once()  # warm-up (and, with a static cache, compilation)
    t = min(once() for _ in range(2))
    audio = o.decode_batch * o.seconds
    return {"stage": "decode", "batch": o.decode_batch, "seconds": o.seconds, "new_tokens": n,
            "decode_s": t, "rtfx": audio / t, "tokens_per_s": o.decode_batch * n / t}


def bench_data(o: Options, corpus: Path | None) -> dict:
    """The training pipeline (read, decode, fbank, augmentation, bucketing) per CPU core: the data benchmark's
    measurement (entropy_asr.data.benchmark, one worker on one thread) on the corpus' train split."""
    from entropy_asr.data.benchmark import measure
    from entropy_asr.data.synthetic import ensure_corpus

    if corpus is None:  # a small synthetic corpus, built once into the cache
        corpus = ensure_corpus(utterances=200, seed=0)
    m = measure(corpus / "train", seconds=o.data_seconds, tokenizer=o.tokenizer)
    return {"stage": "data", "workers": 1, "batches": m["batches"], "audio_s": m["audio_seconds"],
            "audio_s_per_s_per_worker": m["audio_sec_per_sec_per_worker"],
            **{k: m[k] for k in ("padded_frames_share", "padded_text_bytes_share", "padded_llm_positions_share",
                                 "max_batch_seconds", "bucket_boundaries") if k in m}}


def format_profile(stage: str, prof: dict) -> str:
    """A stage's profile summary as lines: the shares per kind, then the top operators or kernels."""
    shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in prof["shares"].items())
    gap = f"; host gap {100 * prof['host_gap']:.1f}% of the wall time" if "host_gap" in prof else ""
    lines = [f"profile {stage} ({prof['measured_on']}, {prof['busy_s']:.3f} s busy): {shares}{gap}; trace "
             f"{prof['trace']}"]
    lines += [f"  {100 * t['share']:5.1f}%  {t['kind']:<11} {t['calls']:>6}x  {t['name']}" for t in prof["top"]]
    return "\n".join(lines)


def format_table(rows: list[dict], device: str) -> str:
    """Markdown table of the rows, rounded for reading (the rows themselves keep full precision)."""
    header = ("| stage | batch x s | step s | optimizer | audio s/s | LLM tokens/s | TFLOP/step | MFU | peak GiB "
              "| RTFx |")
    lines = [f"device: {device}", "", header, "|---" * 10 + "|"]
    for r in rows:
        if r["stage"] == "data":
            lines.append(f"| data ({r['workers']} worker) | - | - | - | {r['audio_s_per_s_per_worker']:.1f} per worker "
                         f"| - | - | - | - | - |")
        elif r["stage"] == "decode":
            lines.append(f"| decode (greedy, {r['new_tokens']} new tokens) | {r['batch']} x {r['seconds']:g} | "
                         f"{r['decode_s']:.3f} | - | - | {r['tokens_per_s']:.1f} | - | - | - | {r['rtfx']:.1f} |")
        else:
            tokens = f"{r['tokens_per_s']:.1f}" if r["tokens_per_s"] else "-"
            peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-"
            lines.append(f"| {r['stage']} | {r['batch']} x {r['seconds']:g} | {r['step_s']:.4f} | "
                         f"{100 * r['optimizer_share']:.1f}% | {r['audio_s_per_s']:.1f} | {tokens} | "
                         f"{r['tflops_per_step']:.3f} | {100 * r['mfu']:.1f}% | {peak} | - |")
    notes = []
    if any("optimizer_share" in r for r in rows):
        notes.append("optimizer: its share of the step (the module's gradient-norm check, clipping, the AdamW step)")
    data = next((r for r in rows if r["stage"] == "data"), None)
    if data is not None and "padded_frames_share" in data:
        llm = data.get("padded_llm_positions_share")
        llm_share = f", {100 * llm:.1f}% of the LLM positions (prompt, speech, transcript)" if llm is not None else ""
        frames = 100 * data["padded_frames_share"]
        notes.append(f"data batches (the data benchmark's default batching: {data['max_batch_seconds']:g} s a batch, "
                     f"{len(data['bucket_boundaries']) + 1} duration buckets): {frames:.1f}% of the fbank frames are "
                     f"padding{llm_share}")
    if notes:
        lines += ["", "; ".join(notes) + "."]
    return "\n".join(lines)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def default_tokenizer(out_dir: Path) -> str:
    """A BPE tokenizer trained on generated sentences (3,000 tokens; the LLM's rows are padded to Qwen3's)."""
    import random

    from entropy_asr.data.sentences import SentenceGenerator
    from entropy_asr.model.tokenizer import train_bpe_tokenizer

    path = out_dir / "tokenizer"
    if not (path / "tokenizer.json").exists():
        g, r = SentenceGenerator(), random.Random(0)
        train_bpe_tokenizer([g.sentence(r, lang) for lang in ("zh", "en", "mix") for _ in range(1000)], 3000, str(path))
    return str(path)


def run(o: Options, out: Path | None = None, record: Path | None = None, corpus: Path | None = None,
        skip_data: bool = False, command: str | None = None) -> dict:
    device = torch.device(o.device)
    if o.tokenizer is None:
        o.tokenizer = default_tokenizer(Path(os.environ.get("ENTROPY_ASR_CACHE", "/tmp")) / "benchmark")
    peak = peak_flops(device)
    rows = []
    for stage in o.stages:
        rows.append(bench_stage(stage, o, peak))
        print(json.dumps(rows[-1]), flush=True)
        if "profile" in rows[-1]:
            print(format_profile(stage, rows[-1]["profile"]), flush=True)
    if o.decode_batch > 0:
        rows.append(bench_decode(o))
        print(json.dumps(rows[-1]), flush=True)
    if not skip_data:
        rows.append(bench_data(o, corpus))
        print(json.dumps(rows[-1]), flush=True)
    name = device_name(o.device)
    result = {"device": name, "peak_tflops": peak / 1e12, "size": o.size, "options": o.__dict__,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows,
              "command": command or " ".join(sys.argv)}
    table = format_table(rows, f"{name}, measured matmul peak {peak / 1e12:.3g} TFLOP/s")
    print(table)
    if out:
        atomic_write_json(out, result)
    if record:
        record.parent.mkdir(parents=True, exist_ok=True)
        old = (record.read_text() if record.exists()
               else "# Benchmarks\n\nWritten by experiments/benchmark.py --record.\n")
        section = (f"\n## {result['date']}: {name}, {o.size} size\n\n`{result['command']}` (torch {torch.__version__}"
                   f"{', torch.compile' if o.compile else ''}"
                   f"{', activation checkpointing' if o.activation_checkpointing else ''})"
                   f"\n\n{table}\n")
        atomic_write_bytes(record, (old + section).encode())
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--batch", type=int, default=16, help="utterances per training step")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per utterance")
    p.add_argument("--steps", type=int, default=5, help="timed steps per stage (the median is reported)")
    p.add_argument("--decode-batch", type=int, default=64, help="0 skips decoding")
    p.add_argument("--decode-tokens", type=int, default=48, help="new tokens per utterance, exactly")
    p.add_argument("--static-cache", action="store_true", help="decode with a static KV cache (compiled decoding step)")
    p.add_argument("--compile", action="store_true", help="torch.compile each Conformer block and LLM layer")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--data-seconds", type=float, default=10.0, help="how long the data pipeline is measured")
    p.add_argument("--corpus", type=Path,
                   help="corpus root (train/, dev/ shard dirs) for the data benchmark (default: a synthetic one)")
    p.add_argument("--skip-data", action="store_true")
    p.add_argument("--tokenizer", help="tokenizer dir (default: one trained on generated sentences)")
    p.add_argument("--device", default=Options().device)
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--record", type=Path, help="append the table to this markdown file (docs/benchmarks.md)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="profile each stage's timed steps: DIR/<stage>.trace.json (chrome://tracing, Perfetto) and, in "
                        "the stage's JSON row and printed, the share of time per kind (matmul, attention, convolution, "
                        "optimizer, elementwise), the top operators and, on a GPU, the host gap. Profiled steps run "
                        "slower: take speed figures from a run without it")
    p.add_argument("--keep-export", type=Path, metavar="DIR",
                   help="keep joint_sft's export (random weights at --size) in DIR, a new dir, for "
                        "experiments/benchmark_inference.py: the long-form and streaming paths' speed at that size")
    a = p.parse_args(argv)
    if a.keep_export and "joint_sft" not in a.stages:
        p.error("--keep-export keeps joint_sft's export: include joint_sft in --stages")
    if a.keep_export and a.keep_export.exists():
        p.error(f"--keep-export {a.keep_export}: already exists; remove it or name a new dir")
    o = Options(size=a.size, stages=tuple(a.stages), batch=a.batch, seconds=a.seconds, steps=a.steps,
                decode_batch=a.decode_batch, decode_tokens=a.decode_tokens, static_cache=a.static_cache,
                compile=a.compile, activation_checkpointing=a.activation_checkpointing, data_seconds=a.data_seconds,
                tokenizer=a.tokenizer, profile=a.profile, keep_export=a.keep_export, device=a.device)
    if o.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    return run(o, a.out, a.record, a.corpus, a.skip_data,
               "python experiments/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    run_main(main)
