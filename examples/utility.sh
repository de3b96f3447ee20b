#!/usr/bin/env bash
# Utility next to safety: lmms-eval tasks for the base model, the rejection adapter and its baseline twin, then one
# trade-off report with the safety numbers of examples/evaluate.sh.
#
#   bash examples/utility.sh MODEL
#
# TASKS (default scienceqa_img,vizwiz_vqa_val,pope: the paper's reference tasks and POPE) and LMMS_ARGS (more
# lmms-eval flags, e.g. "--include_path tasks --limit 200") are read from the environment. Writes
# $RESULTS_DIR/MODEL/{base,rejection,baseline}/utility/ (lmms-eval results and samples) and
# $RESULTS_DIR/MODEL/tradeoff/ (tradeoff.json, tradeoff.md, tradeoff.png). docs/evaluation.md, "Utility".
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ $# -ge 1 ] || die "usage: bash examples/utility.sh MODEL; MODEL: $MODELS"
MODEL=$1
check_model_kind "$MODEL" rejection
TASKS=${TASKS:-scienceqa_img,vizwiz_vqa_val,pope}
LMMS_ARGS=${LMMS_ARGS:-}
BATCH_SIZE=${BATCH_SIZE:-8}

need_command lmms-eval "install the extra: pip install 'rejection-align[lmms]' (or pip install -e '.[lmms]')"
need_gpus 1 "generation with a 6-8B model"

utility() {  # utility RUN MODEL_ARGS
  local out="$RESULTS_DIR/$MODEL/$1/utility"
  echo "[utility] $1: lmms-eval --model llamafactory --model_args $2 --tasks $TASKS"
  # shellcheck disable=SC2086
  lmms-eval --model llamafactory --model_args "$2" --tasks "$TASKS" --batch_size "$BATCH_SIZE" \
    --log_samples --output_path "$out" $LMMS_ARGS
  # lmms-eval exits 0 even when a task failed: its results file is the proof
  find "$out" -name '*_results.json' | grep -q . || die "lmms-eval wrote no results for $1 (see its log above)"
}

REPORT_ARGS=()
INFER_REJECTION="configs/inference/${MODEL}_lora_rejection.yaml"
BASE_MODEL=$(yaml_get "$INFER_REJECTION" model_name_or_path)
TEMPLATE=$(yaml_get "$INFER_REJECTION" template)
utility base "model_name_or_path=$BASE_MODEL,template=$TEMPLATE"
for KIND in rejection baseline; do
  ADAPTER=$(yaml_get "configs/${MODEL}_lora_${KIND}.yaml" output_dir)
  if [ ! -f "$ADAPTER/adapter_config.json" ]; then
    echo "[utility] skipping $KIND: no adapter in $ADAPTER (bash examples/train.sh $MODEL $KIND)"
    continue
  fi
  utility "$KIND" "infer_yaml=configs/inference/${MODEL}_lora_${KIND}.yaml,adapter_name_or_path=$ADAPTER"
done

for RUN in base rejection baseline; do
  DIRS=()
  # the judge folders examples/evaluate.sh writes: one per MM-SafetyBench mode, and FigStep's
  for JUDGE in "$RESULTS_DIR/$MODEL/$RUN"/mmsafetybench/*/judge "$RESULTS_DIR/$MODEL/$RUN"/figstep/judge; do
    [ -f "$JUDGE/summary.json" ] && DIRS+=("$JUDGE")
  done
  [ -d "$RESULTS_DIR/$MODEL/$RUN/utility" ] && DIRS+=("$RESULTS_DIR/$MODEL/$RUN/utility")
  [ ${#DIRS[@]} -gt 0 ] && REPORT_ARGS+=(--run "$RUN" "${DIRS[@]}")
done
rejection-align report "${REPORT_ARGS[@]}" --out "$RESULTS_DIR/$MODEL/tradeoff"
echo "[utility] trade-off report in $RESULTS_DIR/$MODEL/tradeoff"
