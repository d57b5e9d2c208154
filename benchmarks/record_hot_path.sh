#!/usr/bin/env bash
# Records the engine's hot-path figures on one CUDA GPU into the folder given as $1:
# the GPU tests, the offline workload (256 requests, lengths U[100, 1024]) with its step profile,
# 256 prompts x 512 -> 256 tokens against HF generate, batch-1 latency at Qwen3-0.6B and 8B
# shapes (random weights) with the kernels of one batch-1 decode step, the ledger of the course's stages and a profiled timeline.
#   bash benchmarks/record_hot_path.sh OUT [tests|bench|ledger|all]
set -uo pipefail
out=${1:?output folder}; what=${2:-all}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")
bench() { python3 -c "import sys; from mili.cli import main; sys.exit(main(['bench'] + sys.argv[1:]))" "$@"; }
if [[ $what == tests || $what == all ]]; then
  timeout 240 python3 -m pytest -o addopts="" -p no:cacheprovider -q -m gpu --timeout 120 tests/test_engine_cuda_graphs.py \
    tests/test_engine_gpu.py tests/test_kernels_model.py tests/test_attention_model.py \
    -k "not design_workload" 2>&1 | tee "$out/gpu-tests-$card.log" | tail -5
fi
if [[ $what == bench || $what == all ]]; then
  python3 benchmarks/probes/decode_kernels.py --model Qwen3-0.6B --json "$out/decode-kernels-$card-qwen3-0.6b.json" \
    > "$out/decode-kernels-$card-qwen3-0.6b.log" 2>&1
  bench latency --model Qwen3-0.6B --compare hf --profile --json "$out/latency-$card-qwen3-0.6b.json"
  bench latency --model Qwen3-8B --json "$out/latency-$card-qwen3-8b.json"
  bench throughput --model Qwen3-0.6B --profile --json "$out/throughput-$card-s9.json"
  bench throughput --model Qwen3-0.6B --num-seqs 256 --prompt-len 512 --output-len 256 --compare hf \
    --json "$out/throughput-$card-256x512.json"
fi
if [[ $what == ledger || $what == all ]]; then
  bench ledger --model Qwen3-0.6B --json "$out/ledger-$card.json" --plot "$out/ledger-$card.png" \
    --timeline "$out/timeline-$card.json" --timeline-plot "$out/timeline-$card.png"
fi
