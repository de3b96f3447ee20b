#!/usr/bin/env bash
# Merge a trained LoRA adapter into its base model (a plain -hf checkpoint, e.g. for vLLM):
#
#   bash examples/merge.sh MODEL [rejection|baseline]
#
# Runs on CPU (export_device: cpu) but needs about 2x the model size in RAM (~30 GB for 7B in bf16).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

model_and_kind "bash examples/merge.sh MODEL [rejection|baseline]" "$@"
CONFIG="configs/merge/${MODEL}_lora_${KIND}.yaml"
ADAPTER=$(yaml_get "$CONFIG" adapter_name_or_path)
need_file "$ADAPTER/adapter_config.json" "train it first: bash examples/train.sh $MODEL $KIND"

llamafactory-cli export "$CONFIG"
echo "[merge] merged model in $(yaml_get "$CONFIG" export_dir)"
