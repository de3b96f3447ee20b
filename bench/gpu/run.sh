#!/usr/bin/env bash
# The GPU checks, for a machine with one CUDA GPU (bench/gpu/checks.py says what each does):
#   (a) `rejection-align generate --backend hf` vs `--backend vllm` on the same prompts, a LLaVA-1.5-7B-shaped random
#       model and a tiny Qwen2-VL, without and with a LoRA adapter: examples/s of both, answers compared;
#   (b) `llamafactory-cli train`, a fixed number of steps, rejection_mask_eos true vs false: samples/s of both;
#   (c) bf16 answers at batch size 8 vs 1.
# One summary table: bench/results/gpu_summary.md (+ .json). The checks are sized to take under 8 minutes on an
# H100/H200-class GPU (not yet run on one); making the environment the first time takes a few more.
#
#   bash bench/gpu/run.sh             on the GPU machine: makes .venv-gpu (LLaMA-Factory 0.9.5 and the rest at the
#                                     versions of scripts/locks/lf095.txt, except torch, which vLLM chooses; vLLM;
#                                     rejection-align editable), then runs the checks
#   bash bench/gpu/run.sh --dry-run   on CPU: every step on tiny models with vLLM skipped, in .venv (the locked
#                                     environment of scripts/setup_env.sh); summary in runs/gpu_dry_run/
# Options: --out DIR (where the summary goes), --work DIR (models, adapters, answers, logs; default runs/gpu or
# runs/gpu_dry_run/work), --python PY (run in PY's environment as it is, no set-up: tests/test_gpu_script.py). Environment: VLLM_SPEC (default: vllm, the newest that resolves beside LLaMA-Factory 0.9.5),
# REJECTION_ALIGN_GPU_VENV (default .venv-gpu). Offline machines: point pip at a wheelhouse (PIP_FIND_LINKS=DIR
# PIP_NO_INDEX=1) or pass a ready environment in REJECTION_ALIGN_GPU_VENV.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

dry_run=0 out="" work="" python=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --out) out=$2; shift ;;
    --work) work=$2; shift ;;
    --python) python=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/gpu/run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ $dry_run = 1 ]; then
  out=${out:-$ROOT/runs/gpu_dry_run}
  work=${work:-$out/work}
else
  out=${out:-$ROOT/bench/results}
  work=${work:-$ROOT/runs/gpu}
fi

start=$SECONDS
if [ -n "$python" ]; then
  :  # an environment made elsewhere, used as it is
elif [ $dry_run = 1 ]; then
  source "$ROOT/scripts/setup_env.sh"
  python=$VENV/bin/python
else
  source "$ROOT/scripts/legs.sh"
  GPU_VENV=${REJECTION_ALIGN_GPU_VENV:-$ROOT/.venv-gpu}
  VLLM_SPEC=${VLLM_SPEC:-vllm}
  lock=$LOCKS/lf095.txt
  [ -x "$GPU_VENV/bin/python" ] || { echo "[gpu] creating $GPU_VENV"; "$PYTHON" -m venv "$GPU_VENV"; }
  stamp="$GPU_VENV/.rejection-align-installed"
  want=$(stamp_of "$ROOT/bench/gpu/run.sh" "$lock" <(echo "$VLLM_SPEC"))
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[gpu] installing $VLLM_SPEC, LLaMA-Factory 0.9.5 and rejection-align into $GPU_VENV (versions of" \
      "scripts/locks/lf095.txt except the torch family, which vLLM pins)"
    constraints=$(mktemp)
    "$GPU_VENV/bin/python" "$ROOT/scripts/lockfile.py" constraints --without-torch "$lock" > "$constraints"
    pip=("$GPU_VENV/bin/python" -m pip install -q)
    if ! "${pip[@]}" -c "$constraints" "$VLLM_SPEC" "llamafactory==0.9.5" -e "$ROOT[test]"; then
      # vLLM's own pins (tokenizers, protobuf, ...) may exclude some of the lock's versions: then only LLaMA-Factory
      # stays fixed, and the summary's header lists what was installed
      echo "[gpu] $VLLM_SPEC does not resolve with the lock's versions; installing with LLaMA-Factory 0.9.5 pinned only"
      "${pip[@]}" "$VLLM_SPEC" "llamafactory==0.9.5" -e "$ROOT[test]"
    fi
    rm -f "$constraints"
    echo "$want" > "$stamp"
  fi
  python=$GPU_VENV/bin/python
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ $dry_run = 0 ] && ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "[gpu] no CUDA GPU visible to torch: run with --dry-run on a machine without one" >&2
  exit 2
fi
echo "[gpu] environment ready in $((SECONDS - start)) s"

args=(--out "$out" --work "$work")
[ $dry_run = 0 ] || args+=(--dry-run)
"$python" "$ROOT/bench/gpu/checks.py" "${args[@]}"
