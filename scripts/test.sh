#!/usr/bin/env bash
# Run the test suite (CPU only, offline).
#
#   bash scripts/test.sh          everything, in three legs, one per LLaMA-Factory version users have:
#                                   0.9.5   the full suite in .venv
#                                   0.9.4   what touches LLaMA-Factory (LEG_TESTS below: the hook, the install test,
#                                           generation through its template and loader, the tiny models and the
#                                           demo) in .venv-lf094 (transformers 4.57)
#                                   main    the same in .venv-lfmain, LLaMA-Factory main installed editable from
#                                           $REJECTION_ALIGN_VENDOR_DIR/llamafactory-main-*.tar.gz (default
#                                           ../shared/vendor beside the repository); skipped with a notice if absent
#                                 one summary line per leg; the exit status is non-zero if any leg failed
#   REJECTION_ALIGN_LEGS="0.9.4 main" bash scripts/test.sh     only those legs
#   bash scripts/test.sh ARGS     pytest ARGS in .venv only (e.g. -q tests/hook -k drop)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ $# -gt 0 ]; then
  set -e
  source "$HERE/setup_env.sh"
  cd "$ROOT"
  exec python -m pytest "$@"
fi

# what depends on LLaMA-Factory's internals or on the transformers major version
LEG_TESTS=(tests/hook tests/test_install.py tests/eval/test_prompt_parity.py tests/eval/test_generate.py
           tests/eval/test_qwen2_vl_e2e.py tests/demo)
LOGS=$(mktemp -d)
summary=()
failed=0

# run_leg NAME SETUP_COMMAND PYTEST_ARGS...: set up the leg's environment, run pytest, record one summary line
run_leg() {
  local name=$1 setup=$2
  shift 2
  case " ${REJECTION_ALIGN_LEGS:-0.9.5 0.9.4 main} " in *" $name "*) ;; *) return 0 ;; esac
  local log="$LOGS/$name.log" start=$SECONDS rc
  echo "=============================== leg: LLaMA-Factory $name ==============================="
  (
    set -e
    eval "$setup"
    if [ -n "${LEG_SKIP:-}" ]; then
      echo "NOTICE: leg $name skipped: $LEG_SKIP"
      echo "$LEG_SKIP" > "$LOGS/$name.notice"
      exit 99
    fi
    cd "$ROOT"
    echo "[leg $name] $(python -c 'import importlib.metadata as m; print("llamafactory", m.version("llamafactory"), "transformers", m.version("transformers"), "torch", m.version("torch"))')"
    set +e
    python -m pytest "$@" 2>&1 | tee "$log"
    exit "${PIPESTATUS[0]}"
  )
  rc=$?
  local took=$((SECONDS - start)) result
  result=$(grep -E "^=*.* (passed|failed|error|errors|skipped|no tests ran).* in [0-9.]+s" "$log" 2>/dev/null | tail -n 1 | tr -d '=' | xargs || true)
  case $rc in
    0) summary+=("PASS  LLaMA-Factory $name: $result (leg ${took}s)") ;;
    99) summary+=("SKIP  LLaMA-Factory $name: skipped, $(cat "$LOGS/$name.notice" 2>/dev/null) (leg ${took}s)") ;;
    5) summary+=("FAIL  LLaMA-Factory $name: no tests were collected (leg ${took}s)"); failed=1 ;;
    *) summary+=("FAIL  LLaMA-Factory $name: exit $rc; ${result:-setup failed} (leg ${took}s)"); failed=1 ;;
  esac
}

run_leg 0.9.5 'source "$HERE/setup_env.sh"' -q
run_leg 0.9.4 'LEG=lf094; source "$HERE/setup_leg.sh"' -q "${LEG_TESTS[@]}"
run_leg main 'LEG=lfmain; source "$HERE/setup_leg.sh"' -q "${LEG_TESTS[@]}"

echo "=============================== summary ==============================="
printf '%s\n' "${summary[@]}"
rm -rf "$LOGS"
exit "$failed"
