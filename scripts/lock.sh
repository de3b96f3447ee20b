#!/usr/bin/env bash
# Regenerate the test environments' locks, scripts/locks/{lf095,lf094,lfmain}.txt: for each leg, pip resolves the
# newest versions pyproject.toml's ranges allow (plus the leg's LLaMA-Factory and the torch pair of scripts/legs.sh)
# in a fresh temporary environment, and the full resolved set is written in `pip freeze` form. Nothing is installed,
# so it takes a few minutes. Run it on purpose (docs/development.md, "Refreshing the locks"), then run
# `bash scripts/test.sh` and commit the locks with the fixes the new versions need.
#
#   bash scripts/lock.sh                  all three locks
#   bash scripts/lock.sh lf094            only some (lf095, lf094, lfmain)
#   EXTRAS=test bash scripts/lock.sh     the extras of rejection-align to lock (comma-separated), for every leg named;
#                                         by default test,lmms for lf095 (the full suite runs the lmms-eval tests
#                                         there) and test for the others
set -euo pipefail


HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/legs.sh"
mkdir -p "$LOCKS"
legs=("$@")
[ ${#legs[@]} -gt 0 ] || legs=(lf095 lf094 lfmain)

for leg in "${legs[@]}"; do
  start=$SECONDS
  out="$LOCKS/$leg.txt"
  tmp_out=$(mktemp)
  extras=${EXTRAS:-$([ "$leg" = lf095 ] && echo test,lmms || echo test)}
  if ! resolve_lock "$leg" "$tmp_out" "$extras"; then
    rm -f "$tmp_out"
    echo "[lock:$leg] FAILED: $out left as it was" >&2
    exit 1
  fi
  if [ -f "$out" ]; then
    "$PYTHON" "$HERE/lockfile.py" diff "$out" "$tmp_out" | sed "s|^|[lock:$leg] |; s|$tmp_out|the new lock|"
  fi
  chmod 644 "$tmp_out" && mv "$tmp_out" "$out"
  echo "[lock:$leg] wrote $out ($(grep -c '^[^#]' "$out") packages, $((SECONDS - start)) s)"
done
