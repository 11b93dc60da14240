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
# LANES=n runs stages 2 and 3 as n processes of nproc/n threads each (shard=i/n; their
# logs go to <study>/logs/): on 2 CPU cores two 1-thread lanes finish small-batch jobs
# sooner than one 2-thread process. Default 2 for dubai, 1 otherwise. Every stage's wall
# time is appended to <study>/wall_time.tsv.
set -euo pipefail
scale="${1:-demo}"
shift || true
case "$scale" in demo|dubai|potsdam) ;; *) echo "error: scale '$scale': expected demo, dubai or potsdam" >&2; exit 2;; esac
PY="${PYTHON:-python}"
study="${STUDY_DIR:-outputs/label_efficiency/$scale}"
results="${RESULTS_DIR:-$study}"
eval_args=()
case "$scale" in
  demo) data_group=synthetic; stage2=(finetune); lanes=1 ;;
  # a test image (about 2060 x 1820 px) fits one window and one chunk (a window that
  # touches two chunks is predicted twice): the network sees it whole, at the study's
  # half resolution
  dubai) data_group=dubai; stage2=(finetune probe)
    eval_args=(window=2112 stride=2048 chunk=4224); lanes=2 ;;
  potsdam) data_group=potsdam; stage2=(finetune); lanes=1 ;;
esac
data_args=()
for arg in "$@"; do
  case "$arg" in data.*) data_args+=("$arg") ;; esac
done

lanes="${LANES:-$lanes}"
case "$lanes" in ''|*[!0-9]*|0) echo "error: LANES=$lanes: expected a positive integer" >&2; exit 2;; esac
threads=$(( $(nproc) / lanes )); [ "$threads" -ge 1 ] || threads=1
mkdir -p "$study/logs"

# timed NAME CMD...: echo and run CMD; when it succeeds, append "NAME<TAB>seconds" to the
# study's wall_time.tsv; its exit status either way
timed() {
  local name="$1" start=$SECONDS status=0; shift
  echo "+ $*"
  "$@" || status=$?
  [ "$status" -ne 0 ] || printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$study/wall_time.tsv"
  return "$status"
}
# in_lanes NAME CMD...: CMD (a Hydra multirun) once, or as $lanes processes that share its
# jobs (shard=i/n), each with its own log; fails if any lane fails
in_lanes() {
  local name="$1" i status=0; shift
  if [ "$lanes" -eq 1 ]; then "$@"; return; fi
  local pids=()
  for ((i = 0; i < lanes; i++)); do
    echo "+ lane $i/$lanes: $* shard=$i/$lanes > $study/logs/$name.lane$i.log"
    OMP_NUM_THREADS=$threads "$@" "shard=$i/$lanes" > "$study/logs/$name.lane$i.log" 2>&1 &
    pids+=("$!")
  done
  trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
  for ((i = 0; i < lanes; i++)); do
    wait "${pids[$i]}" || { status=1; echo "error: $name lane $i failed; see $study/logs/$name.lane$i.log" >&2; }
  done
  trap - INT TERM
  return "$status"
}

timed pretrain "$PY" -m sssi.train -m "+experiment=label_efficiency/${scale}_pretrain" "study.dir=$study" "$@"
for protocol in "${stage2[@]}"; do
  timed "$protocol" in_lanes "$protocol" \
    "$PY" -m sssi.train -m "+experiment=label_efficiency/${scale}_${protocol}" "study.dir=$study" "$@"
done
# stage 3: every finished fine-tuning job not yet scored, in one evaluation multirun
# (shared by the lanes; each job writes JOB/evaluation/)
pending=()
while read -r ckpt; do
  job="$(dirname "$(dirname "$ckpt")")"
  [ -f "$job/metrics.json" ] || continue                # training not finished
  [ -f "$job/evaluation/metrics.json" ] && continue     # already scored
  pending+=("'${job#"$study"/}'")
done < <(find "$study/finetune" -path '*/checkpoints/last.ckpt' | sort)
if [ "${#pending[@]}" -gt 0 ]; then
  echo "+ evaluate ${#pending[@]} jobs on the test images"
  study_abs="$(cd "$study" && pwd)"
  jobs_csv="$(IFS=,; echo "${pending[*]}")"
  # shellcheck disable=SC2016,SC2086  # ${...} are Hydra interpolations; EVAL_ARGS splits
  timed evaluate in_lanes evaluate "$PY" -m sssi.evaluate -m "+study_job=$jobs_csv" \
    'ckpt=${hydra:sweep.dir}/${study_job}/checkpoints/last.ckpt' \
    "data=$data_group" "${data_args[@]}" save_predictions=false progress=false "${eval_args[@]}" \
    "hydra.sweep.dir=$study_abs" 'hydra.sweep.subdir=${study_job}/evaluation' \
    ${EVAL_ARGS:-} > "$study/logs/evaluate.log" 2>&1 \
    || { echo "error: evaluation failed; see $study/logs/" >&2; exit 1; }
fi
echo "+ aggregate"
"$PY" -m sssi.aggregate "$study/finetune" --metrics-file evaluation/metrics.json --out "$results" \
  --versus scratch --versus random_blocks
