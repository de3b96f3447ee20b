#!/usr/bin/env bash
# Shared by the example scripts: paths, checks that stop with a clear message, and the model table.
# Source it from a script in examples/; it changes to the repository root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Where the raw downloads live (see examples/README.md for the layout) and where the images are.
RAW_DIR=${RAW_DIR:-data/raw}
IMAGE_DIR=${IMAGE_DIR:-data/images}
EVAL_DIR=${EVAL_DIR:-data/eval}
RESULTS_DIR=${RESULTS_DIR:-results}

# Every config, merge and chat YAML is named configs/{,merge/,inference/}${MODEL}_lora_${KIND}.yaml
MODELS="llava1_5_7b llava_next_llama3_8b llava_next_mistral_7b yi_vl_6b qwen2_5_vl_7b"
KINDS="rejection baseline"

die() {
  echo "error: $*" >&2
  exit 1
}

need_file() {  # need_file PATH "what it is and where to get it"
  [ -f "$1" ] || die "$1 not found: $2 (layout: examples/README.md)"
}

need_dir() {
  [ -d "$1" ] || die "$1 not found: $2 (layout: examples/README.md)"
}

need_command() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH: $2"
}

check_model_kind() {  # check_model_kind MODEL KIND
  case " $MODELS " in *" $1 "*) ;; *) die "unknown model '$1'; choose one of: $MODELS" ;; esac
  case " $KINDS " in *" $2 "*) ;; *) die "unknown kind '$2'; choose one of: $KINDS" ;; esac
}

model_and_kind() {  # model_and_kind "USAGE" "$@": sets MODEL and KIND (default: rejection), both checked
  local usage=$1
  shift
  [ $# -ge 1 ] || die "usage: $usage; MODEL: $MODELS"
  MODEL=$1
  KIND=${2:-rejection}
  check_model_kind "$MODEL" "$KIND"
}

gpu_count() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

need_gpus() {  # need_gpus N "why"
  local have
  have=$(gpu_count)
  if [ "$have" -lt "$1" ]; then
    die "this step needs at least $1 NVIDIA GPU(s) ($2); found $have. On a CPU machine run the demo instead: rejection-align demo"
  fi
}

# The YAML's output_dir / export_dir, read with PyYAML (installed with LLaMA-Factory).
yaml_get() {  # yaml_get FILE KEY
  python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

export HF_HUB_ENABLE_HF_TRANSFER=${HF_HUB_ENABLE_HF_TRANSFER:-0}
need_command rejection-align "install the project first: pip install -e . (or pip install rejection-align)"
need_command llamafactory-cli "it comes with llamafactory==0.9.5, a dependency of rejection-align"
