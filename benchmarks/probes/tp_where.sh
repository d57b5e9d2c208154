#!/usr/bin/env bash
set -uo pipefail
out=${OUT:?}; export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MILI_GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo 07859cb)
nvidia-smi --query-gpu=name --format=csv,noheader
for tp in 1 2; do
  timeout -k 10 150 python3 -m mili.bench.latency --model Qwen3-8B --tensor-parallel-size $tp \
    --prompt-len 128 --new-tokens 128 --repeats 3 --profile --json "$out/latency-8b-tp$tp-profile.json" 2>&1 | tail -8
done
for tp in 2 1; do
  timeout -k 10 150 python3 benchmarks/probes/decode_kernels.py --model Qwen3-8B --tensor-parallel-size $tp --steps 10 \
    --trace "$out/trace-8b-tp$tp.json" --json "$out/kernels-8b-tp$tp-pdl-on.json" 2>&1 | grep -v "^ " | head -30
  gzip "$out/trace-8b-tp$tp.json"
done
