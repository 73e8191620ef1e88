#!/usr/bin/env bash
# Every paper-reproduction experiment, one after another. Resumable: re-run after an
# interruption and finished runs are skipped, unfinished ones continue from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for config in experiments/paper-prompted-expert.yaml experiments/paper-dpo-expert.yaml; do
  .venv/bin/corll experiment "$config"
done
