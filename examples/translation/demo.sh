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
#   LR, WARMUP, MAX_TOKENS, AVERAGE, SAVE_EVERY   the schedule (defaults: demo_config.sh)
#   TOKEN_MIXING=relative|absolute, COVERAGE=1|0, LOCALITY=1|0   the model (default: relative
#                          mixing with cross-attention coverage and locality; demo_config.sh)
#   WORK=runs/demo-PAIR    where data, checkpoints and outputs go
#   THREADS=2              torch threads
set -euo pipefail
here=$(dirname "$0")
export PAIR=${PAIR:-en-de}
WORK=${WORK:-runs/demo-$PAIR}
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}

echo "== data: Multi30k $PAIR -> $WORK/data"
prep_args=(--pair "$PAIR" --out "$WORK/data")
[ -n "${MULTI30K_DIR:-}" ] && prep_args+=(--raw-dir "$MULTI30K_DIR")
resmlp-prep-multi30k "${prep_args[@]}"

source "$here/demo_config.sh"
"$here/train_eval.sh" "$WORK/data" "$WORK/resmlp_small" "${DEMO_MODEL_ARGS[@]}"

# Translate with the model just trained: the hub's one line and fairseq-interactive.
model=$(cat "$WORK/resmlp_small/model.txt")
SRC=${PAIR%-*} TGT=${PAIR#*-}
cat <<TRY
== translate with this model (README, "From Python and with fairseq-interactive"):
python -c "from resmlp_mt.models.resmlp_translation import ResMLPModel as M; print(M.from_pretrained('$(dirname "$model")', checkpoint_file='$(basename "$model")', data_name_or_path='$(realpath "$WORK/data/data-bin")', bpe='sentencepiece', sentencepiece_model='$(realpath "$WORK/data/spm.model")', source_lang='$SRC', target_lang='$TGT').translate('A man is riding a bike.', beam=4))"
echo "A man is riding a bike." | fairseq-interactive $WORK/data/data-bin --user-dir resmlp_mt --path $model --source-lang $SRC --target-lang $TGT --bpe sentencepiece --sentencepiece-model $WORK/data/spm.model --beam 4 | grep ^D-
TRY
