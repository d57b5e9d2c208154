#!/usr/bin/env bash
# 8B TP=2: b1ec3ec against b1ec3ec + no-wait-on-b1ec3ec.patch (the summing norm does not wait for the pushing kernel), alternating.
export PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
latency() {  # latency NAME TREE COMMIT
  (cd "$2" && env PYTHONPATH="$2" MILI_GIT_COMMIT="$3" timeout -k 5 55 python3 -m mili.bench.latency --model Qwen3-8B \
    --tensor-parallel-size 2 --prompt-len 128 --new-tokens 128 --repeats 3 --json "$OUT/latency-8b-$1.json" 2>&1 \
    | grep -E "^mili|Error|error" | head -5 | sed "s|^|$1: |") | tee -a "$OUT/ab.log"
}
latency tp2-nowait-1 "$PWD/_variant_nowait" b1ec3ec+nowait
latency tp2-1 "$PWD" b1ec3ec
latency tp2-nowait-2 "$PWD/_variant_nowait" b1ec3ec+nowait
latency tp2-2 "$PWD" b1ec3ec
