#!/usr/bin/env bash
# Does the fused batch-1 decode step (mili/engine/fused_step.py) pay, and is it right? On one GPU:
# its tests (every kernel against the reference on the GPU) and the CUDA-graph tests, then, with
# MILI_FUSED_STEP=1 and =0 in turn, batch-1 latency with host and device time per step
# (Qwen3-0.6B; random weights) and the kernels of a step at Qwen3-8B and 0.6B shapes (MILI_PDL=0:
# each kernel timed alone). Everything goes to the folder given as $1.
#   bash benchmarks/probes/fused_step_ab.sh OUT
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")
log="$out/fused-step-$card.log"
timeout 300 python3 -m pytest -o addopts="" -p no:cacheprovider -q --tb=short tests/test_fused_step.py \
  tests/test_engine_cuda_graphs.py > "$log" 2>&1
tail -3 "$log"
for fused in 1 0; do
  MILI_FUSED_STEP=$fused timeout 200 python3 -m mili.bench.latency --model Qwen3-0.6B --profile \
    --json "$out/fused-step-ab-$card-qwen3-0.6b-fused$fused.json" 2>&1 | grep -i "^mili \|decode\|error" | head -5
  for model in Qwen3-8B Qwen3-0.6B; do
    echo "== kernels $model fused=$fused" >> "$log"
    MILI_FUSED_STEP=$fused MILI_PDL=0 timeout 150 python3 benchmarks/probes/decode_kernels.py --model $model \
      2>&1 | grep -B2 -A14 "kernels per step" >> "$log"
  done
done
