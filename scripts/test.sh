#!/usr/bin/env bash
# Run the test suite (CPU only, offline) in the project's virtual environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
exec python -m pytest "$@"
