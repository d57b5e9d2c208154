#!/usr/bin/env bash
# batch-1 latency at Qwen3-8B shapes, TP=1 and TP=2, and a kernel profile of rank 0 at TP=2
# (dependent launch off, so each kernel's time is its own): bash benchmarks/probes/tp_baseline.sh OUT
set -uo pipefail
out=${1:?output folder}; mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MILI_GIT_COMMIT=${MILI_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
nvidia-smi --query-gpu=name --format=csv
for tp in 1 2; do
  timeout -k 10 120 python3 -m mili.bench.latency --model Qwen3-8B --tensor-parallel-size $tp \
    --prompt-len 128 --new-tokens 128 --repeats 3 --json "$out/latency-8b-tp$tp.json"
done
MILI_PDL=0 timeout -k 10 150 python3 benchmarks/probes/decode_kernels.py --model Qwen3-8B --tensor-parallel-size 2 \
  --json "$out/kernels-8b-tp2-pdl-off.json" | tail -30
