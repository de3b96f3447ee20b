#!/usr/bin/env bash
# The whole study for one model, from raw data to a safety number: prepare, train (method on and off),
# evaluate both, compare. Merging is optional (examples/merge.sh).
#
#   bash examples/run_all.sh [MODEL] [llava-med|vlguard]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL=${1:-llava1_5_7b}
SOURCE=${2:-llava-med}
check_model_kind "$MODEL" rejection
need_gpus 1 "training and evaluating a 6-8B model"

bash examples/prepare_data.sh "$SOURCE"
if [ "$SOURCE" = vlguard ]; then
  DATASET=dataset=2000_vlguard_train_llava_format_5000_llava_v1_5_mix665k_random_turn
else
  DATASET=
fi
for KIND in baseline rejection; do
  # shellcheck disable=SC2086
  bash examples/train.sh "$MODEL" "$KIND" $DATASET
  bash examples/evaluate.sh "$MODEL" "$KIND"
done
echo "comparison: $RESULTS_DIR/$MODEL/compare/*/compare.md"
