#!/usr/bin/env bash
# Every GPU check in one call, run on a GPU machine from the repo root (the wheels the machine lacks in .whl/,
# installed first):
#  1. experiments/benchmark.py at paper size (600M Conformer + Qwen3-1.7B shape, 151,936-row vocabulary),
#     every stage in bf16 autocast (each row with its optimizer share), decoding RTFx at DECODE_BATCH (default 128,
#     the target's) x 10 s with the static KV cache; the table is appended to docs/benchmarks.md (copied to $OUT).
#     BATCH (default 32) utterances of 10 s per step.
#  2. FSDP=1: the tiny pretraining config for 30 steps under lightning_modules.SpeechFSDP on the GPU
#     (sharding, exports gathered from the shards).
#  3. COMPILE=1: the benchmark's ia_sft and joint_sft again with torch.compile and activation checkpointing.
#  4. CALLBACK_COST=1: the metric callbacks' cost at paper size (scripts/callback_cost.py).
#  5. PIPELINE=1: the tiny pipeline, every stage on the GPU in bf16-mixed, then experiments/benchmark_inference.py on
#     its model on the GPU: offline vs streaming RTFx and latency, long-form (1 and 10 min) RTFx and memory.
#  6. PROFILE=1: the benchmark's joint_sft and ia_sft steps under torch.profiler at paper size: where the time goes
#     (matmul / attention / convolution / optimizer / elementwise shares of the kernels, the top kernels, the host
#     gap), traces in $OUT/profile/.
#  7. INFERENCE_PAPER=1: benchmark.py --keep-export writes joint SFT's paper-size export (random weights), and
#     experiments/benchmark_inference.py measures its offline, streaming and long-form speed on the GPU.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export HF_HUB_OFFLINE=1 ENTROPY_ASR_CACHE=/tmp/cache PYTHONWARNINGS=ignore WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)"
mkdir -p "$OUT"
t0=$(date +%s)
timeout "${BENCH_TIMEOUT:-360}" python3 experiments/benchmark.py --size paper --batch "${BATCH:-32}" --steps 4 --skip-data \
  --decode-batch "${DECODE_BATCH:-128}" --static-cache --out "$OUT/bench.json" --record docs/benchmarks.md 2>&1 | grep -v -i warn | tee "$OUT/bench.log"
echo "benchmark: $(( $(date +%s) - t0 )) s"
if [ -n "${FSDP:-}" ]; then
  t1=$(date +%s)
  timeout "${FSDP_TIMEOUT:-150}" python3 experiments/run.py --config experiments/tiny/pretrain_ctc.yaml --run_dir /tmp/fsdp \
    --trainer.accelerator gpu --trainer.devices 1 --trainer.strategy '{"class_path": "lightning_modules.SpeechFSDP"}' \
    --trainer.precision bf16-mixed --trainer.max_steps 30 --trainer.limit_val_batches 2 --trainer.callbacks '[]' \
    --trainer.enable_progress_bar false --data.init_args.synthetic '{"utterances": 200, "seed": 0}' \
    --data.init_args.num_workers 4 --test false > "$OUT/fsdp.log" 2>&1
  echo "fsdp rc=$? in $(( $(date +%s) - t1 )) s"; tail -c 600 "$OUT/fsdp.log"
  python3 -c "from safetensors.torch import load_file; w = load_file('/tmp/fsdp/export/encoder.safetensors'); print('fsdp export: encoder', sum(v.numel() for v in w.values()), 'parameters')"
fi
if [ -n "${COMPILE:-}" ]; then
  timeout "${COMPILE_TIMEOUT:-240}" python3 experiments/benchmark.py --size paper --batch "${BATCH:-32}" --steps 4 --skip-data \
    --stages ia_sft joint_sft --decode-batch 0 --compile --activation-checkpointing --out "$OUT/bench_compile.json" \
    --record docs/benchmarks.md 2>&1 | grep -v -i warn | tee "$OUT/bench_compile.log"
fi
if [ -n "${PROFILE:-}" ]; then
  timeout "${PROFILE_TIMEOUT:-180}" python3 experiments/benchmark.py --size paper --batch "${BATCH:-32}" --steps 2 \
    --skip-data --stages ia_sft joint_sft --decode-batch 0 --profile "$OUT/profile" --out "$OUT/bench_profile.json" \
    2>&1 | grep -v -i warn | grep -A11 '^profile' | tee "$OUT/profile.log"
fi
cp docs/benchmarks.md "$OUT/" 2>/dev/null
if [ -n "${CALLBACK_COST:-}" ]; then
  python3 - <<'PY'
from entropy_asr.model.tokenizer import train_bpe_tokenizer
from entropy_asr.data.sentences import SentenceGenerator
import random
g, r = SentenceGenerator(), random.Random(0)
train_bpe_tokenizer([g.sentence(r, l) for l in ("zh", "en", "mix") for _ in range(2000)], 3000, "/tmp/tok")
PY
  timeout 240 python3 scripts/callback_cost.py --tokenizer /tmp/tok 2>&1 | grep '^{' | tee "$OUT/callback_cost.jsonl"
fi
if [ -n "${PIPELINE:-}" ]; then
  t1=$(date +%s)
  timeout "${PIPELINE_TIMEOUT:-330}" python3 experiments/pipeline.py --config experiments/tiny/pipeline.yaml \
    --trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed --trainer.enable_progress_bar false \
    --data.init_args.num_workers 6 > "$OUT/pipeline.log" 2>&1
  echo "pipeline rc=$? in $(( $(date +%s) - t1 )) s"
  grep -E "^== |^\|" "$OUT/pipeline.log" | tail -20
  # the long-form and streaming paths on the GPU, with the model just trained (tiny: no paper-size export exists)
  timeout "${INFERENCE_TIMEOUT:-150}" python3 experiments/benchmark_inference.py --export runs/tiny/joint_sft/export \
    --device cuda --utterances 100 --lengths 60,600 --out "$OUT/inference.json" > "$OUT/inference.log" 2>&1
  echo "inference benchmark rc=$?"; grep -v '^{' "$OUT/inference.log" | tail -15
fi
if [ -n "${INFERENCE_PAPER:-}" ]; then
  # the long-form and streaming paths' speed at paper size: joint SFT's export with random weights (its transcripts
  # mean nothing, and random weights may decode up to the length guard: a slow case), the small synthetic corpus
  rm -rf /tmp/paper_export
  timeout "${EXPORT_TIMEOUT:-240}" python3 experiments/benchmark.py --size paper --batch 8 --steps 1 --stages joint_sft \
    --decode-batch 0 --skip-data --keep-export /tmp/paper_export > "$OUT/paper_export.log" 2>&1
  echo "paper export rc=$?"
  timeout "${INFERENCE_TIMEOUT:-240}" python3 experiments/benchmark_inference.py --export /tmp/paper_export --device cuda \
    --data "$ENTROPY_ASR_CACHE/synthetic-v5-n200-s0/test" --utterances 12 --lengths 30 --out "$OUT/inference_paper.json" \
    > "$OUT/inference_paper.log" 2>&1
  echo "paper inference benchmark rc=$?"; grep -v '^{' "$OUT/inference_paper.log" | tail -10
fi
echo "gpu_check: $(( $(date +%s) - t0 )) s"
