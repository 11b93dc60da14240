#!/usr/bin/env bash
# Does choosing the labelled regions help fine-tuning on the Dubai images (issue 32)?
# The gate (gate.py) first ranks the candidate regions of tiles 1-5 with every selector
# into RANKINGS/<selector>/regions.json; this script then fine-tunes on each selector's
# regions and scores tile 6 only (the test tile 7 is read by the `test` stage, once):
#   experiments/label_selection/dubai_selection.sh train DATA_ROOT OUT RANKINGS START SELECTOR FRACTION SEED...
#   experiments/label_selection/dubai_selection.sh test  DATA_ROOT OUT RANKINGS START SELECTOR FRACTION SEED...
#   python -m experiments.label_selection.collect OUT RESULTS_DIR
# START: scratch (random weights drawn with SEED) or a pretext checkpoint's path (the
# encoder fine-tuned at 1/10 of the head's rate, +experiment=dubai_finetune's rule).
# SELECTOR: random (today's seeded regions, data.split_seed=SEED) or a folder of
# RANKINGS (data.label_regions=RANKINGS/SELECTOR/regions.json with data.label_pool=2:
# SEED draws the regions within the selector's first twice the budget, a spread of
# choices around the selector's). SEED is also the training seed, so every selector is
# paired with random by seed. Runs go to OUT/train/<start>/<selector>/fraction_F/seed_S
# (start: scratch or the checkpoint's file stem); finished runs (metrics.json) are
# skipped. The band statistics are the pretext's (STATS=norm_stats.json, default the
# scratch100 run's of the gate), for every start. PYTHON picks the interpreter;
# SETTINGS=... adds overrides to every run (the tests' tiny sizes).
set -euo pipefail
stage="${1:?usage: dubai_selection.sh train|test DATA_ROOT OUT RANKINGS START SELECTOR FRACTION SEED...}"
root="${2:?DATA_ROOT}"; out="${3:?OUT}"; rankings="${4:?RANKINGS}"
start="${5:?START}"; selector="${6:?SELECTOR}"; fraction="${7:?FRACTION}"
shift 7
[ $# -ge 1 ] || { echo "error: no SEED given" >&2; exit 2; }
case "$stage" in train|test) ;; *) echo "error: stage '$stage': expected train or test" >&2; exit 2 ;; esac
PY="${PYTHON:-python}"
# shellcheck disable=SC2206 # a list of overrides
settings=(${SETTINGS:-})
common=("data.root=$root" "data.input_scale=0.5" "data.num_workers=1")
norm=()
if [ -n "${STATS:-}" ]; then
  norm=($("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1]))
print("data.mean=[%s]" % ",".join(map(repr, d["mean"])), "data.std=[%s]" % ",".join(map(repr, d["std"])))' "$STATS"))
fi
if [ "$start" = scratch ]; then
  init=(task.init=null task.require_init=false); start_name=scratch
else
  [ -f "$start" ] || { echo "error: START $start: not found (scratch or a pretext .ckpt)" >&2; exit 2; }
  init=("task.init=$start"); start_name="$(basename "$start" .ckpt)"
fi
if [ "$selector" = random ]; then
  regions=()
else
  ranking="$rankings/$selector/regions.json"
  [ -f "$ranking" ] || { echo "error: $ranking: not found (run the gate first)" >&2; exit 2; }
  regions=("data.label_regions=$ranking" data.label_pool=2)
fi
for seed in "$@"; do
  dir="$out/train/$start_name/$selector/fraction_$fraction/seed_$seed"
  if [ ! -f "$dir/metrics.json" ]; then
    "$PY" -m sssi.train +experiment=dubai_finetune "${common[@]}" "${norm[@]}" "${init[@]}" \
      "${regions[@]}" "seed=$seed" "data.split_seed=$seed" "data.label_fraction=$fraction" \
      trainer.check_val_every_n_epoch=6 test=false callbacks.model_checkpoint.monitor=null \
      callbacks.model_checkpoint.save_top_k=0 "hydra.run.dir=$dir" "${settings[@]}"
  fi
  [ "$stage" = test ] || continue
  tested="$out/test/$start_name/$selector/fraction_$fraction/seed_$seed"
  [ -f "$tested/metrics.json" ] && continue
  # a test image (about 2060 x 1820 px) is seen whole at half resolution
  "$PY" -m sssi.evaluate "ckpt=$dir/checkpoints/last.ckpt" data=dubai "${common[@]}" \
    save_predictions=false progress=false window=2112 stride=2048 chunk=4224 \
    "hydra.run.dir=$tested"
done
