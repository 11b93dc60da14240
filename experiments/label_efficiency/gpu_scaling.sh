#!/usr/bin/env bash
# The budget curve (dubai_scaling.sh) on one GPU, to about 10^6 inpainter crops:
#   experiments/label_efficiency/gpu_scaling.sh DATA_ROOT OUT
#   python -m experiments.label_efficiency.collect_scaling OUT RESULTS_DIR
# Random blocks, pretext seed 0, bf16 autocast, channels_last, batches of 256 crops,
# epochs of 32768 crops (budgets must be multiples of it), data workers = cores - 1;
# then the converged probe on layer3/layer4 (seeds 0-2, 10 % of the labels; the probe's
# fit runs on the CPU) and full fine-tuning on the GPU, from every budget and from
# scratch, on tile 6. Restartable like dubai_scaling.sh. Environment:
#   BUDGETS="32768 98304 327680 983040"  the budgets (multiples of EPOCH)
#   EPOCH=32768 BATCH=256                crops per epoch, per batch
#   ACCEL=gpu PRECISION=bf16-mixed       (ACCEL=cpu PRECISION=32-true: the CPU test)
#   EXTRA="..."                          more overrides for every run (e.g. sizes)
#   SCORE_EXTRA="..."                    more overrides for the scoring runs only
#   SEEDS="0 1 2" PROTOCOLS="probe finetune"   the scoring runs
#   METHOD=blocks                        or blocks_decay (the rate decayed towards the
#                                        last budget: read that budget only)
#   PYTHON=python
# The images are read and cut by the workers from the decoded tiles' pages (GDAL's
# cache); on the 2-core CPU that path cost about 5 % of the step
# (experiments/benchmarks/RESULTS.md) — on a GPU, check `data/loader_wait` first.
set -euo pipefail
root="${1:?usage: gpu_scaling.sh DATA_ROOT OUT}"
out="${2:?OUT}"
here="$(cd "$(dirname "$0")" && pwd)"
read -r -a budgets <<< "${BUDGETS:-32768 98304 327680 983040}"
epoch="${EPOCH:-32768}"
batch="${BATCH:-256}"
accel="${ACCEL:-gpu}"
precision="${PRECISION:-bf16-mixed}"
for b in "${budgets[@]}"; do
  (( b % epoch == 0 )) || { echo "error: budget $b is not a multiple of EPOCH=$epoch" >&2; exit 2; }
done
workers=$(( $(nproc) - 1 )); (( workers > 15 )) && workers=15; (( workers < 1 )) && workers=1
[ "$accel" = cpu ] && workers=0
run=("trainer.accelerator=$accel" "trainer.precision=$precision" "data.num_workers=$workers")
# shellcheck disable=SC2206 # EXTRA is a list of overrides
extra=(${EXTRA:-})
export SETTINGS="${run[*]} data.batch_size=$batch data.samples_per_epoch=$epoch ${extra[*]}"
export SCORE_SETTINGS="${run[*]} ${extra[*]} ${SCORE_EXTRA:-}"
method="${METHOD:-blocks}"
bash "$here/dubai_scaling.sh" pretext "$root" "$out" "$method" 0 "${budgets[@]}"
read -r -a seeds <<< "${SEEDS:-0 1 2}"
for start in scratch "${budgets[@]/#/$method/seed_0/}"; do
  for protocol in ${PROTOCOLS:-probe finetune}; do
    bash "$here/dubai_scaling.sh" score "$root" "$out" "$protocol" "$start" 0.1 "${seeds[@]}"
  done
done
