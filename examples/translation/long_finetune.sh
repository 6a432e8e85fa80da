#!/usr/bin/env bash
# Go on training a trained model on joins of several consecutive training pairs, so that it
# learns to translate inputs of many sentences (README, "Long inputs").
#
#   long_finetune.sh DATA CHECKPOINT OUT MODEL_ARGS...
#
# DATA is resmlp-prep-multi30k's output; CHECKPOINT the model to start from (train_eval.sh's
# model.txt names it); MODEL_ARGS the model's own arguments (those it was trained with; a new
# option such as --cross-attention-coverage may be added: its weights start at zero). OUT
# receives train.log, checkpoints/ and model.txt (the checkpoint to translate with: the final one,
# or with LONG_AVERAGE an average).
# Settings (environment; named apart from train_eval.sh's, which demo_config.sh exports):
# LONG_UPDATES (default 1200), LONG_LR (default 5e-4, constant), LONG_JOINED_PAIRS (default 0.3:
# 30% more pairs), LONG_JOINED_MAX (default 8: each join has 2 to 8 pairs), MAX_TOKENS (default
# 1024), SEED (default 1), PRECISION (fp32|bf16, default fp32), PAIR (default en-de),
# LONG_AVERAGE=N (default 0): model.txt names the average of the final checkpoint and the N-1
# saved before it, one every LONG_SAVE_EVERY updates (default 200), as train_eval.sh's AVERAGE.
set -euo pipefail
DATA=$1 CHECKPOINT=$2 OUT=$3
shift 3
PAIR=${PAIR:-en-de}
USER_DIR=$(cd "$(dirname "$0")/../.." && pwd)/resmlp_mt
source "$(dirname "$0")/recipe_lib.sh"
[ -f "$CHECKPOINT" ] || { echo "error: no checkpoint at $CHECKPOINT" >&2; exit 2; }
precision_args "${PRECISION:-fp32}"
updates=${LONG_UPDATES:-1200} joined_max=${LONG_JOINED_MAX:-8}
average=${LONG_AVERAGE:-0} save_every=${LONG_SAVE_EVERY:-200}
[ "$save_every" -ge 1 ] || { echo "error: LONG_SAVE_EVERY must be 1 or more updates, not $save_every" >&2; exit 2; }
before_final=$(( (updates - 1) / save_every ))  # interval checkpoints saved before the final update
if [ "$average" -gt 1 ] && [ "$before_final" -lt $((average - 1)) ]; then
    echo "error: LONG_AVERAGE=$average needs $((average - 1)) checkpoints before the final one, but" \
         "LONG_UPDATES=$updates saves $before_final (one every LONG_SAVE_EVERY=$save_every updates)" >&2
    exit 2
fi
averaging_args "$average" "$save_every"
mkdir -p "$OUT"
echo "== $updates updates on joins of 2 to $joined_max pairs from $CHECKPOINT (log: $OUT/train.log)"
fairseq-train "$DATA/data-bin" --user-dir "$USER_DIR" --source-lang "${PAIR%-*}" --target-lang "${PAIR#*-}" \
    --task translation_joined --joined-pairs "${LONG_JOINED_PAIRS:-0.3}" --joined-max-sentences "$joined_max" \
    "${PRECISION_ARGS[@]}" "$@" \
    --restore-file "$CHECKPOINT" --reset-optimizer --reset-lr-scheduler --reset-dataloader --reset-meters \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr "${LONG_LR:-5e-4}" --lr-scheduler fixed --weight-decay 0.0001 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens "${MAX_TOKENS:-1024}" \
    --max-update "$updates" --save-dir "$OUT/checkpoints" --no-epoch-checkpoints "${AVERAGING_ARGS[@]}" --seed "${SEED:-1}" \
    --cpu --log-format simple --log-interval 50 2>&1 | tee "$OUT/train.log" \
    | grep --line-buffered -E "train_inner|valid on|done training|Error|error"
model="$OUT/checkpoints/checkpoint_last.pt"
if [ "$average" -gt 1 ]; then
    model="$OUT/checkpoints/checkpoint_avg.pt"
    average_last "$OUT/checkpoints" "$average" "$model"
fi
echo "$model" > "$OUT/model.txt"
