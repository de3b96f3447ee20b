#!/usr/bin/env bash
# Train one LoRA of the paper with LLaMA-Factory: the method on (rejection) or off (baseline), same data.
#
#   bash examples/train.sh MODEL [rejection|baseline] [key=value ...]
#   MODEL: llava1_5_7b | llava_next_llama3_8b | llava_next_mistral_7b | yi_vl_6b
#
# Uses every visible GPU (LLaMA-Factory launches torchrun when it sees more than one). The configs are written
# for 4 GPUs with a global batch of 128; on N GPUs pass gradient_accumulation_steps=128/(per-device batch x N),
# e.g. `bash examples/train.sh llava1_5_7b rejection gradient_accumulation_steps=4` on 2 GPUs.
# Several nodes: docs/training.md (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on each node).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

model_and_kind "bash examples/train.sh MODEL [rejection|baseline] [key=value ...]" "$@"
shift $(( $# >= 2 ? 2 : 1 ))
CONFIG="configs/${MODEL}_lora_${KIND}.yaml"

need_gpus 1 "LoRA training of a 6-8B model; the paper used 4 GPUs with at least 45 GB each"
DATASET=$(yaml_get "$CONFIG" dataset)
for arg in "$@"; do
  case "$arg" in dataset=*) DATASET=${arg#dataset=} ;; esac
done
need_file "data/$DATASET.json" "run: bash examples/prepare_data.sh (it writes and registers $DATASET)"
if grep -q '^deepspeed:' "$CONFIG"; then
  python -c 'import deepspeed' 2>/dev/null || die "$CONFIG uses DeepSpeed ZeRO-3: pip install 'rejection-align[deepspeed]'"
fi

echo "[train] $CONFIG on $(gpu_count) GPU(s) $*"
llamafactory-cli train "$CONFIG" "$@"
echo "[train] adapter in $(yaml_get "$CONFIG" output_dir); next: bash examples/evaluate.sh $MODEL $KIND"
