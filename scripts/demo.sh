#!/usr/bin/env bash
# The main job: a real LLM (SmolLM2-135M-Instruct) learns from simulated user
# edits (CoRLL) and, side by side, from dueling feedback. About 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/corll simulate --task positive-review --algorithm corll --algorithm dueling \
  --rounds 30 --seed 0 --out runs/demo "$@"
