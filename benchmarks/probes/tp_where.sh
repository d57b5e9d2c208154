#!/usr/bin/env bash
# Where a batch-1 step's time goes at Qwen3-8B shapes, TP=1 against TP=2, in one run on 2 GPUs:
# batch-1 latency with --profile (host and device time per step), then a kernel trace of rank 0
# (dependent launch on) for each, written gzipped under $OUT (per-step phases: the kernels before
# the first GEMV, the layers, the LM head and what follows it).
#   OUT=folder bash benchmarks/probes/tp_where.sh
set -uo pipefail
out=${OUT:?}; export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MILI_GIT_COMMIT=${MILI_GIT_COMMIT:-$(python3 -c 'from mili.bench.environment import git_commit; print(git_commit())')}
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
