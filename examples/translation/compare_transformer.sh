#!/usr/bin/env bash
# Side by side on the same prepared Multi30k data and the same wall-clock budget:
# fairseq's own `transformer` at the demo's size (3+3 layers, d 256, FFN 1024, 4 heads,
# shared embeddings) against the demo's `resmlp_small` (3+3, d 256, hidden 1024). All use
# the demo's batches (1,024 tokens), warm-up, checkpoint averaging, beam and scoring
# (train_eval.sh). The Transformer runs twice: as fairseq builds it (post-norm), at
# lr 1e-3 (TRANSFORMER_LR) because the demo's 3e-3 is too high for post-norm; and
# pre-norm (--encoder/decoder-normalize-before, as ResMLP's blocks are) at the demo's lr.
# Prints BLEU, training tokens/s, updates, beam-4 sentences/s and parameter counts in one table.
#
# Settings: as demo.sh (PAIR, MULTI30K_DIR, MINUTES, MAX_UPDATE, WORK=runs/compare-PAIR, THREADS),
# and PARALLEL=1 to train two models at a time with THREADS/2 threads each (less wall-clock
# time; every model still gets the same budget and the same share of the machine).
set -euo pipefail
here=$(dirname "$0")
export PAIR=${PAIR:-en-de}
WORK=${WORK:-runs/compare-$PAIR}
THREADS=${THREADS:-2}
source "$here/demo_config.sh"  # the demo's model and schedule

prep_args=(--pair "$PAIR" --out "$WORK/data")
[ -n "${MULTI30K_DIR:-}" ] && prep_args+=(--raw-dir "$MULTI30K_DIR")
OMP_NUM_THREADS=$THREADS resmlp-prep-multi30k "${prep_args[@]}"

transformer=(--arch transformer --share-all-embeddings --encoder-layers 3 --decoder-layers 3 --dropout 0.1
    --encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024
    --encoder-attention-heads 4 --decoder-attention-heads 4)
threads=$THREADS
[ "${PARALLEL:-0}" = 1 ] && threads=$(( THREADS / 2 > 0 ? THREADS / 2 : 1 ))

run() {  # NAME LR MODEL_ARGS...
    local name=$1 lr=$2
    shift 2
    OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads LR=$lr \
        "$here/train_eval.sh" "$WORK/data" "$WORK/$name" "$@" > "$WORK/$name.out" 2>&1
    echo "== $name: $(grep -h '^BLEU' "$WORK/$name.out")"
}
models=(resmlp_small transformer transformer_prenorm)
if [ "${PARALLEL:-0}" = 1 ]; then
    echo "== training two models at a time, $threads thread(s) each (logs: $WORK/*.out)"
    run resmlp_small "$LR" "${DEMO_MODEL_ARGS[@]}" &
    first=$!
    run transformer "${TRANSFORMER_LR:-1e-3}" "${transformer[@]}" &
    wait "$first" && wait $!
    run transformer_prenorm "$LR" "${transformer[@]}" --encoder-normalize-before --decoder-normalize-before
else
    echo "== training one model at a time, $threads thread(s) (logs: $WORK/*.out)"
    run resmlp_small "$LR" "${DEMO_MODEL_ARGS[@]}"
    run transformer "${TRANSFORMER_LR:-1e-3}" "${transformer[@]}"
    run transformer_prenorm "$LR" "${transformer[@]}" --encoder-normalize-before --decoder-normalize-before
fi

python - "$WORK" "${models[@]}" <<'PY'
import re, sys
work, names = sys.argv[1], sys.argv[2:]
print(f"\n{'model':<20} {'BLEU':>6} {'train tok/s':>12} {'updates':>8} {'gen sent/s':>11} {'params':>12}")
for name in names:
    log = open(f"{work}/{name}/train.log").read()
    bleu = re.search(r"^BLEU = ([\d.]+)", open(f"{work}/{name}/bleu.txt").read(), re.M).group(1)
    params = int(re.search(r"num\. shared model params: ([\d,]+)", log).group(1).replace(",", ""))
    # each epoch's wps, weighted by its training time (the last epoch is usually a short one)
    epochs = [(float(w), float(t)) for w, t in
              re.findall(r"\| train \| epoch .*?\| wps ([\d.]+) .*?\| train_wall ([\d.]+)", log)]
    wps = sum(w * t for w, t in epochs) / max(sum(t for _, t in epochs), 1e-9)
    updates = re.findall(r"num_updates[ =](\d+)", log)[-1]
    gen = re.search(r"\(([\d.]+) sentences/s", open(f"{work}/{name}/generate-test.log").read()).group(1)
    print(f"{name:<20} {bleu:>6} {wps:>12.0f} {updates:>8} {float(gen):>11.1f} {params:>12,}")
PY
# validation loss against minutes and against updates, one line per model, test2016 BLEU in the legend
resmlp-plot-curves "${models[@]/#/$WORK/}" --output "$WORK/comparison.png" --title "Multi30k $PAIR"
