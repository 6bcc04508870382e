"""Paper-shaped training steps on one GPU: the ~600M Conformer (PretrainCTC) and encoder + adapter +
a Qwen3-1.7B-shaped LLM built from config (IA-SFT: adapter + LLM train), in bf16 autocast.

python scripts/paper_step.py --tokenizer DIR   # prints one JSON line per stage: step time, peak memory
Random weights (nothing is downloaded); checks that the paper configs' shapes fit and run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from entropy_asr.model.encoder import EncoderConfig
from entropy_asr.model.llm import LLMConfig
from entropy_asr.model.params import set_trainable
from entropy_asr.model.speech_llm import AdapterConfig, CTCHeadConfig, SpeechLLM
from lightning_modules.pretrain_ctc import ctc_loss

PAPER_ENCODER = {"d_model": 1280, "num_layers": 16, "num_heads": 20, "ffn_dim": 5120, "conv_kernel": 33,
                 "subsampling_channels": 32, "dynamic_chunk": True}
QWEN3_1_7B = {"hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
              "head_dim": 128, "intermediate_size": 6144, "max_position_embeddings": 4096, "tie_word_embeddings": True}


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


def shape_args(description: str | None = None) -> tuple[argparse.Namespace, torch.device]:
    """--tokenizer, --batch, --seconds, --smoke (tiny shapes on the CPU: PAPER_ENCODER/QWEN3_1_7B shrunk)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script itself)")
    a = p.parse_args()
    if a.smoke:
        PAPER_ENCODER.update(d_model=64, num_layers=1, num_heads=2, ffn_dim=128, conv_kernel=3)
        QWEN3_1_7B.update(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=32, intermediate_size=128)
    return a, torch.device("cpu" if a.smoke else "cuda")


def main() -> None:
    a, dev = shape_args()
    B, T = a.batch, int(a.seconds * 100)
    feats, lens = torch.randn(B, T, 80, device=dev), torch.full((B,), T, device=dev)

    net = SpeechLLM(encoder=EncoderConfig(**PAPER_ENCODER), ctc_head=CTCHeadConfig()).to(dev)
    phones = torch.randint(2, 290, (B, int(a.seconds * 12)), device=dev)
    plens = torch.full((B,), phones.shape[1], device=dev)

    def ctc_step():
        frames, flens = net.encode(feats, lens)
        return ctc_loss(net.ctc_log_probs(frames), flens, phones, plens)

    n_enc = sum(p.numel() for p in net.encoder.parameters())
    print(json.dumps({"stage": "pretrain_ctc", "encoder_params_M": round(n_enc / 1e6, 1), "batch": B,
                      "audio_s": a.seconds, **timed_steps(net, list(net.parameters()), ctc_step)}), flush=True)
    del net
    torch.cuda.empty_cache()

    net = SpeechLLM(encoder=EncoderConfig(**PAPER_ENCODER), adapter=AdapterConfig(),
                    llm=LLMConfig(tokenizer=a.tokenizer, tiny=QWEN3_1_7B, gradient_checkpointing=False)).to(dev)
    set_trainable(net, ["adapter.*", "llm.*"])
    net.encoder.eval()
    texts = ["我们明天下午去看看那个新的图书馆吧。", "She bought a new computer and a small table."] * (B // 2)

    def sft_step():
        speech, slens = net.speech_embeddings(feats, lens)
        return net.lm_loss(speech, slens, texts)

    n_llm = sum(p.numel() for p in net.llm.parameters())
    trainable = [p for p in net.parameters() if p.requires_grad]
    print(json.dumps({"stage": "ia_sft", "llm_params_M": round(n_llm / 1e6, 1), "batch": B, "audio_s": a.seconds,
                      **timed_steps(net, trainable, sft_step)}), flush=True)


if __name__ == "__main__":
    main()
