#!/usr/bin/env bash
# Safety numbers for a trained adapter: answers on MM-SafetyBench and FigStep, judged by string match (ASR).
#
#   bash examples/evaluate.sh MODEL [rejection|baseline] [ADAPTER_DIR]
#
# Writes $RESULTS_DIR/MODEL/RUN/{mmsafetybench,figstep}/ (JSONL answers, resumable) and judge summaries
# (summary.json, summary.md, asr.png); RUN is the adapter folder's name, KIND for the configs' own adapters. When
# both the configs' rejection and baseline runs have been evaluated, also a comparison.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

model_and_kind "bash examples/evaluate.sh MODEL [rejection|baseline] [ADAPTER_DIR]" "$@"
CONFIG="configs/${MODEL}_lora_${KIND}.yaml"
# the inference YAML gives generate the base model, the template the adapter was trained with and the image size
INFER="configs/inference/${MODEL}_lora_${KIND}.yaml"
ADAPTER=${3:-$(yaml_get "$CONFIG" output_dir)}
OUT="$RESULTS_DIR/$MODEL/$(basename "$ADAPTER")"
MMSB=${MMSB:-$EVAL_DIR/MM-SafetyBench}
FIGSTEP=${FIGSTEP:-$EVAL_DIR/FigStep/data/images/SafeBench}

need_gpus 1 "generation with a 6-8B model"
need_file "$ADAPTER/adapter_config.json" "train it first: bash examples/train.sh $MODEL $KIND"
need_dir "$MMSB" "clone https://github.com/isXinLiu/MM-SafetyBench and get its images (MMSB=... to point elsewhere)"

rejection-align generate "$INFER" --benchmark mmsafetybench --data "$MMSB" --adapter "$ADAPTER" \
  --output "$OUT/mmsafetybench" --batch-size 8 --max-new-tokens 512
for MODE_DIR in "$OUT"/mmsafetybench/*/; do
  rejection-align judge "$MODE_DIR" --out "$MODE_DIR/judge"
done

if [ -d "$FIGSTEP" ]; then
  rejection-align generate "$INFER" --benchmark figstep --data "$FIGSTEP" --adapter "$ADAPTER" \
    --output "$OUT/figstep" --batch-size 8 --max-new-tokens 512
  rejection-align judge "$OUT/figstep" --out "$OUT/figstep/judge"
else
  echo "[evaluate] skipping FigStep: $FIGSTEP not found (https://github.com/ThuCCSLab/FigStep, SafeBench images)"
fi

OTHER=$([ "$KIND" = rejection ] && echo baseline || echo rejection)
OTHER_OUT="$RESULTS_DIR/$MODEL/$OTHER"
# only for the configs' own adapters: another ADAPTER_DIR (ratio_sweep.sh) is not one side of that comparison
if [ "$OUT" = "$RESULTS_DIR/$MODEL/$KIND" ] && [ -d "$OTHER_OUT/mmsafetybench" ]; then
  for MODE_DIR in "$OUT"/mmsafetybench/*/; do
    MODE=$(basename "$MODE_DIR")
    [ -d "$OTHER_OUT/mmsafetybench/$MODE" ] || continue
    rejection-align judge --compare "$RESULTS_DIR/$MODEL/baseline/mmsafetybench/$MODE" \
      "$RESULTS_DIR/$MODEL/rejection/mmsafetybench/$MODE" --labels baseline rejection \
      --out "$RESULTS_DIR/$MODEL/compare/$MODE"
  done
fi
echo "[evaluate] results under $OUT"
