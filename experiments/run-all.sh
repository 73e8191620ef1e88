#!/usr/bin/env bash
# Every committed experiment grid, one after another: the coactive-learning claims (docs/results.md)
# and one edit, three signals (docs/edits.md). Resumable: re-run after an interruption and
# finished runs are skipped, unfinished ones continue from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for config in experiments/paper-headline.yaml experiments/paper-k.yaml experiments/paper-alpha.yaml \
              experiments/paper-epsilon.yaml experiments/paper-prompted-expert.yaml experiments/paper-dpo-expert.yaml \
              experiments/edits-prelude-summarize.yaml experiments/edits-prelude-email.yaml \
              experiments/edits-prelude-summarize-shift.yaml; do
  .venv/bin/corll experiment "$config"
done
.venv/bin/corll verdicts experiments/claims.yaml
