#!/usr/bin/env bash
# The paper's finding is about the *fraction* of rejection data in the mix: sweep it.
#
#   bash examples/ratio_sweep.sh [MODEL] [RATIOS...]      e.g. llava1_5_7b 0.05 0.1 0.2 0.3
#
# For each ratio: mix (--rejection-ratio R, 5000 instruct examples), train a LoRA with the method on (dataset and
# output_dir overridden on the command line: names without spaces survive the multi-GPU launcher), and
# generate + judge on MM-SafetyBench. Needs the data of prepare_data.sh and GPUs.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL=${1:-llava1_5_7b}
shift || true
RATIOS=${*:-0.05 0.1 0.2 0.3}
check_model_kind "$MODEL" rejection
need_gpus 1 "LoRA training of a 7B model"
SOURCE=$RAW_DIR/prepared/llava_med_instruct_60k_inline_mention.json
need_file "$SOURCE" "run: bash examples/prepare_data.sh llava-med"

for RATIO in $RATIOS; do
  NAME="ratio_${RATIO}_llava_med_mix665k"
  rejection-align mix --rejection-source "$SOURCE" --instruct "$RAW_DIR/llava_v1_5_mix665k.json" \
    --rejection-ratio "$RATIO" --n-instruct 5000 --random-turn \
    --output data --name "$NAME" --dataset-info data/dataset_info.json --force
  OUT="saves/$MODEL/lora/ratio_$RATIO"
  llamafactory-cli train "configs/${MODEL}_lora_rejection.yaml" "dataset=$NAME" "output_dir=$OUT"
  bash examples/evaluate.sh "$MODEL" rejection "$OUT"
done
