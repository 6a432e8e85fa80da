#!/usr/bin/env bash
# Side by side on the same prepared Multi30k data and the same wall-clock budget:
# fairseq's own `transformer` at the demo's size (3+3 layers, d 256, FFN 1024, 4 heads,
# shared embeddings) against `resmlp_small` (3+3, d 256, hidden 1024). Same optimiser,
# schedule, batch size, beam and scoring (train_eval.sh). Prints BLEU, training
# tokens/s and parameter counts in one table.
#
# Settings: as demo.sh (PAIR, MULTI30K_DIR, MINUTES, MAX_UPDATE, WORK=runs/compare-PAIR, THREADS),
# and PARALLEL=1 to train both at once with THREADS/2 threads each (half the wall-clock
# time; both still get the same budget and the same share of the machine).
set -euo pipefail
here=$(dirname "$0")
export PAIR=${PAIR:-en-de}
WORK=${WORK:-runs/compare-$PAIR}
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}

prep_args=(--pair "$PAIR" --out "$WORK/data")
[ -n "${MULTI30K_DIR:-}" ] && prep_args+=(--raw-dir "$MULTI30K_DIR")
resmlp-prep-multi30k "${prep_args[@]}"

source "$here/demo_config.sh"  # the demo's schedule, for both models
common=(--share-all-embeddings --encoder-layers 3 --decoder-layers 3 --dropout 0.1)
transformer=("$here/train_eval.sh" "$WORK/data" "$WORK/transformer" --arch transformer "${common[@]}"
    --encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024
    --encoder-attention-heads 4 --decoder-attention-heads 4)
resmlp=("$here/train_eval.sh" "$WORK/data" "$WORK/resmlp_small" "${DEMO_MODEL_ARGS[@]}")
if [ "${PARALLEL:-0}" = 1 ]; then
    half=$(( ${THREADS:-2} / 2 > 0 ? ${THREADS:-2} / 2 : 1 ))
    echo "== training both at once, $half thread(s) each"
    OMP_NUM_THREADS=$half MKL_NUM_THREADS=$half "${transformer[@]}" > "$WORK/transformer.out" 2>&1 &
    first=$!
    OMP_NUM_THREADS=$half MKL_NUM_THREADS=$half "${resmlp[@]}" > "$WORK/resmlp_small.out" 2>&1 &
    wait "$first" && wait $!
    tail -n 3 "$WORK/transformer.out" "$WORK/resmlp_small.out"
else
    "${transformer[@]}"
    "${resmlp[@]}"
fi

python - "$WORK" <<'PY'
import re, sys
work = sys.argv[1]
print(f"\n{'model':<14} {'BLEU':>6} {'train tok/s':>12} {'updates':>8} {'params':>12}")
for name in ("transformer", "resmlp_small"):
    log = open(f"{work}/{name}/train.log").read()
    bleu = re.search(r"^BLEU = ([\d.]+)", open(f"{work}/{name}/bleu.txt").read(), re.M).group(1)
    params = int(re.search(r"num\. shared model params: ([\d,]+)", log).group(1).replace(",", ""))
    wps = [float(x) for x in re.findall(r"\| train \| epoch .*?\| wps ([\d.]+)", log)]
    updates = re.findall(r"num_updates[ =](\d+)", log)[-1]
    print(f"{name:<14} {bleu:>6} {sum(wps) / max(len(wps), 1):>12.0f} {updates:>8} {params:>12,}")
PY
