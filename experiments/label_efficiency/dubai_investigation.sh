#!/usr/bin/env bash
# What decides whether pretraining helps on the Dubai images, measured on the validation
# tile (6) only; the test tile (7) is never read here. Each row of the recorded table
# (results_dubai/README.md) is one pretext setting, scored by the frozen-encoder probe and
# by full fine-tuning at 10 % of the labelled pixels of tiles 1-5:
#   experiments/label_efficiency/dubai_investigation.sh DATA_ROOT [OUT]
# Restartable: finished runs (metrics.json present) are skipped. PYTHON picks the
# interpreter (default: python). The table:
#   python experiments/label_efficiency/collect_investigation.py OUT
set -euo pipefail
root="${1:?usage: dubai_investigation.sh DATA_ROOT [OUT]}"
out="${2:-outputs/dubai_investigation}"
PY="${PYTHON:-python}"
common=("data.root=$root" "data.num_workers=1")

pretext() {  # NAME EXPERIMENT [overrides]: 12 epochs of 512 crops, checkpoints every 3
  local name=$1 exp=$2; shift 2
  [ -f "$out/pretext/$name/metrics.json" ] && return 0
  "$PY" -m sssi.train "+experiment=$exp" "${common[@]}" trainer.max_epochs=12 \
    callbacks.model_checkpoint.every_n_epochs=3 callbacks.model_checkpoint.save_top_k=-1 \
    "task.inpainter_scheduler.milestones=[10]" ckpt_path=last \
    "hydra.run.dir=$out/pretext/$name" "$@"
}

score() {  # PROTOCOL(probe|finetune) NAME INIT(none|ckpt) SEED [overrides]: val/mIoU on tile 6
  local protocol=$1 name=$2 init=$3 seed=$4; shift 4
  local dir="$out/$protocol/$name/seed_$seed"
  [ -f "$dir/metrics.json" ] && return 0
  local start=("task.init=$init")
  [ "$init" = none ] && start=(task.init=null task.require_init=false)
  "$PY" -m sssi.train "+experiment=dubai_$protocol" "${common[@]}" "${start[@]}" "seed=$seed" \
    "data.split_seed=$seed" trainer.check_val_every_n_epoch=6 test=false \
    callbacks.model_checkpoint.monitor=null "hydra.run.dir=$dir" "$@"
}

pretext blocks dubai_inpaint_blocks
pretext game_relative dubai_pretrain task.instructor_reward=relative
# the edge shortcut removed by construction: no edge cell may be erased (9 epochs)
pretext game_border1 dubai_pretrain mask_policy.border_cells=1 trainer.max_epochs=9
B="$out/pretext/blocks/checkpoints"
G="$out/pretext/game_relative/checkpoints"
E="$out/pretext/game_border1/checkpoints"
for seed in 0 1; do
  score probe scratch none $seed
  score finetune scratch none $seed
done
# pretraining length: probe after 3, 6, 9 and 12 pretext epochs
for e in 002 005 008 011; do score probe "blocks_e$e" "$B/epoch_$e.ckpt" 0; done
for e in 002 005 008 011; do score probe "game_relative_e$e" "$G/epoch_$e.ckpt" 0; done
score probe game_border1_e008 "$E/epoch_008.ckpt" 0
score probe blocks_e011 "$B/epoch_011.ckpt" 1
# BatchNorm statistics of the frozen encoder: as pretrained (on images with holes) or
# following the labelled images
score probe blocks_e011_bn_update "$B/epoch_011.ckpt" 0 task.encoder_bn_stats=update
score probe scratch_bn_update none 0 task.encoder_bn_stats=update
# fine-tuning recipe: the encoder's learning rate
score finetune blocks_e011 "$B/epoch_011.ckpt" 0
for seed in 0 1; do
  score finetune blocks_e011_lr0.1 "$B/epoch_011.ckpt" $seed task.pretrained_lr_scale=0.1
done
score finetune game_relative_e011 "$G/epoch_011.ckpt" 0
