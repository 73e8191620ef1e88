#!/usr/bin/env bash
# Every committed experiment grid, one after another: the coactive-learning claims (docs/results.md)
# learning from user edits (docs/edits.md; the short-document pilot's configs, edits-prelude-*.yaml,
# are run by hand) and learning from reactions (docs/reactions.md). Resumable: re-run after an interruption and
# finished runs are skipped, unfinished ones continue from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for config in experiments/paper-headline.yaml experiments/paper-k.yaml experiments/paper-alpha.yaml \
              experiments/paper-k-alpha.yaml experiments/paper-k-oracle.yaml experiments/paper-epsilon.yaml \
              experiments/paper-prompted-expert.yaml \
              experiments/paper-dpo-expert.yaml experiments/edits-long.yaml experiments/edits-long-shift.yaml \
              experiments/reactions-rluf.yaml; do
  .venv/bin/corll experiment "$config"
done
.venv/bin/python experiments/reactions.py  # after reactions-rluf: its finished policies are variants
.venv/bin/corll verdicts experiments/claims.yaml
.venv/bin/corll verdicts experiments/claims-edits.yaml
.venv/bin/corll verdicts experiments/claims-reactions.yaml
