#!/usr/bin/env bash
# make demo-dino: DINO self-supervised training of a small ResMLP (resmlp_dino_tiny_28) on
# Fashion-MNIST without its labels, on this CPU, then what its features are worth:
#   - weighted kNN (k 20, T 0.07) of the teacher's trunk, of the same network at random
#     initialisation and of the raw pixels;
#   - a linear probe (fairseq-train --freeze-trunk --new-head) on the DINO trunk and on the
#     random one, scored with fairseq-validate on the 10,000 test images;
#   - the learned token-mixing matrices beside a supervised model's (trained here as well).
#
# Settings (environment):
#   FASHION_MNIST=DIR   the idx files (default: Debian's, in /usr/share/datasets/fashion-mnist)
#   DINO_UPDATES=2000   DINO updates (batches of 64 images, two 28x28 views each)
#   PROBE_UPDATES=940   linear-probe updates (batches of 128: two epochs)
#   SUPERVISED_UPDATES=938  updates of the supervised model drawn beside it (2 epochs)
#   WORK=runs/demo-dino  checkpoints, logs and pictures
#   THREADS=2           torch threads
set -euo pipefail
DATA=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
DINO_UPDATES=${DINO_UPDATES:-2000}
PROBE_UPDATES=${PROBE_UPDATES:-940}
SUPERVISED_UPDATES=${SUPERVISED_UPDATES:-938}
WORK=${WORK:-runs/demo-dino}
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
USER_DIR=$(cd "$(dirname "$0")/../.." && pwd)/resmlp_mt
RECIPE=$(cd "$(dirname "$0")" && pwd)/dino_recipe.sh
if [ ! -e "$DATA/train-images-idx3-ubyte.gz" ] && [ ! -e "$DATA/train-images-idx3-ubyte" ]; then
    echo "error: no Fashion-MNIST in $DATA: apt-get install dataset-fashion-mnist, or set FASHION_MNIST" >&2
    exit 2
fi
mkdir -p "$WORK"
start=$(date +%s)
# shellcheck source=dino_recipe.sh
source "$RECIPE"  # DINO_FLAGS: the recipe the make-test check uses as well
show() { grep --line-buffered -E "$1|done training|Error|error:" || true; }

echo "== DINO: resmlp_dino_tiny_28, $DINO_UPDATES updates, no labels (log: $WORK/dino.log)"
fairseq-train "$DATA" --user-dir "$USER_DIR" --dataset fashion-mnist "${DINO_FLAGS[@]}" \
    --max-update "$DINO_UPDATES" --num-workers 1 --disable-validation --seed 1 --cpu \
    --save-dir "$WORK/dino" --no-epoch-checkpoints --log-format simple --log-interval 100 \
    2>&1 | tee "$WORK/dino.log" | show train_inner
dino_time=$(( $(date +%s) - start ))

knn() { resmlp-knn "$DATA" --dataset fashion-mnist "$@" 2>> "$WORK/knn.log" | tee -a "$WORK/knn.txt"; }
echo "== kNN on the test images (memory bank: the 60,000 training images)"
rm -f "$WORK/knn.txt"
knn --path "$WORK/dino/checkpoint_last.pt"
knn --random-init --arch resmlp_tiny_28 --seed 1
knn --raw-pixels

probe() {  # probe NAME [flags]: a linear classifier on a frozen trunk, then its test top-1
    local name=$1; shift
    fairseq-train "$DATA" --user-dir "$USER_DIR" --task image_classification --dataset fashion-mnist \
        --arch resmlp_tiny_28 --freeze-trunk --new-head --no-augment "$@" \
        --criterion image_cross_entropy --optimizer timm_lamb --lr 1e-2 --weight-decay 0 \
        --lr-scheduler cosine --warmup-updates 20 --max-update "$PROBE_UPDATES" --batch-size 128 \
        --num-workers 1 --disable-validation --seed 1 --cpu --save-dir "$WORK/probe-$name" --no-epoch-checkpoints \
        --log-format simple --log-interval 200 > "$WORK/probe-$name.log" 2>&1
    fairseq-validate "$DATA" --user-dir "$USER_DIR" --task image_classification --dataset fashion-mnist \
        --path "$WORK/probe-$name/checkpoint_last.pt" --valid-subset test --batch-size 500 --cpu 2>&1 \
        | tee "$WORK/probe-$name-test.log" | grep -o "accuracy [0-9.]*" | tail -1 | cut -d' ' -f2
}
echo "== linear probes, $PROBE_UPDATES updates each (frozen trunk, new classifier)"
probe_dino=$(probe dino --finetune-from-model "$WORK/dino/checkpoint_last.pt")
probe_random=$(probe random)
echo "linear probe top-1: DINO trunk ${probe_dino}%, random trunk ${probe_random}%"

echo "== a supervised resmlp_tiny_28, $SUPERVISED_UPDATES updates, for the pictures (log: $WORK/supervised.log)"
fairseq-train "$DATA" --user-dir "$USER_DIR" --task image_classification --dataset fashion-mnist \
    --arch resmlp_tiny_28 --no-augment --criterion image_cross_entropy --optimizer timm_lamb --lr 1.5e-2 \
    --weight-decay 0.05 --lr-scheduler cosine --warmup-updates 50 --max-update "$SUPERVISED_UPDATES" \
    --batch-size 128 --num-workers 1 --disable-validation --seed 1 --cpu --save-dir "$WORK/supervised" \
    --no-epoch-checkpoints --log-format simple --log-interval 500 > "$WORK/supervised.log" 2>&1

echo "== token-mixing matrices, DINO beside supervised ($WORK/mixing)"
resmlp-show-mixing "$WORK/dino/checkpoint_last.pt" "$WORK/mixing" --layers 0 1 2 3 \
    --beside "$WORK/supervised/checkpoint_last.pt" --names "DINO (teacher)" supervised 2> "$WORK/mixing.log"

echo "== summary (DINO ${dino_time} s of training, $(( $(date +%s) - start )) s in all)"
grep -o "top-1 [0-9.]*%.*" "$WORK/knn.txt" | sed 's/^/kNN /'
echo "linear probe top-1: DINO trunk ${probe_dino}%, random trunk ${probe_random}%"
