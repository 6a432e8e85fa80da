#!/usr/bin/env bash
# make demo: Multi30k -> joint sentencepiece -> ResMLP (resmlp_small) trained for a bounded
# time on this machine -> fairseq-generate --beam 4 on test2016 -> sacreBLEU on detokenized text.
#
# Settings (environment):
#   PAIR=en-de|en-fr       language pair (default en-de)
#   MULTI30K_DIR=DIR       raw Multi30k files (train/val/test_2016_flickr, .gz or plain);
#                          unset: downloaded from github.com/multi30k/dataset when the network allows
#   MINUTES=18             training wall-clock budget, in minutes
#   MAX_UPDATE=0           stop after this many updates instead (0: no limit; used by the tests)
#   WORK=runs/demo-PAIR    where data, checkpoints and outputs go
#   THREADS=2              torch threads
set -euo pipefail
cd "$(dirname "$0")/../.."

PAIR=${PAIR:-en-de}
SRC=${PAIR%-*}
TGT=${PAIR#*-}
MINUTES=${MINUTES:-18}
MAX_UPDATE=${MAX_UPDATE:-0}
WORK=${WORK:-runs/demo-$PAIR}
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
DATA=$WORK/data
CKPT=$WORK/checkpoints
mkdir -p "$WORK"

echo "== 1/3 data: Multi30k $PAIR -> $DATA"
prep_args=(--pair "$PAIR" --out "$DATA")
[ -n "${MULTI30K_DIR:-}" ] && prep_args+=(--raw-dir "$MULTI30K_DIR")
resmlp-prep-multi30k "${prep_args[@]}"

echo "== 2/3 training resmlp_small for at most $MINUTES minutes (log: $WORK/train.log)"
start=$(date +%s)
fairseq-train "$DATA/data-bin" --user-dir resmlp_mt \
    --task translation --source-lang "$SRC" --target-lang "$TGT" \
    --arch resmlp_small --share-all-embeddings \
    --encoder-layers 3 --decoder-layers 3 --dropout 0.1 \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1.5e-3 \
    --lr-scheduler inverse_sqrt --warmup-updates 300 --warmup-init-lr 1e-7 --weight-decay 0.0001 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --max-tokens 4096 --stop-time-hours "$(python -c "print($MINUTES / 60)")" --max-update "$MAX_UPDATE" \
    --save-dir "$CKPT" --no-epoch-checkpoints --seed 1 --cpu \
    --log-format simple --log-interval 25 2>&1 | tee "$WORK/train.log" | grep --line-buffered -E "train_inner|valid on|done training"
echo "   trained in $(( $(date +%s) - start )) s"

echo "== 3/3 translating test2016 with beam 4"
fairseq-generate "$DATA/data-bin" --user-dir resmlp_mt --source-lang "$SRC" --target-lang "$TGT" \
    --path "$CKPT/checkpoint_best.pt" --gen-subset test --beam 4 --batch-size 128 \
    --post-process sentencepiece --cpu > "$WORK/generate-test.txt"
grep -h "Translated" "$WORK/generate-test.txt" || true
resmlp-score "$WORK/generate-test.txt" --ref "$DATA/test.raw.$TGT" --src "$DATA/test.raw.$SRC" --examples 5 \
    | tee "$WORK/bleu.txt"
