#!/usr/bin/env bash
# The test suite (fast tests on tiny models; add "-m slow" for the real-model runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
