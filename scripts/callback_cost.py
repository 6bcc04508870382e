"""What the metric callbacks cost at paper size: one check of each, timed, against one training step.

python scripts/callback_cost.py --tokenizer DIR          # on a GPU, paper shapes (as experiments/benchmark.py)
python scripts/callback_cost.py --tokenizer DIR --smoke  # tiny shapes on the CPU (checks the script)

Random weights and random features (nothing is downloaded); the probe set is `probe_batches`
batches of `--batch` utterances of `--seconds` each, with real sentences and their phones (so
CSAI's units line up). Prints one JSON line per stage: step seconds, seconds per check of each
callback, and the share of training time they add at the intervals of the paper configs
(experiments/pretrain_ctc.yaml, experiments/ia_sft.yaml): sum(check_s / every_n_steps) / step_s.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from callbacks import (
    AccessibleInformationProbe,
    CKADriftMonitor,
    representation_spectra,
)
from entropy_asr.data.sentences import SentenceGenerator
from entropy_asr.metrics import linear_cka, normalized_spectral_entropy
from entropy_asr.model.encoder import EncoderConfig
from entropy_asr.model.llm import LLMConfig
from entropy_asr.model.losses import ctc_loss
from entropy_asr.model.params import set_trainable
from entropy_asr.model.speech_llm import AdapterConfig, CTCHeadConfig, SpeechLLM
from entropy_asr.text.inventory import phones_to_ids
from entropy_asr.text.phonemizer import Phonemizer
from experiments.benchmark import QWEN3_1_7B
from experiments.sizes import encoder_config

ROOT = Path(__file__).resolve().parents[1]
# --smoke: overrides of the paper shapes that make the script run on a CPU in seconds
SMOKE_ENCODER = {"d_model": 64, "num_layers": 1, "num_heads": 2, "ffn_dim": 128, "conv_kernel": 3}
SMOKE_LLM = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 32, "intermediate_size": 128}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, torch.device, EncoderConfig, dict]:
    """(args, device, encoder, LLM shapes): --tokenizer, --batch, --seconds, --smoke (tiny shapes on the CPU)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script itself)")
    a = p.parse_args(argv)
    encoder = encoder_config("paper", **(SMOKE_ENCODER if a.smoke else {}))  # experiments/models/paper/encoder.yaml
    llm = {**QWEN3_1_7B, **(SMOKE_LLM if a.smoke else {})}
    return a, torch.device("cpu" if a.smoke else "cuda"), encoder, llm


def timed_steps(net, params, step, n: int = 4) -> dict:
    """n optimizer steps in bf16 autocast; the fastest after the first, and the peak GPU memory."""
    opt = torch.optim.AdamW(params, lr=1e-5)
    dev = next(net.parameters()).device
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(n):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = step()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return {"loss": round(float(loss), 3), "step_s": round(min(times[1:]), 3), "peak_gib": round(peak, 1)}


def intervals(config: str) -> dict[str, dict]:
    """{callback class name: init_args} of a paper config's trainer.callbacks."""
    cfg = yaml.safe_load((ROOT / config).read_text())
    return {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in cfg["trainer"].get("callbacks", [])}


def probe_set(n_batches: int, batch: int, seconds: float, device) -> list[tuple]:
    gen, rng, ph = SentenceGenerator(), random.Random(0), Phonemizer()
    T = int(seconds * 100)
    out = []
    for _ in range(n_batches):
        langs = [rng.choice(["zh", "en", "mix"]) for _ in range(batch)]
        texts = [gen.sentence(rng, lang) for lang in langs]
        ids = [phones_to_ids(ph(t, lang)) for t, lang in zip(texts, langs, strict=True)]
        phones = torch.zeros(batch, max(map(len, ids)), dtype=torch.long)
        for i, p in enumerate(ids):
            phones[i, : len(p)] = torch.tensor(p)
        out.append((torch.randn(batch, T, 80), torch.full((batch,), T), phones,
                    torch.tensor([len(p) for p in ids]), texts, langs))
    return out


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return round(time.perf_counter() - t, 3)


def share(costs: dict[str, float], every: dict[str, int], step_s: float) -> float:
    return round(sum(costs[k] / every[k] for k in costs) / step_s, 5)


def main() -> None:
    a, dev, encoder, llm = parse_args()
    pre, ia = intervals("experiments/pretrain_ctc.yaml"), intervals("experiments/ia_sft.yaml")
    B, T = a.batch, int(a.seconds * 100)
    feats, lens = torch.randn(B, T, 80, device=dev), torch.full((B,), T, device=dev)
    net = SpeechLLM(encoder=encoder, ctc_head=CTCHeadConfig(), adapter=AdapterConfig(),
                    llm=LLMConfig(tokenizer=a.tokenizer, tiny=llm, gradient_checkpointing=False)).to(dev)
    module = SimpleNamespace(net=net, device=dev, trainer=None, print=print)

    # ---- pretraining: CKA drift check and the probe (own CTC head, no LLM) every N steps
    phones = torch.randint(2, 290, (B, int(a.seconds * 12)), device=dev)
    plens = torch.full((B,), phones.shape[1], device=dev)

    def ctc_step():
        frames, flens = net.encode(feats, lens)
        return ctc_loss(net.ctc_log_probs(frames), flens, phones, plens)

    set_trainable(net, ["encoder.*", "ctc_head.*"])
    step_s = timed_steps(net, [q for q in net.parameters() if q.requires_grad], ctc_step)["step_s"]
    net.eval()
    monitor = CKADriftMonitor(probe_batches=pre["CKADriftMonitor"]["probe_batches"])
    monitor._probe = [(f, n) for f, n, *_ in probe_set(monitor.probe_batches, B, a.seconds, dev)]
    ref = monitor.encoder_frames(None, module)
    with torch.no_grad():
        costs = {"CKADriftMonitor": timed(lambda: (linear_cka(monitor.encoder_frames(None, module), ref),
                                                   normalized_spectral_entropy(ref)), dev)}
        ai = AccessibleInformationProbe(probe_batches=pre["AccessibleInformationProbe"]["probe_batches"],
                                        llm_metrics=False)
        ai._probe = probe_set(ai.probe_batches, B, a.seconds, dev)
        costs["AccessibleInformationProbe"] = timed(lambda: ai.measure(module), dev)
    every = {k: pre[k]["every_n_steps"] for k in costs}
    print(json.dumps({"stage": "pretrain_ctc", "device": str(dev), "step_s": step_s, "check_s": costs,
                      "every_n_steps": every, "share_of_training": share(costs, every, step_s)}), flush=True)

    # ---- IA-SFT: spectral logger and the probe (a fixed aligner: one more encoder pass; H0/H1)
    texts = [t for *_, ts, _ in ai._probe for t in ts][:B]

    def sft_step():
        speech, slens = net.speech_embeddings(feats, lens)
        return net.lm_loss(speech, slens, texts)

    net.train()
    set_trainable(net, ["adapter.*", "llm.*"])
    net.encoder.eval()
    step_s = timed_steps(net, [q for q in net.parameters() if q.requires_grad], sft_step)["step_s"]
    net.eval()
    spectral_probe = [(f, n) for f, n, *_ in probe_set(ia["SpectralEntropyLogger"]["probe_batches"], B, a.seconds,
                                                        dev)]
    ai = AccessibleInformationProbe(probe_batches=ia["AccessibleInformationProbe"]["probe_batches"])
    ai._probe = probe_set(ai.probe_batches, B, a.seconds, dev)
    ai._aligner = (net.encoder, net.ctc_head)
    with torch.no_grad():
        costs = {"SpectralEntropyLogger": timed(lambda: representation_spectra(net, spectral_probe, dev), dev),
                 "AccessibleInformationProbe": timed(lambda: ai.measure(module), dev)}
    every = {k: ia[k]["every_n_steps"] for k in costs}
    print(json.dumps({"stage": "ia_sft", "device": str(dev), "step_s": step_s, "check_s": costs,
                      "every_n_steps": every, "share_of_training": share(costs, every, step_s)}), flush=True)


if __name__ == "__main__":
    main()
