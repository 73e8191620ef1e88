#!/usr/bin/env bash
# Every per-CPU measurement the documentation carries, for the CPU at hand, each written under that CPU's own
# name (vendor and instruction set, e.g. amd-avx2 or intel-amx): the main job's robustness over five seeds,
# the precision of each phase, the fair side-by-side with the TRL loop, the speed levers, a decoding step by
# width, the engine alone, and both serving engines under load. Cheapest-to-most-telling first; a stage whose
# output already exists for this CPU is skipped, so the script can be stopped and run again (delete a result
# to measure it again). Takes a few hours on 2 cores; nothing else should run meanwhile.
#
#     bash benchmarks/new_cpu.sh            # all stages
#     bash benchmarks/new_cpu.sh demo serve # only these (demo phases throughput levers step engine serve)
set -euo pipefail
cd "$(dirname "$0")/.."
all=(demo phases throughput levers step engine serve)
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=("${all[@]}")
for stage in "${stages[@]}"; do
  [[ " ${all[*]} " == *" $stage "* ]] || { echo "unknown stage '$stage': use ${all[*]}" >&2; exit 2; }
done
bash scripts/setup.sh
PY=.venv/bin/python
tag=$($PY -c "from corll.hardware import detect; print(detect().tag)")
echo "measuring this CPU as '$tag': ${stages[*]}" >&2

run() {  # run STAGE OUTPUT COMMAND...: the command unless OUTPUT exists already
  local stage=$1 output=$2
  shift 2
  if [ -e "$output" ]; then
    echo "[$stage] $output exists: skipped" >&2
    return
  fi
  echo "[$stage] $*" >&2
  local started=$SECONDS
  "$@"
  echo "[$stage] done in $(( (SECONDS - started) / 60 )) min: $output" >&2
}

for stage in "${stages[@]}"; do
  case $stage in
    demo)  # resumes unfinished seeds by itself, so it always runs
      $PY benchmarks/demo_robustness.py --seeds 0,1,2,3,4 ;;
    phases) run phases "results/precision-phases/$tag" $PY benchmarks/precision_phases.py --repeats 3 ;;
    throughput)
      .venv/bin/pip install --quiet -e ".[bench]"  # the TRL loop it compares with
      run throughput "results/throughput/$tag-table.md" \
        $PY benchmarks/throughput.py --rounds 3 --out "results/throughput/$tag-table.md" ;;
    levers) run levers "results/levers/$tag-table.md" \
      $PY benchmarks/levers.py --repeats 2 --out "results/levers/$tag-table.md" ;;
    step) run step "results/decode-step/$tag-by-hand-table.md" \
      $PY benchmarks/decode_step.py --by-hand --profile --out results/decode-step ;;
    engine) run engine "results/engine-load/$tag-table.md" \
      $PY benchmarks/engine_load.py --adapters 0,8 --out results/engine-load ;;
    serve)
      bash scripts/setup-vllm.sh
      run serve "results/serve-load/$tag-table.md" $PY benchmarks/serve_load.py --adapters 0,8,64,256 \
        --engines corll,vllm --baseline f0aaa06 --precisions fp32,bf16 --out results/serve-load ;;
  esac
done
