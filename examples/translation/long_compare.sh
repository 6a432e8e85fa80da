#!/usr/bin/env bash
# Long inputs, after compare_transformer.sh: every model of MODELS, for each seed of SEEDS, goes
# on training from its checkpoint on joins of 2 to 8 consecutive training pairs, all with the
# same schedule (long_finetune.sh: 1,200 updates, 30% joined pairs, lr 5e-4), and translates
# test2016 joined by 2, 4 and 8 sentences, whole and sentence by sentence (long_inputs.py).
# Prints one row per model, seed and factor, then the mean over the seeds.
#
# `resmlp_coverage` and `resmlp_locality` start from the `resmlp_relative` checkpoint of their
# seed unless they were trained themselves (compare_transformer.sh MODELS=...): coverage and
# locality are added with their weights at zero, so the ResMLP rows start from the same model.
#
# `resmlp_locality` decodes with a floor under its locality rates, reads from the start of the
# source and counts distances from each head's mean position (its model_args in demo_config.sh); it
# is also translated as `resmlp_locality_nofloor`, the same checkpoint decoded as trained: floor 0,
# no start, argmax focus (fairseq-generate --model-overrides), to show what they do.
#
# Settings: as compare_transformer.sh (PAIR, WORK=runs/compare-PAIR, THREADS, PRECISION),
# MODELS (default "resmlp_relative resmlp_coverage resmlp_locality transformer"), SEEDS (default "1 2"),
# LONG_FACTORS (default 2,4,8), and long_finetune.sh's LONG_UPDATES, LONG_JOINED_PAIRS,
# LONG_JOINED_MAX, LONG_LR, LONG_AVERAGE, LONG_SAVE_EVERY. A fine-tuning whose model.txt exists
# is not run again.
set -euo pipefail
here=$(dirname "$0")
export PAIR=${PAIR:-en-de}
WORK=${WORK:-runs/compare-$PAIR}
THREADS=${THREADS:-2}
MODELS=${MODELS:-resmlp_relative resmlp_coverage resmlp_locality transformer}
SEEDS=${SEEDS:-1 2}
source "$here/demo_config.sh"  # the models' arguments (model_args) and the precision
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

start_from() {  # MODEL SEED: the checkpoint a fine-tuning starts from
    local trained="$WORK/$1-s$2/model.txt"
    case $1 in resmlp_coverage | resmlp_locality)
        [ -s "$trained" ] || trained="$WORK/resmlp_relative-s$2/model.txt" ;; esac
    [ -s "$trained" ] || { echo "error: no trained $1 for seed $2 ($trained): run compare_transformer.sh first" >&2
                           return 2; }
    cat "$trained"
}

long_args=()
# the locality model's decoding-time settings, set back to how it trains
AS_TRAINED="'cross_attention_locality_floor': 0.0, 'cross_attention_locality_start': -1,"
AS_TRAINED+=" 'cross_attention_locality_focus': 'argmax'"
for seed in $SEEDS; do
    for model in $MODELS; do
        model_args "$model"
        out="$WORK/long-$model-s$seed"
        if [ ! -s "$out/model.txt" ]; then
            SEED=$seed "$here/long_finetune.sh" "$WORK/data" "$(start_from "$model" "$seed")" "$out" "${MODEL_ARGS[@]}"
        fi
        long_args+=(--model "$model-s$seed=$(cat "$out/model.txt")")
        if [ "$model" = resmlp_locality ]; then
            long_args+=(--model "${model}_nofloor-s$seed=$(cat "$out/model.txt")"
                        --overrides "${model}_nofloor-s$seed={'model': {$AS_TRAINED}}")
        fi
    done
done
echo "== long inputs: ${LONG_FACTORS:-2,4,8} consecutive test sentences as one input, after the fine-tuning"
python "$here/long_inputs.py" --data "$WORK/data" --pair "$PAIR" --factors "${LONG_FACTORS:-2,4,8}" \
    --work "$WORK/long-inputs-finetuned" "${long_args[@]}"
