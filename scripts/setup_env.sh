#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install rejection-align into it, editable.
# Sourced by scripts/demo.sh and scripts/test.sh; re-installs only when pyproject.toml or this file change.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${REJECTION_ALIGN_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.rejection-align-installed"
want=$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing torch and rejection-align into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # A torch/torchvision pair whose wheels import together (PyPI's torchvision does not import beside
  # every torch build); LLaMA-Factory 0.9.5 needs both.
  case "$(uname -m)" in
    aarch64|arm64) torch_pair="torch==2.9.1 torchvision==0.24.1" ;;
    *) torch_pair="torch==2.14.1 torchvision==0.29.1" ;;
  esac
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $torch_pair
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  # byte-compile the start-up modules now: an editable install leaves them to be compiled at every interpreter
  # start when PYTHONDONTWRITEBYTECODE is set
  "$VENV/bin/python" -m compileall -q "$ROOT/src/rejection_align" >/dev/null || true
  echo "$want" > "$stamp"
fi

# torchrun (used by llamafactory-cli for several processes) is found only on PATH.
export PATH="$VENV/bin:$PATH"
# Nothing is ever downloaded from a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
