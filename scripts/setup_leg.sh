#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv-$LEG of one leg of the test suite beside .venv (scripts/legs.sh
# lists them) and install rejection-align into it, editable. Sourced by scripts/test.sh with LEG set:
#   LEG=lf094           versions of scripts/locks/lf094.txt (LLaMA-Factory 0.9.4, transformers 4.57)
#   LEG=lfmain          versions of scripts/locks/lfmain.txt, LLaMA-Factory main installed editable from an unpacked
#                       source snapshot ($VENDOR_DIR/llamafactory-main-*.tar.gz), the way most users install it;
#                       LEG_SKIP is set when the snapshot is absent
#   LEG=msgspec-oldest  scripts/locks/lf095.txt with msgspec at pyproject.toml's lower bound (read from there)
#   LEG=latest          no lock: the newest versions pyproject's ranges allow, resolved now ($LEG_VENV/lock.txt);
#                       LEG_DRIFT is set to what differs from scripts/locks/lf095.txt
# The environment starts as a hard-linked copy of .venv (torch's GBs are not unpacked again). Re-installs only when
# pyproject.toml, the lock, the set-up scripts or the snapshot change.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/legs.sh"
LEG_VENV=$ROOT/.venv-$LEG
BASE_VENV=${REJECTION_ALIGN_VENV:-$ROOT/.venv}
LEG_SKIP=""
LEG_DRIFT=""
source_id=""

case "$LEG" in
  lfmain)
    snapshot=$(main_snapshot)
    if [ -z "$snapshot" ]; then
      LEG_SKIP="no LLaMA-Factory main snapshot in $VENDOR_DIR (set REJECTION_ALIGN_VENDOR_DIR)"
      return 0 2>/dev/null || exit 0
    fi
    source_id=$(basename "$snapshot")
    ;;
  lf094|msgspec-oldest|latest) ;;
  *) echo "[setup] unknown leg '$LEG'" >&2; return 2 2>/dev/null || exit 2 ;;
esac

if [ ! -x "$LEG_VENV/bin/python" ]; then
  if [ -x "$BASE_VENV/bin/python" ]; then
    echo "[setup:$LEG] cloning $BASE_VENV into $LEG_VENV (hard links)"
    clone_venv "$BASE_VENV" "$LEG_VENV"
  else
    echo "[setup:$LEG] creating $LEG_VENV with $PYTHON"
    "$PYTHON" -m venv "$LEG_VENV"
  fi
fi

extras=$(lock_extras "$LOCKS/lf095.txt")
case "$LEG" in
  lf094|lfmain) lock=$LOCKS/$LEG.txt; extras=$(lock_extras "$lock") ;;
  msgspec-oldest)
    # the lower bounds of `msgspec>=X` and `filelock>=Y` in pyproject.toml (the libraries whose errors and locking
    # the data layer handles itself), installed exactly; the lmms extra (which needs a newer filelock) is left out
    floors=$("$PYTHON" -c 'import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(" ".join(f"{m.group(1)}=={m.group(2)}" for d in deps if (m := re.match(r"(msgspec|filelock)\s*>=\s*([\w.]+)", d.strip()))))' "$ROOT/pyproject.toml")
    lock=$LEG_VENV/lock.txt
    cp "$LOCKS/lf095.txt" "$lock.new"
    for pin in $floors; do
      sed -i "s/^${pin%%==*}==.*/$pin/" "$lock.new"
    done
    mv "$lock.new" "$lock"
    extras=test
    echo "[setup:$LEG] $floors (pyproject.toml's lower bounds), everything else as scripts/locks/lf095.txt"
    ;;
  latest)
    lock=$LEG_VENV/lock.txt
    resolve_lock latest "$lock.new" "$extras"
    mv "$lock.new" "$lock"
    LEG_DRIFT=$("$PYTHON" "$ROOT/scripts/lockfile.py" diff "$LOCKS/lf095.txt" "$lock")
    echo "[setup:$LEG] $LEG_DRIFT"
    ;;
esac

stamp="$LEG_VENV/.rejection-align-installed"
want=$(stamp_of "$ROOT/scripts/setup_leg.sh" "$lock" <(echo "$source_id"))
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup:$LEG] installing into $LEG_VENV, versions from $lock${source_id:+, LLaMA-Factory from $source_id}"
  if [ "$LEG" = lfmain ]; then
    unpack_main "$snapshot" "$LEG_VENV/src/llamafactory-main"
  fi
  leg_requirements "$LEG" "$extras" "$LEG_VENV/src/llamafactory-main"
  locked_install "$LEG_VENV" "$lock" "${LEG_REQS[@]}"
  echo "$want" > "$stamp"
fi

export PATH="$LEG_VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
