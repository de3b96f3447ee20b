# What each test environment ("leg") is made of, and how it is installed from its lock. Sourced by setup_env.sh,
# setup_leg.sh, lock.sh and test.sh (bash functions and variables only; nothing runs here).
#
#   lf095           LLaMA-Factory 0.9.5 (the full suite, the demo)        lock: scripts/locks/lf095.txt
#   lf094           LLaMA-Factory 0.9.4 with transformers 4.57.x          lock: scripts/locks/lf094.txt
#   lfmain          LLaMA-Factory main from $VENDOR_DIR/llamafactory-main-*.tar.gz, editable
#                                                                         lock: scripts/locks/lfmain.txt
#   msgspec-oldest  lf095's lock with msgspec at pyproject.toml's lower bound
#   latest          the newest versions pyproject's ranges allow (no lock: resolved on the spot)
# Every leg asks for the same torch/torchvision pair (below) and rejection-align editable with the lock's extras.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENDOR_DIR=${REJECTION_ALIGN_VENDOR_DIR:-$ROOT/../shared/vendor}
LOCKS=$ROOT/scripts/locks

# A torch/torchvision pair whose wheels import together (PyPI's torchvision does not import beside every torch
# build); LLaMA-Factory needs both. The locks pin this pair's whole family for the platform that made them.
case "$(uname -m)" in
  aarch64|arm64) TORCH_PAIR=("torch==2.9.1" "torchvision==0.24.1") ;;
  *) TORCH_PAIR=("torch==2.14.1" "torchvision==0.29.1") ;;
esac

# lock_extras LOCK: the rejection-align extras the lock was resolved with (its "# extras:" line; default test)
lock_extras() {
  local extras
  extras=$(sed -n 's/^# extras: //p' "$1" 2>/dev/null | head -n 1)
  echo "${extras:-test}"
}

# leg_requirements LEG EXTRAS [MAIN_CLONE]: set LEG_REQS (pip arguments) and LEG_SPEC (one line, for people)
# for a leg. lfmain needs MAIN_CLONE, a folder holding the unpacked snapshot (see unpack_main).
leg_requirements() {
  local leg=$1 extras=$2 clone=${3:-}
  LEG_REQS=("${TORCH_PAIR[@]}")
  case "$leg" in
    lf095|msgspec-oldest) LEG_REQS+=("llamafactory==0.9.5") ;;
    lf094) LEG_REQS+=("llamafactory==0.9.4" "transformers>=4.57.1,<4.58") ;;
    lfmain) LEG_REQS+=(-e "$clone") ;;
    latest) ;;  # llamafactory: whatever pyproject's range allows
    *) echo "[setup] unknown leg '$leg'" >&2; return 2 ;;
  esac
  LEG_REQS+=(-e "$ROOT[$extras]")
  LEG_SPEC="${LEG_REQS[*]}"
  LEG_SPEC=${LEG_SPEC//"-e $ROOT"/"rejection-align"}
  LEG_SPEC=${LEG_SPEC//"-e $clone"/"llamafactory (main snapshot, editable)"}
}

# main_snapshot: the newest LLaMA-Factory main source snapshot in VENDOR_DIR, or nothing
main_snapshot() {
  ls "$VENDOR_DIR"/llamafactory-main-*.tar.gz 2>/dev/null | sort | tail -n 1 || true
}

# unpack_main SNAPSHOT DIR: the snapshot's source tree into DIR (replaced)
unpack_main() {
  rm -rf "$2" && mkdir -p "$2"
  tar -xzf "$1" -C "$2" --strip-components=1
}

# resolve_lock LEG OUT [EXTRAS]: the newest set the ranges allow for LEG, resolved by pip in a fresh temporary
# environment (`pip install --dry-run --report`: nothing is installed, so it takes about a minute), written to OUT as
# a lock.
resolve_lock() {
  local leg=$1 out=$2 extras=${3:-test} tmp snapshot="" source=""
  tmp=$(mktemp -d)
  if [ "$leg" = lfmain ]; then
    snapshot=$(main_snapshot)
    [ -n "$snapshot" ] || { echo "[lock:$leg] no LLaMA-Factory main snapshot in $VENDOR_DIR" >&2; rm -rf "$tmp"; return 2; }
    unpack_main "$snapshot" "$tmp/llamafactory-main"
    source=" from $(basename "$snapshot")"
  fi
  leg_requirements "$leg" "$extras" "$tmp/llamafactory-main" || { rm -rf "$tmp"; return 2; }
  echo "[lock:$leg] resolving in a fresh environment: $LEG_SPEC$source"
  "$PYTHON" -m venv "$tmp/venv"
  # a current pip reads wheels' metadata without downloading them (PEP 658): half the time of the bundled one
  "$tmp/venv/bin/python" -m pip install -q --upgrade pip
  if ! "$tmp/venv/bin/python" -m pip install -q --dry-run --ignore-installed --report "$tmp/report.json" \
      "${LEG_REQS[@]}"; then
    rm -rf "$tmp"
    return 1
  fi
  "$tmp/venv/bin/python" "$ROOT/scripts/lockfile.py" write "$tmp/report.json" "$out" --leg "$leg" \
    --spec "$LEG_SPEC$source" --extras "$extras" --exclude rejection-align
  rm -rf "$tmp"
}

# clone_venv FROM TO: a hard-linked copy of environment FROM at TO (torch's GBs are not unpacked again). pip replaces
# files rather than editing them, so the copy never changes the original; only the scripts' #! lines name the
# environment, and they are rewritten (a new file: the link is broken).
clone_venv() {
  local from=$1 to=$2 script
  rm -rf "$to.partial"
  cp -al "$from" "$to.partial"
  rm -f "$to.partial/.rejection-align-installed"
  for script in "$to.partial"/bin/*; do
    if [ -f "$script" ] && [ ! -L "$script" ] && head -n 1 "$script" | grep -q "^#!$from/bin/"; then
      sed -i "1s|^#!$from/bin/|#!$to/bin/|" "$script"
    fi
  done
  mv "$to.partial" "$to"
}

# locked_install VENV LOCK PIP_ARGS...: one pip call with LOCK as constraints; then what the lock does not hold and
# nothing needs is uninstalled (a cloned or older environment), the versions are checked against the lock, and the
# installed files are byte-compiled on every core (pip compiles the 18,000 files one after another: about 70 s of
# CPU on a 2-core machine, the largest CPU cost of a first install).
locked_install() {
  local venv=$1 lock=$2 constraints extras site
  shift 2
  constraints=$(mktemp)
  "$venv/bin/python" "$ROOT/scripts/lockfile.py" constraints "$lock" > "$constraints"
  "$venv/bin/python" -m pip install -q --no-compile -c "$constraints" "$@" || { rm -f "$constraints"; return 1; }
  rm -f "$constraints"
  extras=$("$venv/bin/python" "$ROOT/scripts/lockfile.py" extras "$lock")
  if [ -n "$extras" ]; then
    echo "[setup] not in $(basename "$lock"), uninstalled: $(echo $extras)"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip uninstall -q -y $extras
  fi
  "$venv/bin/python" "$ROOT/scripts/lockfile.py" check "$lock"
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  # errors are files that are not Python 3 (templates, fixtures) that pip would skip as well
  "$venv/bin/python" -m compileall -qq -j 0 "$site" "$ROOT/src/rejection_align" >/dev/null 2>&1 || true
}

# stamp_of FILE...: what an environment was installed from, as one hash (the set-up scripts, pyproject, the lock)
stamp_of() {
  cat "$ROOT/pyproject.toml" "$ROOT/scripts/legs.sh" "$ROOT/scripts/lockfile.py" "$@" | sha256sum | cut -d' ' -f1
}
