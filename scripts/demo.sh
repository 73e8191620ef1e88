#!/usr/bin/env bash
# The main job: a real LLM (SmolLM2-135M-Instruct) learns from simulated user
# edits (CoRLL) and, side by side in a second process, from dueling feedback; both are evaluated on
# all 40 held-out prompts × 4 samples with the same random numbers and compared prompt by prompt.
# About 2.5 minutes on 2 cores with native bf16 (AVX512-BF16); docs/demo.md says which CPUs it was timed on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/corll simulate --task positive-review --algorithm corll --algorithm dueling \
  --rounds 12 --batch-size 4 --lr 6e-4 --eval-every 12 --eval-prompts 40 --eval-samples 4 \
  --jobs 2 --seed 0 --out runs/demo "$@"
