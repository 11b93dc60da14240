#!/usr/bin/env bash
# How the benefit of pretraining grows with the pretext budget, on the Dubai images
# (issue 28). One long, restartable pretext run per method and pretext seed writes a
# checkpoint at each budget of inpainter crops (sssi.callbacks.CropBudgets), so the game
# and random blocks are compared at matched inpainter crops; each checkpoint is then
# scored on tile 6 only (the test tile 7 is never read):
#   experiments/label_efficiency/dubai_scaling.sh pretext DATA_ROOT OUT METHOD SEED BUDGET...
#   experiments/label_efficiency/dubai_scaling.sh score   DATA_ROOT OUT PROTOCOL START FRACTION SEED...
#   python -m experiments.label_efficiency.collect_scaling OUT RESULTS_DIR
# and, once, the reported test on tile 7 at the budget the curve chose (item 7):
#   experiments/label_efficiency/dubai_scaling.sh test    DATA_ROOT OUT PROTOCOL START FRACTION SEED...
#   python -m experiments.label_efficiency.collect_tile7 OUT RESULTS_DIR
# (test: the probe fitted again with probe.test=true into OUT/test/probe/...; the
# fine-tuned score run's last.ckpt, trained first where missing, evaluated on tile 7's
# whole images at the study's half resolution into OUT/test/finetune/..., as
# run.sh's stage 3 does.)
# METHOD: blocks (random 16 px blocks) or game (the instructor), at a constant rate; or
# blocks_decay, random blocks whose rate falls 10x at 60 % and again at 85 % of the last
# BUDGET (the paper decays its rate; this run is for reaching Telea's hole error, its
# last budget is the one to read); FROM=blocks starts it from blocks' last.ckpt of the
# same seed (the runs are the same up to the first fall: branch_decay.py). Budgets are
# multiples of 512 (an epoch's crops; data.samples_per_epoch in SETTINGS changes it):
# a run asked for a larger budget continues from its last.ckpt exactly (a blocks_decay
# run keeps the last budget it started with, in schedule.txt, and refuses another).
# PROTOCOL: probe (sssi.probe: BatchNorm re-estimated on clean crops, an L-BFGS
# logistic fit on layer3 and layer4) or finetune (+experiment=dubai_finetune, its lr
# rule for every start: a pretrained encoder at 1/10 of the head's rate);
# START: METHOD/seed_S/BUDGET (that checkpoint) or scratch (random weights drawn with
# SEED). Every scoring run uses the pretext's band statistics (tiles 1-6), scratch too,
# and SEED is also the labelled regions' seed (paired across starts). Finished jobs
# (budgets/crops_N.ckpt, probe.json, metrics.json present) are skipped.
# PYTHON picks the interpreter; SETTINGS=... adds overrides to every pretext run and
# SCORE_SETTINGS=... to every scoring run (its probe.* keys to the probe only;
# gpu_scaling.sh sets both). The CPU setting is the
# measured fastest per crop (experiments/benchmarks/RESULTS.md, the pretext levers):
# ResNet-18 at stride 32, the light decoder, channels_last, half resolution, constant
# learning rate (a checkpoint in the middle of the run is not at a decayed rate, so
# every budget is read from the same run).
set -euo pipefail
stage="${1:?usage: dubai_scaling.sh pretext|score|test DATA_ROOT OUT ...}"
root="${2:?DATA_ROOT}"
out="${3:?OUT}"
shift 3
PY="${PYTHON:-python}"
here="$(cd "$(dirname "$0")" && pwd)"
common=("data.root=$root" "data.input_scale=0.5" "data.num_workers=1")
# shellcheck disable=SC2206 # lists of overrides
settings=(${SETTINGS:-})
# shellcheck disable=SC2206
score_settings=(${SCORE_SETTINGS:-})
finetune_settings=()  # the same without the probe's own keys (probe.*)
for arg in "${score_settings[@]}"; do
  case "$arg" in probe.*|+probe.*) ;; *) finetune_settings+=("$arg") ;; esac
done
pretext_settings=(backbone.output_stride=32 "task.decoder_channels=[128,64,32]"
  task.channels_last=true)
epoch_crops=512  # an epoch's crops (dubai_pretrain's), unless SETTINGS changes it
for arg in "${settings[@]}"; do
  case "$arg" in data.samples_per_epoch=*) epoch_crops="${arg#*=}" ;; esac
done

experiment_of() {
  case "$1" in
    blocks|blocks_decay) echo dubai_inpaint_blocks ;;
    game) echo dubai_pretrain ;;
    *) echo "error: METHOD '$1': expected blocks, blocks_decay or game" >&2; exit 2 ;;
  esac
}

budgets_list() {  # BUDGET... -> [b1,b2,...]
  local IFS=,; echo "[$*]"
}

case "$stage" in
  pretext)
    method="${1:?METHOD}"; seed="${2:?SEED}"; shift 2
    [ $# -ge 1 ] || { echo "error: no BUDGET given" >&2; exit 2; }
    exp=$(experiment_of "$method")
    dir="$out/pretext/${method}/seed_${seed}"
    last="${*: -1}"
    [ -f "$dir/budgets/crops_$(printf %07d "$last").ckpt" ] && exit 0
    mkdir -p "$dir"
    if [ "$method" = blocks_decay ]; then  # the schedule is fixed by the last budget
      if [ -f "$dir/schedule.txt" ] && [ "$(cat "$dir/schedule.txt")" != "$last" ]; then
        echo "error: $dir decays its rate towards budget $(cat "$dir/schedule.txt"), not $last: keep that last budget, or start another seed" >&2
        exit 2
      fi
      echo "$last" > "$dir/schedule.txt"
      epochs=$(( last / epoch_crops ))
      falls=($(( epochs * 60 / 100 )) $(( epochs * 85 / 100 )))
      rate=("task.inpainter_scheduler.milestones=[${falls[0]},${falls[1]}]"
            task.inpainter_scheduler.gamma=0.1)
      if [ -n "${FROM:-}" ] && [ ! -f "$dir/checkpoints/last.ckpt" ]; then
        "$PY" "$here/branch_decay.py" "$out/pretext/$FROM/seed_$seed" "$dir" \
          --milestones "${falls[@]}" || exit 2
      fi
    elif [ -n "${FROM:-}" ]; then
      echo "error: FROM=$FROM: only a blocks_decay run continues another run" >&2; exit 2
    else
      rate=("task.inpainter_scheduler.milestones=[1000000]")  # constant
    fi
    start=$(date +%s)
    resume=()
    [ -f "$dir/checkpoints/last.ckpt" ] && resume=(ckpt_path=last)
    "$PY" -m sssi.train "+experiment=$exp" "${common[@]}" "${pretext_settings[@]}" "${rate[@]}" \
      "seed=$seed" trainer.max_epochs=100000 trainer.check_val_every_n_epoch=6 \
      callbacks.model_checkpoint.every_n_epochs=6 callbacks.model_checkpoint.save_top_k=1 \
      "+callbacks.crop_budgets._target_=sssi.callbacks.CropBudgets" \
      "+callbacks.crop_budgets.dirpath=$dir/budgets" \
      "+callbacks.crop_budgets.budgets=$(budgets_list "$@")" \
      "hydra.run.dir=$dir" "${resume[@]}" "${settings[@]}"
    # wall seconds per leg, so that a budget's cost adds the legs that led to it
    printf '%s\t%s\t%s\n' "$last" "$start" "$(date +%s)" >> "$dir/wall_time.tsv"
    ;;
  score|test)
    protocol="${1:?PROTOCOL}"; start_name="${2:?START}"; fraction="${3:?FRACTION}"; shift 3
    [ $# -ge 1 ] || { echo "error: no SEED given" >&2; exit 2; }
    stats=$(ls "$out"/pretext/*/seed_*/norm_stats.json 2>/dev/null | head -1)
    [ -n "$stats" ] || { echo "error: no pretext run under $out/pretext: its band statistics are needed" >&2; exit 2; }
    norm=($("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1]))
print("data.mean=[%s]" % ",".join(map(repr, d["mean"])), "data.std=[%s]" % ",".join(map(repr, d["std"])))' "$stats"))
    if [ "$start_name" = scratch ]; then
      init=(task.init=null task.require_init=false)
    else
      method="${start_name%%/*}"; rest="${start_name#*/}"; budget="${rest#*/}"; pseed="${rest%%/*}"
      ckpt="$out/pretext/$method/$pseed/budgets/crops_$(printf %07d "$budget").ckpt"
      [ -f "$ckpt" ] || { echo "error: $ckpt: not found (run the pretext stage first)" >&2; exit 2; }
      init=("task.init=$ckpt")
    fi
    for seed in "$@"; do
      dir="$out/score/$protocol/$start_name/fraction_$fraction/seed_$seed"
      tested="$out/test/$protocol/$start_name/fraction_$fraction/seed_$seed"
      case "$stage/$protocol" in
        score/probe|test/probe)
          probe_test=(); [ "$stage" = test ] && { dir="$tested"; probe_test=(probe.test=true); }
          [ -f "$dir/probe.json" ] && continue
          "$PY" -m sssi.probe +experiment=dubai_finetune "${common[@]}" "${norm[@]}" \
            "${init[@]}" "seed=$seed" "data.split_seed=$seed" "data.label_fraction=$fraction" \
            "hydra.run.dir=$dir" "${probe_test[@]}" "${score_settings[@]}" ;;
        score/finetune|test/finetune)
          if [ ! -f "$dir/metrics.json" ]; then
            "$PY" -m sssi.train +experiment=dubai_finetune "${common[@]}" "${norm[@]}" \
              "${init[@]}" "seed=$seed" "data.split_seed=$seed" "data.label_fraction=$fraction" \
              trainer.check_val_every_n_epoch=6 test=false callbacks.model_checkpoint.monitor=null \
              callbacks.model_checkpoint.save_top_k=0 "hydra.run.dir=$dir" "${finetune_settings[@]}"
          fi
          [ "$stage" = test ] || continue
          [ -f "$tested/metrics.json" ] && continue
          # a test image (about 2060 x 1820 px) is seen whole at half resolution
          "$PY" -m sssi.evaluate "ckpt=$dir/checkpoints/last.ckpt" data=dubai "${common[@]}" \
            save_predictions=false progress=false window=2112 stride=2048 chunk=4224 \
            "hydra.run.dir=$tested" ;;
        *) echo "error: PROTOCOL '$protocol': expected probe or finetune" >&2; exit 2 ;;
      esac
    done
    ;;
  *) echo "error: stage '$stage': expected pretext, score or test" >&2; exit 2 ;;
esac
