#!/usr/bin/env bash
# Side by side on the same prepared Multi30k data and the same wall-clock budget, each with
# every seed of SEEDS: the demo's `resmlp_small` (3+3 layers, d 256, hidden 1024; relative token
# mixing with cross-attention coverage and locality), the same without them and with the
# paper's absolute token mixing, and fairseq's own `transformer` at the same size (3+3, d 256,
# FFN 1024, 4 heads, shared embeddings). All use the demo's batches (1,024 tokens), warm-up,
# dropout, label smoothing, checkpoint averaging, beam and scoring (train_eval.sh). The
# Transformer runs as fairseq builds it (post-norm) at lr 1e-3 (TRANSFORMER_LR), because the
# demo's 3e-3 is too high for post-norm; `transformer_prenorm` (pre-norm, as ResMLP's blocks
# are, at the demo's lr) can be added to MODELS (demo_config.sh, model_args).
# Prints one table: test2016 sacreBLEU (mean over seeds and each seed's), training tokens/s,
# updates, beam-4 sentences/s and parameters; then the long-input table (long_inputs.py) for
# the first seed's models.
#
# Settings: as demo.sh (PAIR, MULTI30K_DIR, MINUTES, MAX_UPDATE, WORK=runs/compare-PAIR, THREADS),
# MODELS (default "resmlp_locality resmlp_relative resmlp_absolute transformer"; also
# resmlp_coverage, transformer_prenorm), SEEDS (default "1 2"),
# LONG=0 to skip the long inputs (LONG_FACTORS, default 2,4,8), and PARALLEL=1 to train two
# models at a time with THREADS/2 threads each (less wall-clock time; every model still gets
# the same budget and the same share of the machine).
set -euo pipefail
here=$(dirname "$0")
export PAIR=${PAIR:-en-de} MINUTES=${MINUTES:-18}
WORK=${WORK:-runs/compare-$PAIR}
THREADS=${THREADS:-2}
MODELS=${MODELS:-resmlp_locality resmlp_relative resmlp_absolute transformer}
SEEDS=${SEEDS:-1 2}
source "$here/demo_config.sh"  # the demo's model and schedule

prep_args=(--pair "$PAIR" --out "$WORK/data")
[ -n "${MULTI30K_DIR:-}" ] && prep_args+=(--raw-dir "$MULTI30K_DIR")
OMP_NUM_THREADS=$THREADS resmlp-prep-multi30k "${prep_args[@]}"

threads=$THREADS
[ "${PARALLEL:-0}" = 1 ] && threads=$(( THREADS / 2 > 0 ? THREADS / 2 : 1 ))

run() {  # MODEL SEED: train, translate and score one model with one seed
    local model=$1 seed=$2
    model_args "$model" || return 2
    OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads LR=$MODEL_LR SEED=$seed \
        "$here/train_eval.sh" "$WORK/data" "$WORK/$model-s$seed" "${MODEL_ARGS[@]}" > "$WORK/$model-s$seed.out" 2>&1
    echo "== $model, seed $seed: $(grep -h '^BLEU' "$WORK/$model-s$seed.out")"
}

runs=()
for seed in $SEEDS; do for model in $MODELS; do runs+=("$model $seed"); done; done
echo "== ${#runs[@]} runs of $MINUTES minutes, $([ "${PARALLEL:-0}" = 1 ] && echo "two at a time, ")$threads thread(s) each (logs: $WORK/*.out)"
if [ "${PARALLEL:-0}" = 1 ]; then
    for ((i = 0; i < ${#runs[@]}; i += 2)); do
        run ${runs[i]} &
        first=$!
        [ $((i + 1)) -lt ${#runs[@]} ] && run ${runs[i + 1]}
        wait "$first"
    done
else
    for r in "${runs[@]}"; do run $r; done
fi

python "$here/compare_table.py" "$WORK" --models $MODELS --seeds $SEEDS
# validation loss against minutes and against updates, one line per run, test2016 BLEU in the legend
runs_dirs=()
for seed in $SEEDS; do for model in $MODELS; do runs_dirs+=("$WORK/$model-s$seed"); done; done
resmlp-plot-curves "${runs_dirs[@]}" --output "$WORK/comparison.png" --title "Multi30k $PAIR"

if [ "${LONG:-1}" = 1 ]; then
    first_seed=${SEEDS%% *}
    long_args=()
    for model in $MODELS; do long_args+=(--model "$model=$(cat "$WORK/$model-s$first_seed/model.txt")"); done
    echo "== long inputs: ${LONG_FACTORS:-2,4,8} consecutive test sentences as one input (seed $first_seed's models)"
    OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS python "$here/long_inputs.py" --data "$WORK/data" --pair "$PAIR" \
        --factors "${LONG_FACTORS:-2,4,8}" --work "$WORK/long-inputs" "${long_args[@]}"
fi
