#!/usr/bin/env bash
# The tensor-parallel batch-1 step with and without its all-reduce kernels (MILI_FUSED_ALL_REDUCE),
# on 2 GPUs, in one run: the GPU tensor-parallel tests first, then batch-1 latency at Qwen3-8B
# shapes with TP=1, and with TP=2 alternating off and on (two rounds each); with PROFILE=1 then a
# kernel profile of rank 0 at TP=2 with the pushed sums (dependent launch off).
#   bash benchmarks/probes/fused_all_reduce_ab.sh OUT
set -uo pipefail
out=${1:?output folder}; mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MILI_GIT_COMMIT=${MILI_GIT_COMMIT:-$(python3 -c 'from mili.bench.environment import git_commit; print(git_commit())')}
nvidia-smi --query-gpu=name --format=csv,noheader
timeout -k 10 240 python3 -m pytest -o addopts="" -o faulthandler_timeout=200 -p no:cacheprovider -q -m gpu \
  tests/test_tensor_parallel_gpu.py tests/test_one_shot_gpu.py 2>&1 | tail -15
latency() {  # latency TP FUSED NAME
  MILI_FUSED_ALL_REDUCE=$2 timeout -k 10 120 python3 -m mili.bench.latency --model Qwen3-8B --tensor-parallel-size "$1" \
    --prompt-len 128 --new-tokens 128 --repeats 3 --json "$out/latency-8b-$3.json"
}
latency 1 1 tp1
for round in 1 2; do
  latency 2 0 "tp2-kernels-$round"
  latency 2 1 "tp2-sums-in-gemvs-$round"
done
if [[ ${PROFILE:-0} == 1 ]]; then
  MILI_PDL=0 timeout -k 10 150 python3 benchmarks/probes/decode_kernels.py --model Qwen3-8B --tensor-parallel-size 2 \
    --json "$out/kernels-8b-tp2-sums-in-gemvs-pdl-off.json" | grep -v "^ " | tail -12
fi
