# Shell functions shared by train_eval.sh and long_finetune.sh (sourced, not run), so that a
# training from scratch and a fine-tuning choose their precision and average their checkpoints
# the same way.

# precision_args PRECISION: sets PRECISION_ARGS, fairseq-train's arguments for fp32 (none) or
# bf16 (--bf16: on the CPU, bf16 autocast with fp32 weights, README "bf16 training").
precision_args() {
    case "$1" in
        fp32) PRECISION_ARGS=() ;;
        bf16) PRECISION_ARGS=(--bf16) ;;
        *) echo "PRECISION must be fp32 or bf16, not '$1'" >&2; return 2 ;;
    esac
}

# averaging_args N EVERY: sets AVERAGING_ARGS, fairseq-train's arguments that keep what
# average_last needs: a checkpoint every EVERY updates, the newest N of them (none for N <= 1).
averaging_args() {
    AVERAGING_ARGS=()
    if [ "$1" -gt 1 ]; then AVERAGING_ARGS=(--save-interval-updates "$2" --keep-interval-updates "$1"); fi
}

# average_last DIR N OUTPUT: OUTPUT becomes the average of DIR/checkpoint_last.pt and the N-1
# newest interval checkpoints (checkpoint_EPOCH_UPDATE.pt) before it. When training stopped right
# at an interval, checkpoint_last.pt is a copy of the newest one, which is then not counted twice.
average_last() {
    local dir=$1 n=$2 output=$3 recent
    mapfile -t recent < <(for f in $(ls -t "$dir"/checkpoint_*_*.pt); do
        cmp -s "$f" "$dir/checkpoint_last.pt" || echo "$f"; done | head -n $((n - 1)))
    echo "== averaging checkpoint_last.pt and ${recent[*]##*/}"
    resmlp-average-checkpoints --inputs "$dir/checkpoint_last.pt" "${recent[@]}" --output "$output"
}
