#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment: torch, LLaMA-Factory 0.9.5 and rejection-align (editable) at
# the versions of the lock scripts/locks/lf095.txt (docs/development.md). Sourced by scripts/demo.sh and
# scripts/test.sh; re-installs only when pyproject.toml, the lock or the set-up scripts change.
# REJECTION_ALIGN_VENV=DIR puts the environment elsewhere (default: .venv in the repository).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/legs.sh"
VENV=${REJECTION_ALIGN_VENV:-$ROOT/.venv}
lock=$LOCKS/lf095.txt

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.rejection-align-installed"
want=$(stamp_of "$ROOT/scripts/setup_env.sh" "$lock")
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing torch, LLaMA-Factory 0.9.5 and rejection-align into $VENV, versions from" \
    "scripts/locks/lf095.txt (first time: a few minutes)"
  leg_requirements lf095 "$(lock_extras "$lock")"
  locked_install "$VENV" "$lock" "${LEG_REQS[@]}"
  echo "$want" > "$stamp"
fi

# torchrun (used by llamafactory-cli for several processes) is found only on PATH.
export PATH="$VENV/bin:$PATH"
# Nothing is ever downloaded from a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
