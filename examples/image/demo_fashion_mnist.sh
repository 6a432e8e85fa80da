#!/usr/bin/env bash
# make demo-image: a small ResMLP (resmlp_tiny_28) trained on Fashion-MNIST on this CPU ->
# top-1 on the 10,000 test images with fairseq-validate -> pictures of its token-mixing matrices.
#
# Settings (environment):
#   FASHION_MNIST=DIR   the idx files, gzipped or not (default: Debian's, apt-get install
#                       dataset-fashion-mnist, in /usr/share/datasets/fashion-mnist)
#   EPOCHS=10           epochs; the cosine schedule spans all of them
#   MINUTES=17          training wall-clock cap, in minutes
#   WORK=runs/demo-image  where checkpoints, logs (TensorBoard's in tensorboard/) and pictures go
#   THREADS=2           torch threads
set -euo pipefail
DATA=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
EPOCHS=${EPOCHS:-10}
MINUTES=${MINUTES:-17}
WORK=${WORK:-runs/demo-image}
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
USER_DIR=$(cd "$(dirname "$0")/../.." && pwd)/resmlp_mt
if [ ! -e "$DATA/train-images-idx3-ubyte.gz" ] && [ ! -e "$DATA/train-images-idx3-ubyte" ]; then
    echo "error: no Fashion-MNIST in $DATA: apt-get install dataset-fashion-mnist, or set FASHION_MNIST" >&2
    exit 2
fi
mkdir -p "$WORK"
start=$(date +%s)

echo "== training resmlp_tiny_28 for $EPOCHS epochs, at most $MINUTES minutes (log: $WORK/train.log)"
# The per-epoch validation lines are on the test images, for progress only: the number
# reported below is the last checkpoint's, not the best epoch's.
fairseq-train "$DATA" --user-dir "$USER_DIR" --task image_classification --dataset fashion-mnist \
    --arch resmlp_tiny_28 --no-augment \
    --criterion image_cross_entropy --optimizer timm_lamb --lr 1.5e-2 --weight-decay 0.05 \
    --lr-scheduler cosine --warmup-updates 50 --max-update $((EPOCHS * 469)) --max-epoch "$EPOCHS" \
    --stop-time-hours "$(python -c "print(${MINUTES} / 60)")" \
    --batch-size 128 --num-workers 1 --valid-subset test --tensorboard-logdir "$WORK/tensorboard" \
    --save-dir "$WORK/checkpoints" --no-epoch-checkpoints --seed 1 --cpu \
    --log-format simple --log-interval 100 2>&1 | tee "$WORK/train.log" \
    | grep --line-buffered -E "train_inner|valid on|done training|Error|error"
trained=$(( $(date +%s) - start ))

echo "== top-1 on the 10,000 test images (fairseq-validate, checkpoint_last.pt)"
fairseq-validate "$DATA" --user-dir "$USER_DIR" --task image_classification \
    --path "$WORK/checkpoints/checkpoint_last.pt" --valid-subset test --batch-size 256 --cpu \
    2>&1 | tee "$WORK/test.log" | grep "valid on"

echo "== token-mixing pictures"
resmlp-show-mixing "$WORK/checkpoints/checkpoint_last.pt" "$WORK/mixing" --layers 0 1 2 3 2> "$WORK/mixing.log"

accuracy=$(grep -o "accuracy [0-9.]*" "$WORK/test.log" | tail -1 | cut -d' ' -f2)
echo "== Fashion-MNIST test top-1: ${accuracy}%  (training ${trained} s, total $(( $(date +%s) - start )) s)"
