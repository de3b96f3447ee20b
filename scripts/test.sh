#!/usr/bin/env bash
# Run the test suite (CPU only, offline) in environments installed from the committed locks, scripts/locks/*.txt
# (docs/development.md: the legs, refreshing the locks, the drift leg).
#
#   bash scripts/test.sh          the default legs, one summary line each (with its time); non-zero exit if any failed:
#                                   0.9.5           the full suite in .venv (LLaMA-Factory 0.9.5, locks/lf095.txt)
#                                   0.9.4           what touches LLaMA-Factory (LEG_TESTS below: the hook, the install
#                                                   test, generation through its template and loader, the tiny models
#                                                   and the demo) in .venv-lf094 (transformers 4.57, locks/lf094.txt)
#                                   main            the same in .venv-lfmain, LLaMA-Factory main installed editable
#                                                   from $REJECTION_ALIGN_VENDOR_DIR/llamafactory-main-*.tar.gz
#                                                   (default ../shared/vendor beside the repository; skipped with a
#                                                   notice if absent), locks/lfmain.txt
#                                   msgspec-oldest  the data tests (OLDEST_MSGSPEC_TESTS below) with msgspec and filelock
#                                                   at pyproject.toml's lower bounds (.venv-msgspec-oldest)
#   REJECTION_ALIGN_LEGS="0.9.4 main" bash scripts/test.sh     only those legs
#   REJECTION_ALIGN_LEGS=latest bash scripts/test.sh          the drift leg (never by default): the full suite in
#                                   .venv-latest, the newest versions pyproject's ranges allow (no lock), and which
#                                   packages differ from locks/lf095.txt
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
# the data layer under the oldest msgspec and filelock allowed: its error messages must not depend on msgspec's own
# wording, and its file lock must hold with the oldest filelock
OLDEST_MSGSPEC_TESTS=(tests/data)
LOGS=$(mktemp -d)
summary=()
failed=0

# run_leg NAME LABEL SETUP_COMMAND PYTEST_ARGS...: set up the leg's environment, run pytest, record one summary line
run_leg() {
  local name=$1 label=$2 setup=$3
  shift 3
  case " ${REJECTION_ALIGN_LEGS:-0.9.5 0.9.4 main msgspec-oldest} " in *" $name "*) ;; *) return 0 ;; esac
  local log="$LOGS/$name.log" start=$SECONDS rc
  echo "=============================== leg: $label ==============================="
  (
    set -e
    eval "$setup"
    echo $((SECONDS - start)) > "$LOGS/$name.setup"
    if [ -n "${LEG_SKIP:-}" ]; then
      echo "NOTICE: leg $name skipped: $LEG_SKIP"
      echo "$LEG_SKIP" > "$LOGS/$name.notice"
      exit 99
    fi
    [ -z "${LEG_DRIFT:-}" ] || echo "$LEG_DRIFT" > "$LOGS/$name.drift"
    cd "$ROOT"
    echo "[leg $name] $(python -c 'import importlib.metadata as m; print(*(f"{p} {m.version(p)}" for p in ("llamafactory", "transformers", "torch", "msgspec")), sep=", ")')"
    set +e
    python -m pytest "$@" 2>&1 | tee "$log"
    exit "${PIPESTATUS[0]}"
  )
  rc=$?
  local took=$((SECONDS - start)) setup_s result times
  setup_s=$(cat "$LOGS/$name.setup" 2>/dev/null || echo "$took")
  times="leg ${took}s: set-up ${setup_s}s, tests $((took - setup_s))s"
  result=$(grep -E "^=*.* (passed|failed|error|errors|skipped|no tests ran|deselected).* in [0-9.]+s" "$log" 2>/dev/null | tail -n 1 | tr -d '=' | xargs || true)
  case $rc in
    0) summary+=("PASS  $label: $result ($times)") ;;
    99) summary+=("SKIP  $label: skipped, $(cat "$LOGS/$name.notice" 2>/dev/null) ($times)") ;;
    5) summary+=("FAIL  $label: no tests were collected ($times)"); failed=1 ;;
    *) summary+=("FAIL  $label: exit $rc; ${result:-setup failed} ($times)"); failed=1 ;;
  esac
}

run_leg 0.9.5 "LLaMA-Factory 0.9.5" 'source "$HERE/setup_env.sh"' -q
run_leg 0.9.4 "LLaMA-Factory 0.9.4" 'LEG=lf094; source "$HERE/setup_leg.sh"' -q "${LEG_TESTS[@]}"
run_leg main "LLaMA-Factory main" 'LEG=lfmain; source "$HERE/setup_leg.sh"' -q "${LEG_TESTS[@]}"
run_leg msgspec-oldest "oldest msgspec and filelock allowed, data tests" \
  'LEG=msgspec-oldest; source "$HERE/setup_leg.sh"' -q "${OLDEST_MSGSPEC_TESTS[@]}"
run_leg latest "latest (newest versions the ranges allow)" 'LEG=latest; source "$HERE/setup_leg.sh"' -q

echo "=============================== summary ==============================="
printf "%s\n" "${summary[@]}"
echo "all legs: ${SECONDS}s"
if [ -f "$LOGS/latest.drift" ]; then
  echo "latest vs scripts/locks/lf095.txt: $(cat "$LOGS/latest.drift")"
fi
rm -rf "$LOGS"
exit "$failed"
