#!/usr/bin/env bash
# The paper's question, answerable: is curated malicious data needed? Builds every ablation dataset from VLGuard +
# LLaVA-Med + llava_v1_5_mix665k, trains one LoRA per ablation (configs/ablations/, LLaVA-1.5-7B), generates
# answers on MM-SafetyBench (SD_TYPO) and FigStep, judges them, and compares each ablation with the curated baseline.
#
#   bash examples/ablations.sh [--dry-run] [ABLATION ...]
#
# --dry-run prints every command (data, training, generation, judging) without running any, and checks nothing.
# ABLATION: any of the names below (default: all). Sizes: N_REJECTION (default 2000) records of the rejection
# source and N_INSTRUCT (default 5000) of mix665k in each mix; the no-rejection control has N_REJECTION + N_INSTRUCT
# mix665k records. Raw data as in examples/README.md: $RAW_DIR/vlguard/train.json (+ images in $IMAGE_DIR/vlguard/),
# $RAW_DIR/llava_med/llava_med_instruct_60k_inline_mention.json (+ $IMAGE_DIR/llava_med/), $RAW_DIR/llava_v1_5_mix665k.json.
#
#   ablation                question it answers                                     compare with
#   rejection_llava_med     the method (LLaVA-Med answers -> rejection sentence)    curated
#   curated                 curated data (VLGuard, its own answers): the baseline   -
#   curated_multi_turn      VLGuard multi-turn vs one turn                          curated
#   curated_no_safe_safe    VLGuard without its safe-image/safe-instruction pairs   curated
#   curated_random_images   harmful images replaced by random benign ones           curated
#   plain_sentence          VLGuard refusals with the plain sentence instead        curated_no_safe_safe
#   no_rejection            instruction data alone, same size (the control)         curated
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY_RUN=1
  shift
fi
ALL="rejection_llava_med curated curated_multi_turn curated_no_safe_safe curated_random_images plain_sentence no_rejection"
ABLATIONS=${*:-$ALL}
for A in $ABLATIONS; do
  case " $ALL " in *" $A "*) ;; *) die "unknown ablation '$A'; choose from: $ALL" ;; esac
done

MODEL=llava1_5_7b
N_REJECTION=${N_REJECTION:-2000}
N_INSTRUCT=${N_INSTRUCT:-5000}
VLGUARD=$RAW_DIR/vlguard/train.json
LLAVA_MED=$RAW_DIR/llava_med/llava_med_instruct_60k_inline_mention.json
MIX665K=$RAW_DIR/llava_v1_5_mix665k.json
PREPARED=$RAW_DIR/prepared
MMSB=${MMSB:-$EVAL_DIR/MM-SafetyBench}
FIGSTEP=${FIGSTEP:-$EVAL_DIR/FigStep/data/images/SafeBench}
OUT=$RESULTS_DIR/$MODEL/ablations
# generation settings of a trained run: the base model, template and image size (the adapter is given per run)
INFER=configs/inference/${MODEL}_lora_baseline.yaml

run() {  # run CMD ARGS...: print it (shell-quoted); run it unless --dry-run
  printf '%q ' "$@" | sed 's/ $//'
  echo
  [ "$DRY_RUN" = 1 ] || "$@"
}

if [ "$DRY_RUN" = 0 ]; then
  need_file "$VLGUARD" "get VLGuard's train.json and images from https://huggingface.co/datasets/ys-zong/VLGuard"
  need_file "$LLAVA_MED" "get LLaVA-Med's instruction data from https://github.com/microsoft/LLaVA-Med (Data Download)"
  need_file "$MIX665K" \
    "download llava_v1_5_mix665k.json from https://huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K"
  need_dir "$IMAGE_DIR/vlguard" "unpack VLGuard's train images into $IMAGE_DIR/vlguard/"
  need_dir "$MMSB" "clone https://github.com/isXinLiu/MM-SafetyBench and get its images (MMSB=... to point elsewhere)"
  need_gpus 1 "LoRA training and generation with a 7B model"
fi

echo "# 1. rejection sources: VLGuard in three shapes (sharegpt, not registered), LLaVA-Med with image prefix"
VLGUARD_ARGS=(--from vlguard --image-prefix vlguard --output "$PREPARED" --no-register --image-dir "$IMAGE_DIR")
run rejection-align convert "$VLGUARD" "${VLGUARD_ARGS[@]}" --turns one --pairs all --name vlguard_one_turn
run rejection-align convert "$VLGUARD" "${VLGUARD_ARGS[@]}" --turns multi --pairs all --name vlguard_multi_turn
run rejection-align convert "$VLGUARD" "${VLGUARD_ARGS[@]}" --turns one --pairs no-safe-safe \
  --name vlguard_one_turn_no_safe_safe
run python examples/prepare_sources.py llava-med "$LLAVA_MED" "$PREPARED/llava_med.json"

echo "# 2. one registered mix per ablation (seed 42; each with a manifest beside it)"
mix_args() {  # mix_args ABLATION: sets MIX_ARGS, the rejection source and sizes of that ablation's mix
  local one=$PREPARED/vlguard_one_turn.json no_safe_safe=$PREPARED/vlguard_one_turn_no_safe_safe.json
  local sizes=(--n-rejection "$N_REJECTION" --n-instruct "$N_INSTRUCT")
  case "$1" in
    rejection_llava_med) MIX_ARGS=(--rejection-source "$PREPARED/llava_med.json" "${sizes[@]}" --random-turn) ;;
    curated) MIX_ARGS=(--rejection-source "$one" "${sizes[@]}" --keep-replies) ;;
    curated_multi_turn) MIX_ARGS=(--rejection-source "$PREPARED/vlguard_multi_turn.json" "${sizes[@]}" --keep-replies) ;;
    curated_no_safe_safe) MIX_ARGS=(--rejection-source "$no_safe_safe" "${sizes[@]}" --keep-replies) ;;
    curated_random_images)
      MIX_ARGS=(--rejection-source "$one" "${sizes[@]}" --keep-replies --replace-images-from "$MIX665K") ;;
    plain_sentence) MIX_ARGS=(--rejection-source "$no_safe_safe" "${sizes[@]}") ;;
    no_rejection) MIX_ARGS=(--rejection-source "$one" --n-rejection 0 --n-instruct $((N_REJECTION + N_INSTRUCT))) ;;
  esac
}
for A in $ABLATIONS; do
  mix_args "$A"
  run rejection-align mix "${MIX_ARGS[@]}" --instruct "$MIX665K" --name "ablation_$A" --output data \
    --dataset-info data/dataset_info.json --image-dir "$IMAGE_DIR" --force
done

echo "# 3. train, generate, judge"
for A in $ABLATIONS; do
  ADAPTER=saves/llava1_5-7b/lora/ablation_$A
  if [ "$A" = rejection_llava_med ]; then  # the method's own config, on this ablation's data
    run llamafactory-cli train "configs/${MODEL}_lora_rejection.yaml" "dataset=ablation_$A" "output_dir=$ADAPTER"
  else
    run llamafactory-cli train "configs/ablations/${MODEL}_$A.yaml"
  fi
  run rejection-align generate "$INFER" --benchmark mmsafetybench --data "$MMSB" --adapter "$ADAPTER" \
    --output "$OUT/$A/mmsafetybench" --batch-size 8 --max-new-tokens 512
  run rejection-align judge "$OUT/$A/mmsafetybench/SD_TYPO" --out "$OUT/$A/mmsafetybench/SD_TYPO/judge"
  if [ "$DRY_RUN" = 1 ] || [ -d "$FIGSTEP" ]; then
    run rejection-align generate "$INFER" --benchmark figstep --data "$FIGSTEP" --adapter "$ADAPTER" \
      --output "$OUT/$A/figstep" --batch-size 8 --max-new-tokens 512
    run rejection-align judge "$OUT/$A/figstep" --out "$OUT/$A/figstep/judge"
  fi
done

echo "# 4. each ablation beside the run it answers to (MM-SafetyBench SD_TYPO)"
for A in $ABLATIONS; do
  case "$A" in curated) continue ;; plain_sentence) BASE=curated_no_safe_safe ;; *) BASE=curated ;; esac
  case " $ABLATIONS " in *" $BASE "*) ;; *) continue ;; esac
  run rejection-align judge --compare "$OUT/$BASE/mmsafetybench/SD_TYPO/judge" "$OUT/$A/mmsafetybench/SD_TYPO/judge" \
    --labels "$BASE" "$A" --out "$OUT/compare/$A"
done
