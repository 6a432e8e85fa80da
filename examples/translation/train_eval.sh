#!/usr/bin/env bash
# Train one model on a prepared Multi30k directory for a bounded wall-clock time, then
# translate test2016 with beam 4 and score it with sacreBLEU on detokenized text.
#
#   train_eval.sh DATA OUT MODEL_ARGS...
#
# DATA is resmlp-prep-multi30k's output (data-bin/, test.raw.*); OUT receives train.log,
# checkpoints/, generate-test.txt and bleu.txt. Settings (environment): PAIR, MINUTES,
# MAX_UPDATE (0: no limit), LR, WARMUP, MAX_TOKENS, as in demo.sh.
set -euo pipefail
DATA=$1 OUT=$2
shift 2
PAIR=${PAIR:-en-de}
SRC=${PAIR%-*} TGT=${PAIR#*-}
MINUTES=${MINUTES:-18}
USER_DIR=$(cd "$(dirname "$0")/../.." && pwd)/resmlp_mt
mkdir -p "$OUT"

echo "== training for at most $MINUTES minutes: $* (log: $OUT/train.log)"
start=$(date +%s)
fairseq-train "$DATA/data-bin" --user-dir "$USER_DIR" \
    --task translation --source-lang "$SRC" --target-lang "$TGT" "$@" \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr "${LR:-1.5e-3}" \
    --lr-scheduler inverse_sqrt --warmup-updates "${WARMUP:-300}" --warmup-init-lr 1e-7 --weight-decay 0.0001 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --max-tokens "${MAX_TOKENS:-4096}" --max-update "${MAX_UPDATE:-0}" \
    --stop-time-hours "$(python -c "print(${MINUTES} / 60)")" \
    --save-dir "$OUT/checkpoints" --no-epoch-checkpoints --seed 1 --cpu \
    --log-format simple --log-interval 25 2>&1 | tee "$OUT/train.log" \
    | grep --line-buffered -E "train_inner|valid on|done training|Error|error"
echo "   trained in $(( $(date +%s) - start )) s"

echo "== translating test2016 with beam 4"
fairseq-generate "$DATA/data-bin" --user-dir "$USER_DIR" --source-lang "$SRC" --target-lang "$TGT" \
    --path "$OUT/checkpoints/checkpoint_best.pt" --gen-subset test --beam 4 --batch-size 128 \
    --post-process sentencepiece --cpu > "$OUT/generate-test.txt" 2> "$OUT/generate-test.log"
grep -ho "Translated .*" "$OUT/generate-test.log" || true
resmlp-score "$OUT/generate-test.txt" --ref "$DATA/test.raw.$TGT" --src "$DATA/test.raw.$SRC" --examples 5 \
    | tee "$OUT/bleu.txt"
