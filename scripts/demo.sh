#!/usr/bin/env bash
# The main job on embedded defaults: build a tiny LLaVA, mix the shipped demo data, train the method and its
# baseline twin with `llamafactory-cli train`, show a masked rejection example and P(</s>) after the rejection
# sentence in both models, and judge. CPU only, offline.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
exec rejection-align demo "$@"
