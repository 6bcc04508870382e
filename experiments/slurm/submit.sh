#!/bin/bash
# The paper's schedule as four SLURM jobs: pretraining and IA-SFT run at the same time and share
# the snapshot directory (runs/paper/pretrain_ctc/export/snapshots, on a shared filesystem).
#   1. pretrain_ctc: CKADriftMonitor exports the step-200k reference, then a snapshot whenever
#      CKA to the last one drops below 0.975, then the final one.
#   2. align: starts once the first snapshot's marker exists (WAIT_FOR), trains the adapter on it.
#   3. ia_sft: after align; EncoderHotSwap swaps newer snapshots in at step boundaries while
#      pretraining goes on, and at step 2M waits for the final one.
#   4. joint_sft: after IA-SFT (and pretraining) end.
# Usage: experiments/slurm/submit.sh TRAIN_SHARDS VAL_SHARDS [NODES]
set -euo pipefail
TRAIN=$1; VAL=$2; NODES=${3:-4}
DATA=(--data.init_args.train_dir "$TRAIN" --data.init_args.val_dir "$VAL")
S=experiments/slurm/stage.sbatch
first=runs/paper/pretrain_ctc/export/snapshots/snapshot-step00200000.json
pre=$(sbatch --parsable --nodes "$NODES" --job-name pretrain_ctc "$S" experiments/pretrain_ctc.yaml "${DATA[@]}")
align=$(WAIT_FOR=$first sbatch --parsable --export=ALL --nodes 1 --job-name align "$S" experiments/align.yaml "${DATA[@]}")
ia=$(sbatch --parsable --nodes "$NODES" --job-name ia_sft --dependency "afterok:$align" "$S" experiments/ia_sft.yaml "${DATA[@]}")
joint=$(sbatch --parsable --nodes "$NODES" --job-name joint_sft --dependency "afterok:$ia:$pre" "$S" experiments/joint_sft.yaml "${DATA[@]}")
echo "pretrain_ctc $pre, align $align (waits for $first), ia_sft $ia, joint_sft $joint"
