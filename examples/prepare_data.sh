#!/usr/bin/env bash
# Prepare the paper's training mix: 2000 benign rejection examples + 5000 instruction examples.
#
#   bash examples/prepare_data.sh [llava-med|vlguard] [N_REJECTION] [N_INSTRUCT]
#
# Reads the raw downloads under $RAW_DIR (default data/raw) and writes the mix to data/, registered in
# data/dataset_info.json under the name the configs use, e.g.
#   2000_llava_med_instruct_60k_inline_mention_5000_llava_v1_5_mix665k_random_turn
# CPU only; a few seconds for the 1 GB llava_v1_5_mix665k.json once its index is cached.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SOURCE=${1:-llava-med}
N_REJECTION=${2:-2000}
N_INSTRUCT=${3:-5000}
PREPARED=$RAW_DIR/prepared

need_file "$RAW_DIR/llava_v1_5_mix665k.json" \
  "download llava_v1_5_mix665k.json from https://huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K"
need_dir "$IMAGE_DIR/coco" "the LLaVA-1.5 instruction images (coco, gqa, ocr_vqa, textvqa, vg) go under $IMAGE_DIR"

case "$SOURCE" in
  llava-med)
    RAW=$RAW_DIR/llava_med/llava_med_instruct_60k_inline_mention.json
    need_file "$RAW" "get LLaVA-Med's instruction data from https://github.com/microsoft/LLaVA-Med (Data Download)"
    need_dir "$IMAGE_DIR/llava_med" "put the LLaVA-Med (PMC) images in $IMAGE_DIR/llava_med/"
    STEM=llava_med_instruct_60k_inline_mention
    python examples/prepare_sources.py llava-med "$RAW" "$PREPARED/$STEM.json"
    ;;
  vlguard)
    RAW=$RAW_DIR/vlguard/train.json
    need_file "$RAW" "get VLGuard's train.json and train images from https://huggingface.co/datasets/ys-zong/VLGuard"
    need_dir "$IMAGE_DIR/vlguard" "unpack VLGuard's train images into $IMAGE_DIR/vlguard/"
    STEM=vlguard_train_llava_format
    python examples/prepare_sources.py vlguard "$RAW" "$PREPARED/$STEM.json" --keep safe
    ;;
  *)
    die "unknown rejection source '$SOURCE'; choose llava-med or vlguard"
    ;;
esac

# The reference recipe: one random human/gpt pair per rejection example (--random-turn), its answer replaced by
# "I'm sorry, but I cannot assist with your request"; instruct examples drawn among the other ids; seed 42.
rejection-align mix \
  --rejection-source "$PREPARED/$STEM.json" \
  --instruct "$RAW_DIR/llava_v1_5_mix665k.json" \
  --n-rejection "$N_REJECTION" --n-instruct "$N_INSTRUCT" \
  --random-turn \
  --output data \
  --dataset-info data/dataset_info.json \
  --image-dir "$IMAGE_DIR"

echo
echo "next: bash examples/train.sh llava1_5_7b rejection   (dataset ${N_REJECTION}_${STEM}_${N_INSTRUCT}_llava_v1_5_mix665k_random_turn)"
