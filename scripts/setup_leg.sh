#!/usr/bin/env bash
# Create (or reuse) the virtual environment of one LLaMA-Factory version leg of the test suite and install
# rejection-align into it, editable, beside that LLaMA-Factory. Sourced by scripts/test.sh with LEG set:
#   LEG=lf094   llamafactory==0.9.4 from the registry, with transformers 4.57.x (0.9.4 allows it)
#   LEG=lfmain  LLaMA-Factory main from a source snapshot ($VENDOR_DIR/llamafactory-main-*.tar.gz), installed
#               editable from an unpacked clone, the way most users install it; LEG_SKIP is set when it is absent
# Re-installs only when pyproject.toml, this file or the snapshot change.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENDOR_DIR=${REJECTION_ALIGN_VENDOR_DIR:-$ROOT/../shared/vendor}
LEG_VENV=$ROOT/.venv-$LEG
LEG_SKIP=""

case "$(uname -m)" in
  aarch64|arm64) torch_pair="torch==2.9.1 torchvision==0.24.1" ;;
  *) torch_pair="torch==2.14.1 torchvision==0.29.1" ;;
esac

case "$LEG" in
  lf094)
    lf_spec=("llamafactory==0.9.4" "transformers>=4.57.1,<4.58")
    source_id="llamafactory==0.9.4"
    ;;
  lfmain)
    snapshot=$(ls "$VENDOR_DIR"/llamafactory-main-*.tar.gz 2>/dev/null | sort | tail -n 1 || true)
    if [ -z "$snapshot" ]; then
      LEG_SKIP="no LLaMA-Factory main snapshot in $VENDOR_DIR (set REJECTION_ALIGN_VENDOR_DIR)"
      return 0 2>/dev/null || exit 0
    fi
    source_id=$(basename "$snapshot")
    ;;
  *) echo "[setup] unknown leg '$LEG'" >&2; return 2 2>/dev/null || exit 2 ;;
esac

BASE_VENV=${REJECTION_ALIGN_VENV:-$ROOT/.venv}
if [ ! -x "$LEG_VENV/bin/python" ]; then
  if [ -x "$BASE_VENV/bin/python" ]; then
    # a hard-linked copy of the main environment: torch (GBs) is not unpacked again, and pip replaces files rather
    # than editing them, so the copy never changes the original; only the scripts' #! lines name the environment
    echo "[setup:$LEG] cloning $BASE_VENV into $LEG_VENV (hard links)"
    rm -rf "$LEG_VENV.partial"
    cp -al "$BASE_VENV" "$LEG_VENV.partial"
    rm -f "$LEG_VENV.partial/.rejection-align-installed"
    for script in "$LEG_VENV.partial"/bin/*; do
      if [ -f "$script" ] && [ ! -L "$script" ] && head -n 1 "$script" | grep -q "^#!$BASE_VENV/bin/"; then
        sed -i "1s|^#!$BASE_VENV/bin/|#!$LEG_VENV/bin/|" "$script"  # writes a new file: the link is broken
      fi
    done
    mv "$LEG_VENV.partial" "$LEG_VENV"
  else
    echo "[setup:$LEG] creating $LEG_VENV with $PYTHON"
    "$PYTHON" -m venv "$LEG_VENV"
  fi
fi

stamp="$LEG_VENV/.rejection-align-installed"
want=$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_leg.sh" <(echo "$source_id") | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup:$LEG] installing torch, $source_id and rejection-align into $LEG_VENV (first time: a few minutes)"
  pip=("$LEG_VENV/bin/python" -m pip install -q)
  "${pip[@]}" --upgrade pip
  # shellcheck disable=SC2086
  "${pip[@]}" $torch_pair
  if [ "$LEG" = lfmain ]; then
    clone="$LEG_VENV/src/llamafactory-main"
    rm -rf "$clone" && mkdir -p "$clone"
    tar -xzf "$snapshot" -C "$clone" --strip-components=1
    "${pip[@]}" -e "$clone"
  else
    "${pip[@]}" "${lf_spec[@]}"
  fi
  # rejection-align with its dependencies resolved against the LLaMA-Factory already there (never replacing it)
  "${pip[@]}" -e "$ROOT[test]"
  "$LEG_VENV/bin/python" -m compileall -q "$ROOT/src/rejection_align" >/dev/null || true
  echo "$want" > "$stamp"
fi

export PATH="$LEG_VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
