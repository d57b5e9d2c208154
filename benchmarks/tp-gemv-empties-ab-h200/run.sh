#!/usr/bin/env bash
# One call on two H200s of one host, from the repository root, with 9c4f34b's mili/ and solutions/
# in _base9c4 (git archive 9c4f34b mili solutions | tar -x -C _base9c4), HEAD the tree under test:
#   - batch-1 decode at Qwen3-8B shapes, TP=2, 9c4f34b and HEAD alternating (ROUNDS rounds, TP=1 once);
#   - the throughput workload at TP=2 (steps of many rows, summed by the one-shot all-reduce kernel),
#     9c4f34b then HEAD;
#   - the GPU tensor-parallel and one-shot tests at HEAD, in the time left.
#   MILI_GIT_COMMIT=<HEAD> bash benchmarks/tp-gemv-empties-ab-h200/run.sh OUT
set -uo pipefail
out=$(realpath -m "${1:?output folder}"); mkdir -p "$out"
export PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
ROUNDS=${ROUNDS:-3} TESTS=0 BASELINE=_base9c4 BASELINE_COMMIT=9c4f34b \
  bash benchmarks/probes/tp_batch_1_ab.sh "$out/batch-1"
echo "== batch-1 A/B done at $SECONDS s"
for arm in 9c4f34b:_base9c4 "$MILI_GIT_COMMIT:."; do
  commit=${arm%%:*} tree=$(realpath "${arm#*:}")
  (cd "$tree" && MILI_GIT_COMMIT=$commit PYTHONPATH="$tree" timeout -k 10 110 python3 -m mili.bench.throughput \
    --model Qwen3-8B --tensor-parallel-size 2 --num-seqs 256 --min-len 100 --max-len 512 \
    --json "$out/throughput-8b-tp2-$commit.json" 2>&1 | tail -4 | sed "s|^|$commit: |")
done
echo "== throughput done at $SECONDS s"
left=$(( ${DEADLINE_S:-575} - SECONDS ))
if (( left > 60 )); then
  PYTHONPATH=$PWD timeout -k 10 "$left" python3 -m pytest -o addopts="" -o faulthandler_timeout=$((left - 5)) \
    -p no:cacheprovider -q -m gpu tests/test_tensor_parallel_gpu.py tests/test_one_shot_gpu.py 2>&1 | tail -15 \
    | tee "$out/gpu-tests.log"
fi
echo "== done at $SECONDS s"
