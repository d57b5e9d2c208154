#!/usr/bin/env bash
# A/B on one GPU of the batch-1 step's host work: this tree against a baseline tree (a folder
# holding the baseline commit's mili/ and solutions/, e.g. `git archive BASE mili solutions | tar x -C DIR`),
# interleaved in one call. Each side runs benchmarks/probes/host_step_gpu_probe.py (the host's
# time per part of the step) twice, then `mili bench latency --profile` at Qwen3-0.6B shapes;
# this tree also at Qwen3-8B shapes. JSON files go to OUT.
#   MILI_GIT_COMMIT=<this tree's commit> bash benchmarks/probes/batch_1_inputs_ab.sh BASELINE_DIR BASELINE_COMMIT OUT
set -uo pipefail
old=${1:?baseline folder}; old_commit=${2:?baseline commit}; out=${3:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MILI_IMPL=reference
new_commit=${MILI_GIT_COMMIT:-unknown}
side() {  # side old|new COMMAND...: run with that side's package first on the path
  local path=$PWD commit=$new_commit
  [[ $1 == old ]] && path=$old commit=$old_commit
  shift
  PYTHONPATH=$path MILI_GIT_COMMIT=$commit "$@"
}
for round in 1 2; do
  for which in old new; do
    echo "== probe $which, round $round"
    side $which python3 benchmarks/probes/host_step_gpu_probe.py --model Qwen3-0.6B \
      --json "$out/probe-$which-$round.json" 2>&1 | tail -12
  done
done
for which in old new; do
  echo "== latency $which"
  side $which python3 -m mili.bench.latency --model Qwen3-0.6B --profile --repeats 3 \
    --json "$out/latency-qwen3-0.6b-$which.json" 2>&1 | tail -6
done
echo "== latency new, Qwen3-8B"
side new python3 -m mili.bench.latency --model Qwen3-8B --repeats 3 --json "$out/latency-qwen3-8b-new.json" 2>&1 | tail -4
