#!/usr/bin/env bash
# 8B at b1ec3ec (the attention kernel reads its inputs before its wait) against 47b1003, TP=1 and TP=2,
# alternating, two rounds; first the fused-step tests on one GPU (the kernel against the modules).
out=$OUT/ab2; mkdir -p "$out"
export PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/gpus.txt"
[[ ${TESTS:-1} == 0 ]] || PYTHONPATH=$PWD timeout -k 10 150 python3 -m pytest -o addopts="" -p no:cacheprovider -q tests/test_fused_step.py 2>&1 \
  | tail -4 | tee "$out/fused-step-tests-b1ec3ec.log"
[[ ${TESTS:-1} == 0 ]] || grep -q " passed" "$out/fused-step-tests-b1ec3ec.log" && ! grep -q "failed" "$out/fused-step-tests-b1ec3ec.log" || { tar -czf $OUT/ab2.tgz -C $OUT ab2; exit 1; }
latency() {  # latency TP NAME TREE COMMIT
  (cd "$3" && env PYTHONPATH="$3" MILI_GIT_COMMIT="$4" timeout -k 10 120 python3 -m mili.bench.latency --model Qwen3-8B \
    --tensor-parallel-size "$1" --prompt-len 128 --new-tokens 128 --repeats 3 --json "$out/latency-8b-$2.json" 2>&1 \
    | grep -E "^mili|Error|error" | head -5 | sed "s|^|$2: |") | tee -a "$out/ab.log"
}
for round in $(seq ${ROUNDS:-2}); do
  latency 1 "tp1-before-$round" "$PWD/_variant_norm" 47b1003
  latency 1 "tp1-$round" "$PWD" b1ec3ec
  latency 2 "tp2-before-$round" "$PWD/_variant_norm" 47b1003
  latency 2 "tp2-$round" "$PWD" b1ec3ec
done
tar -czf $OUT/ab2.tgz -C $OUT ab2
