#!/usr/bin/env bash
# The label-efficiency study in three commands (see README.md here):
#   experiments/label_efficiency/run.sh demo                      # synthetic data, CPU
#   experiments/label_efficiency/run.sh potsdam data.root=/data/potsdam trainer.devices=4
# Extra KEY=VALUE arguments go to both training stages. Every job has a fixed folder
# under outputs/label_efficiency/<scale>/ and is skipped when finished, so running the
# script again after a crash or preemption continues the study.
set -euo pipefail
scale="${1:-demo}"
shift || true
case "$scale" in demo|potsdam) ;; *) echo "error: scale '$scale': expected demo or potsdam" >&2; exit 2;; esac
PY="${PYTHON:-python}"
study="${STUDY_DIR:-outputs/label_efficiency/$scale}"
results="${RESULTS_DIR:-$study}"

set -x
"$PY" -m sssi.train -m "+experiment=label_efficiency/${scale}_pretrain" "study.dir=$study" "$@"
"$PY" -m sssi.train -m "+experiment=label_efficiency/${scale}_finetune" "study.dir=$study" "$@"
"$PY" -m sssi.aggregate "$study/finetune" --out "$results"
