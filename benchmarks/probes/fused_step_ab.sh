#!/usr/bin/env bash
# Does the fused batch-1 decode step (mili/engine/fused_step.py) pay, and is it right? On one GPU:
# its tests (the kernels against the references, on the GPU) and the CUDA-graph tests; batch-1
# latency with MILI_FUSED_STEP=1 and =0 in turn (Qwen3-0.6B twice each with host and device time
# per step, the second fused run with HF generate as the peer; Qwen3-8B once each; random
# weights); the kernels of a 0.6B step both ways (MILI_PDL=0: each kernel timed alone).
# Everything goes to the folder given as $1.
#   bash benchmarks/probes/fused_step_ab.sh OUT
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")
log="$out/fused-step-$card.log"
timeout 300 python3 -m pytest -o addopts="" -p no:cacheprovider -q --tb=short tests/test_fused_step.py \
  tests/test_engine_cuda_graphs.py tests/test_engine_gpu.py -k "not design_workload" > "$log" 2>&1
tail -3 "$log"
latency() {  # latency MODEL FUSED RUN [OPTIONS...]
  local slug
  slug=$(echo "$1" | tr '[:upper:]' '[:lower:]')
  MILI_FUSED_STEP=$2 timeout 200 python3 -m mili.bench.latency --model "$1" "${@:4}" \
    --json "$out/fused-step-ab-$card-$slug-fused$2-run$3.json" 2>&1 | grep -i "^mili \|^decode\|error" | head -3
  echo "  ($1 fused=$2 run $3)"
}
latency Qwen3-0.6B 1 1 --profile
latency Qwen3-0.6B 0 1 --profile
latency Qwen3-0.6B 1 2 --profile --compare hf
latency Qwen3-0.6B 0 2 --profile
for fused in 1 0; do latency Qwen3-8B $fused 1; done
for fused in 1 0; do
  echo "== kernels Qwen3-0.6B fused=$fused" >> "$log"
  MILI_FUSED_STEP=$fused MILI_PDL=0 timeout 150 python3 benchmarks/probes/decode_kernels.py --model Qwen3-0.6B \
    2>&1 | grep -A12 "kernels per step" >> "$log"
done
