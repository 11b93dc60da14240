#!/usr/bin/env bash
# The label-efficiency study in one command (see README.md here):
#   experiments/label_efficiency/run.sh demo                      # synthetic data, CPU
#   experiments/label_efficiency/run.sh dubai data.root=DIR       # real Dubai images, CPU
#   experiments/label_efficiency/run.sh potsdam data.root=/data/potsdam trainer.devices=4
# Extra KEY=VALUE arguments go to both training stages (data.* ones to the evaluation
# too). Every job has a fixed folder under outputs/label_efficiency/<scale>/ and is
# skipped when finished, so running the script again after a crash or preemption
# continues the study. Stages: 1 pretext runs, 2 fine-tuning (dubai: full fine-tuning and
# the frozen-encoder probe), 3 full-image evaluation of the test tiles, then the tables.
set -euo pipefail
scale="${1:-demo}"
shift || true
case "$scale" in demo|dubai|potsdam) ;; *) echo "error: scale '$scale': expected demo, dubai or potsdam" >&2; exit 2;; esac
PY="${PYTHON:-python}"
study="${STUDY_DIR:-outputs/label_efficiency/$scale}"
results="${RESULTS_DIR:-$study}"
case "$scale" in
  demo) data_group=synthetic; stage2=(finetune) ;;
  dubai) data_group=dubai; stage2=(finetune probe) ;;
  potsdam) data_group=potsdam; stage2=(finetune) ;;
esac
data_args=()
for arg in "$@"; do
  case "$arg" in data.*) data_args+=("$arg") ;; esac
done

set -x
"$PY" -m sssi.train -m "+experiment=label_efficiency/${scale}_pretrain" "study.dir=$study" "$@"
for protocol in "${stage2[@]}"; do
  "$PY" -m sssi.train -m "+experiment=label_efficiency/${scale}_${protocol}" "study.dir=$study" "$@"
done
set +x
# stage 3: every finished fine-tuning job, scored once on the full test images
find "$study/finetune" -path '*/checkpoints/last.ckpt' | sort | while read -r ckpt; do
  job="$(dirname "$(dirname "$ckpt")")"
  [ -f "$job/metrics.json" ] || continue                # training not finished
  [ -f "$job/evaluation/metrics.json" ] && continue     # already scored
  echo "+ evaluate $job"
  "$PY" -m sssi.evaluate "ckpt=$ckpt" "data=$data_group" "${data_args[@]}" \
    "hydra.run.dir=$job/evaluation" save_predictions=false ${EVAL_ARGS:-} > "$job/evaluation.log" 2>&1 \
    || { echo "error: evaluation of $job failed; see $job/evaluation.log" >&2; exit 1; }
done
set -x
"$PY" -m sssi.aggregate "$study/finetune" --metrics-file evaluation/metrics.json --out "$results"
