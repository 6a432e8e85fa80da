#!/usr/bin/env bash
# Train one model on a prepared Multi30k directory for a bounded wall-clock time, then
# translate test2016 with beam 4 and score it with sacreBLEU on detokenized text.
#
#   train_eval.sh DATA OUT MODEL_ARGS...
#
# DATA is resmlp-prep-multi30k's output (data-bin/, test.raw.*); OUT receives train.log,
# checkpoints/, tensorboard/ (--tensorboard-logdir), generate-test.txt, bleu.txt and model.txt
# (the checkpoint scored). Settings (environment): PAIR, MINUTES, MAX_UPDATE (0: no limit), LR,
# WARMUP, MAX_TOKENS, SEED (default 1), as in demo.sh; JOINED_PAIRS=F (default 0) adds F x the
# training set as pairs of consecutive training pairs joined into one (--task translation_joined);
# PRECISION=bf16 trains with --bf16 (on the CPU: bf16 autocast, fp32 weights; default fp32);
# AVERAGE=N (default 0) saves a checkpoint
# every SAVE_EVERY (default 100) updates and translates with the average of the last N-1 of
# them and the final one (resmlp-average-checkpoints).
set -euo pipefail
DATA=$1 OUT=$2
shift 2
PAIR=${PAIR:-en-de}
SRC=${PAIR%-*} TGT=${PAIR#*-}
MINUTES=${MINUTES:-18}
USER_DIR=$(cd "$(dirname "$0")/../.." && pwd)/resmlp_mt
mkdir -p "$OUT"
if [ -e "$OUT/checkpoints/checkpoint_last.pt" ]; then
    # fairseq would resume from it, and the time budget would no longer mean what it says
    old="$OUT/checkpoints.$(date +%Y%m%d-%H%M%S)"
    echo "== $OUT/checkpoints holds an earlier run: moved to $old"
    mv "$OUT/checkpoints" "$old"
fi
if [ -d "$OUT/tensorboard" ]; then  # so that this run's curves start on their own
    old="$OUT/tensorboard.$(date +%Y%m%d-%H%M%S)"
    echo "== $OUT/tensorboard holds an earlier run's logs: moved to $old"
    mv "$OUT/tensorboard" "$old"
fi

source "$(dirname "$0")/recipe_lib.sh"
AVERAGE=${AVERAGE:-0}
averaging_args "$AVERAGE" "${SAVE_EVERY:-100}"

task_args=(--task translation)
[ "${JOINED_PAIRS:-0}" != 0 ] && task_args=(--task translation_joined --joined-pairs "$JOINED_PAIRS")

precision_args "${PRECISION:-fp32}"

echo "== training for at most $MINUTES minutes: ${task_args[*]} ${PRECISION_ARGS[*]} $* (log: $OUT/train.log)"
start=$(date +%s)
fairseq-train "$DATA/data-bin" --user-dir "$USER_DIR" \
    "${task_args[@]}" "${PRECISION_ARGS[@]}" --source-lang "$SRC" --target-lang "$TGT" "$@" \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr "${LR:-1.5e-3}" \
    --lr-scheduler inverse_sqrt --warmup-updates "${WARMUP:-300}" --warmup-init-lr 1e-7 --weight-decay 0.0001 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --max-tokens "${MAX_TOKENS:-4096}" --max-update "${MAX_UPDATE:-0}" \
    --stop-time-hours "$(python -c "print(${MINUTES} / 60)")" \
    --save-dir "$OUT/checkpoints" --no-epoch-checkpoints "${AVERAGING_ARGS[@]}" --seed "${SEED:-1}" --cpu --tensorboard-logdir "$OUT/tensorboard" \
    --log-format simple --log-interval 25 2>&1 | tee "$OUT/train.log" \
    | grep --line-buffered -E "train_inner|valid on|done training|Error|error"
echo "   trained in $(( $(date +%s) - start )) s"

model="$OUT/checkpoints/checkpoint_best.pt"
if [ "$AVERAGE" -gt 1 ]; then
    model="$OUT/checkpoints/checkpoint_avg.pt"
    average_last "$OUT/checkpoints" "$AVERAGE" "$model"
fi

echo "$model" > "$OUT/model.txt"  # the checkpoint that was scored, for later evaluations
echo "== translating test2016 with beam 4 (${model##*/})"
fairseq-generate "$DATA/data-bin" --user-dir "$USER_DIR" --source-lang "$SRC" --target-lang "$TGT" \
    --path "$model" --gen-subset test --beam 4 --batch-size 128 \
    --post-process sentencepiece --cpu > "$OUT/generate-test.txt" 2> "$OUT/generate-test.log"
grep -ho "Translated .*" "$OUT/generate-test.log" || true
resmlp-score "$OUT/generate-test.txt" --ref "$DATA/test.raw.$TGT" --src "$DATA/test.raw.$SRC" --examples 5 \
    | tee "$OUT/bleu.txt"
