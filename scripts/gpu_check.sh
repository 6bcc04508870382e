#!/usr/bin/env bash
# One GPU check for issue 3, run on the device machine from the repo root (wheels in .whl/):
#  1. paper-shaped steps (600M Conformer; + Qwen3-1.7B-shaped LLM) in bf16 autocast, and with
#     CALLBACK_COST=1 one check of each metric callback at that size (scripts/callback_cost.py)
#  2. a tiny pipeline (PIPELINE, default experiments/tiny/pipeline.yaml), every stage, on the GPU
#     with --trainer.precision bf16-mixed
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export HF_HUB_OFFLINE=1 ENTROPY_ASR_CACHE=/tmp/cache PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)"
mkdir -p $OUT
t0=$(date +%s)
python3 - <<'PY'
from entropy_asr.model.tokenizer import train_bpe_tokenizer
from entropy_asr.data.sentences import SentenceGenerator
import random
g, r = SentenceGenerator(), random.Random(0)
train_bpe_tokenizer([g.sentence(r, l) for l in ("zh", "en", "mix") for _ in range(2000)], 3000, "/tmp/tok")
PY
[ -z "${SKIP_PAPER:-}" ] && timeout 150 python3 scripts/paper_step.py --tokenizer /tmp/tok 2>&1 | grep -v Warning | tee $OUT/paper_step.jsonl
# the metric callbacks' cost at paper size, at the paper configs' intervals (issue 4); opt-in with
# CALLBACK_COST=1 (and SKIP_PIPELINE=1 to stay inside one call's 600 s)
[ -n "${CALLBACK_COST:-}" ] && timeout 240 python3 scripts/callback_cost.py --tokenizer /tmp/tok 2>&1 | grep '^{' | tee $OUT/callback_cost.jsonl
[ -n "${SKIP_PIPELINE:-}" ] && exit 0
echo "paper step: $(( $(date +%s) - t0 )) s"
t1=$(date +%s)
PIPELINE=${PIPELINE:-experiments/tiny/pipeline.yaml}
run_dir=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['run_dir'])" $PIPELINE)
timeout ${PIPELINE_TIMEOUT:-330} python3 experiments/pipeline.py --config $PIPELINE --trainer.accelerator gpu \
  --trainer.devices 1 --trainer.precision bf16-mixed --trainer.enable_progress_bar false --data.init_args.num_workers 6 \
  > $OUT/pipeline.log 2>&1
echo "pipeline rc=$? in $(( $(date +%s) - t1 )) s"
grep -E "^== |^\|" $OUT/pipeline.log | tail -20
cp $run_dir/results.json $OUT/ 2>/dev/null
for s in pretrain_lm pretrain_ctc align ia_sft joint_sft; do cp $run_dir/$s/metrics.csv $OUT/metrics_$s.csv 2>/dev/null; done
tail -5 $OUT/pipeline.log
