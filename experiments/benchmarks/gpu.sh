#!/usr/bin/env bash
# GPU figures for experiments/benchmarks/RESULTS.md, as is on a GPU machine:
#   1. the game's step at the paper's batch (128 crops of 128 px): fp32 and bf16, NCHW
#      and channels_last, eager and compiled; images/s, MFU from the FLOP count, peak
#      memory, and the data path's margin over the step;
#   2. the data pipeline with this machine's cores (workers = cores - 1, at most 8),
#      device-side augmentation on the GPU;
#   3. the frozen inpainter's forward (the instructor's step) with batch norm folded or not.
# Usage: experiments/benchmarks/gpu.sh [python]     (default: python on PATH)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-python}
WORKERS=$(( $(nproc) - 1 ))
(( WORKERS > 8 )) && WORKERS=8
(( WORKERS < 1 )) && WORKERS=1
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
$PY -m experiments.benchmarks.game_step --device cuda --batch 128 --size 128 \
    --warmup 3 --steps 10 --precisions 32-true bf16-mixed --channels-last off on \
    --compile off on --workers "$WORKERS"
$PY -m experiments.benchmarks.data_pipeline --device cuda --workers "$WORKERS" \
    --batch-size 128 --patches 4096
$PY -m experiments.benchmarks.frozen_forward --device cuda --batch 128 \
    --precisions 32-true bf16-mixed
# mapping: end to end against the network alone, fp32 and bf16, larger batches of windows
$PY -m experiments.benchmarks.inference --device cuda --sizes 3000 6000 \
    --precisions bf16 fp32 --batch-size 16
