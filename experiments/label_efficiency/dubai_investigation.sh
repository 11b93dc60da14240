#!/usr/bin/env bash
# What decides whether pretraining helps on the Dubai images, measured on the validation
# tile (6) only; the test tile (7) is never read here. Each row of the recorded table
# (results_dubai/README.md) is one pretext setting, scored by the frozen-encoder probe and
# by full fine-tuning at 10 % of the labelled pixels of tiles 1-5:
#   experiments/label_efficiency/dubai_investigation.sh DATA_ROOT [OUT]
# Restartable: finished runs (metrics.json present) are skipped. PYTHON picks the
# interpreter (default: python). The table:
#   python experiments/label_efficiency/collect_investigation.py OUT
# A third argument picks the rows: full (the first rows, at full resolution, 12 pretext
# epochs), study (the settings of the recorded study: half resolution, 6 pretext epochs,
# 6 fine-tuning epochs; names start with study_) or all (default). ONLY=REGEX runs only
# the settings whose names match (e.g. two processes with disjoint ONLY share 2 cores).
set -euo pipefail
root="${1:?usage: dubai_investigation.sh DATA_ROOT [OUT] [full|study|all]}"
out="${2:-outputs/dubai_investigation}"
rows="${3:-all}"
PY="${PYTHON:-python}"
common=("data.root=$root" "data.num_workers=1")
wanted() { [ -z "${ONLY:-}" ] || [[ "$1" =~ ^(${ONLY})$ ]]; }

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

study_rows() {
  # At the study's scale (label_efficiency/dubai_*: half resolution, 6 pretext epochs of
  # 512 crops, 6 fine-tuning / 3 probe epochs of 256 crops, tile 6 scored at the end), one
  # change per row against the study's game (relative reward, 25 % of 16 px cells, 2
  # warm-up epochs, 2 rounds, instructor Adam 1e-3).
  spre() {  # NAME [overrides]
    local name=$1; shift
    wanted "$name" || return 0
    [ -f "$out/pretext/$name/metrics.json" ] && return 0
    "$PY" -m sssi.train +experiment=label_efficiency/dubai_pretrain mask_policy=instructor \
      "${common[@]}" "hydra.run.dir=$out/pretext/$name" "$@"
  }
  sscore() {  # PROTOCOL NAME INIT SEED [overrides]
    local protocol=$1 name=$2 init=$3 seed=$4; shift 4
    wanted "$name" || return 0
    local dir="$out/$protocol/$name/seed_$seed"
    [ -f "$dir/metrics.json" ] && return 0
    local start=("task.init=$init")
    [ "$init" = none ] && start=(task.init=null)
    "$PY" -m sssi.train "+experiment=label_efficiency/dubai_$protocol" "${common[@]}" \
      "${start[@]}" "seed=$seed" "hydra.run.dir=$dir" "$@"
  }
  both() {  # NAME INIT SEED [overrides]: the probe and full fine-tuning
    sscore probe "$@"
    sscore finetune "$@"
  }
  spre study_game
  both study_game "$out/pretext/study_game/checkpoints/last.ckpt" 0
  both study_scratch none 0
  # epochs per fraction: 3 fine-tuning epochs (the first study's) instead of 6
  sscore finetune study_game_ft3 "$out/pretext/study_game/checkpoints/last.ckpt" 0 \
    trainer.max_epochs=3 trainer.check_val_every_n_epoch=3
  sscore finetune study_scratch_ft3 none 0 trainer.max_epochs=3 \
    trainer.check_val_every_n_epoch=3
  # the paper's raw reward instead of the relative one
  spre study_game_raw mask_policy.instructor.reward=raw
  both study_game_raw "$out/pretext/study_game_raw/checkpoints/last.ckpt" 0
  # mask ratio 50 % (warm-up blocks and instructor cells alike: one knob)
  spre study_game_ratio50 mask_policy.random.ratio=0.5
  both study_game_ratio50 "$out/pretext/study_game_ratio50/checkpoints/last.ckpt" 0
  # 32 px cells (the instructor's encoder keeps its stem pool: 4 x 4 cells per crop)
  spre study_game_cell32 mask_policy.instructor.backbone.stem_pool=true \
    mask_policy.random.block_size=32
  both study_game_cell32 "$out/pretext/study_game_cell32/checkpoints/last.ckpt" 0
  # a longer warm-up: 4 epochs, then one round
  spre study_game_warmup4 task.schedule.warmup_epochs=4 task.schedule.rounds=1
  both study_game_warmup4 "$out/pretext/study_game_warmup4/checkpoints/last.ckpt" 0
  # the instructor's learning rate 1e-4 instead of 1e-3
  spre study_game_ilr1e-4 mask_policy.instructor.optimizer.lr=1.0e-4
  both study_game_ilr1e-4 "$out/pretext/study_game_ilr1e-4/checkpoints/last.ckpt" 0
}

[ "$rows" = study ] && { study_rows; exit 0; }
case "$rows" in full|all) ;; *) echo "error: rows '$rows': expected full, study or all" >&2
  exit 2;; esac

pretext blocks dubai_inpaint_blocks
pretext game_relative dubai_pretrain mask_policy.instructor.reward=relative
# the edge shortcut removed by construction: no edge cell may be erased (9 epochs)
pretext game_border1 dubai_pretrain mask_policy.instructor.network.border_cells=1 \
  trainer.max_epochs=9
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
[ "$rows" = all ] && study_rows
exit 0
