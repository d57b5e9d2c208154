#!/usr/bin/env bash
# Does the fused batch-1 decode step (mili/engine/fused_step.py) pay, and is it right? On one GPU:
# its GPU tests, then batch-1 latency with MILI_FUSED_STEP=1 and =0 interleaved (Qwen3-0.6B twice
# each, Qwen3-8B once each; random weights), then the kernels of a fused step (MILI_PDL=0: each
# kernel timed alone). Everything goes to the folder given as $1.
#   bash benchmarks/probes/fused_step_ab.sh OUT
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")
timeout 300 python3 -m pytest -o addopts="" -p no:cacheprovider -q -m gpu tests/test_fused_step.py \
  tests/test_kernels_linear.py tests/test_engine_cuda_graphs.py tests/test_engine_gpu.py -k "not design_workload" \
  > "$out/fused-step-tests-$card.log" 2>&1
tail -3 "$out/fused-step-tests-$card.log"
for model in Qwen3-0.6B Qwen3-8B Qwen3-0.6B; do
  slug=$(echo "$model" | tr '[:upper:]' '[:lower:]')
  for fused in 1 0; do
    MILI_FUSED_STEP=$fused timeout 200 python3 -m mili.bench.latency --model "$model" \
      --json "$out/fused-step-ab-$card-$slug-fused$fused-$(date +%s).json" 2>&1 | grep -i "^mili \|error" | head -3; echo "  ($model fused=$fused)"
  done
done
MILI_PDL=0 timeout 120 python3 benchmarks/probes/decode_kernels.py --model Qwen3-0.6B \
  --json "$out/decode-kernels-$card-qwen3-0.6b-fused.json" > "$out/decode-kernels-fused.log" 2>&1
tail -25 "$out/decode-kernels-fused.log"
