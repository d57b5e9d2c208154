#!/usr/bin/env bash
# 8B TP=2 at 47b1003 (summing norm reads at once + pushes read addresses early + final norm summed) against
# 85ca89f (baseline) and 2ad3574 (the norm and final-norm change alone), alternating; then GPU TP tests.
out=$OUT/ab; mkdir -p "$out"
export PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/gpus.txt"
latency() {  # latency TP NAME TREE COMMIT
  (cd "$3" && env PYTHONPATH="$3" MILI_GIT_COMMIT="$4" timeout -k 10 120 python3 -m mili.bench.latency --model Qwen3-8B \
    --tensor-parallel-size "$1" --prompt-len 128 --new-tokens 128 --repeats 3 --json "$out/latency-8b-$2.json" 2>&1 \
    | grep -E "^mili|Error|error" | head -5 | sed "s|^|$2: |") | tee -a "$out/ab.log"
}
latency 2 tp2-both-0 "$PWD" 47b1003
if ! grep -q "^tp2-both-0: mili" "$out/ab.log"; then
  echo "new tree failed: tests only" | tee -a "$out/ab.log"
else
  latency 1 tp1 "$PWD" 47b1003
  for round in 1 2; do
    latency 2 "tp2-baseline-$round" "$PWD/_baseline" 85ca89f
    latency 2 "tp2-norm-$round" "$PWD/_variant_norm" 2ad3574
    latency 2 "tp2-both-$round" "$PWD" 47b1003
  done
fi
PYTHONPATH=$PWD timeout -k 10 250 python3 -m pytest -o addopts="" -o faulthandler_timeout=230 -p no:cacheprovider -q -m gpu \
  tests/test_tensor_parallel_gpu.py tests/test_one_shot_gpu.py 2>&1 | tail -15 | tee "$out/gpu-tests-47b1003.log"
tar -czf $OUT/ab.tgz -C $OUT ab
