#!/usr/bin/env bash
# The test suite (fast tests on tiny models; add "-m slow" for the real-model runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The vLLM engine's tests serve through vLLM itself, from its own environment (.venv-vllm).
bash scripts/setup-vllm.sh
# The store tests need a PostgreSQL server binary (they start a throw-away server themselves).
if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q postgresql >/dev/null
  else
    echo "PostgreSQL is not installed: install Debian's 'postgresql' package for the store tests" >&2
  fi
fi
# The browser editor's tests drive a real headless Chromium.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null
  else
    echo "Chromium is not installed: install Debian's 'chromium' and 'chromium-driver' packages for the browser tests" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
