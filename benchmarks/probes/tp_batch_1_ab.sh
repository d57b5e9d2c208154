#!/usr/bin/env bash
# The tensor-parallel batch-1 step at Qwen3-8B shapes (MODEL=Qwen3-32B: 32B's) on 2 GPUs, this
# tree against an earlier one, alternating, in one run. BASELINE: a folder holding the earlier
# tree's mili/ and solutions/ (`git archive REV mili solutions | tar -x -C FOLDER`). Batch-1
# latency (prompt 128, 128 new tokens, median of 3) at TP=1 and at TP=2, two rounds, with VARIANTS
# (space-separated NAME=ENV pairs, e.g. "kernels=MILI_FUSED_ALL_REDUCE=0") as more TP=2 arms and a
# TP=1 run each (of those in TP1_VARIANTS if set, "" for none); ROUNDS (2) rounds; then, unless
# TESTS=0, the GPU tensor-parallel tests and, time allowing, a kernel trace of rank 0 at TP=2.
# TP1_AB=1: every round also runs TP=1 from the earlier tree and this one (for a change that is
# not TP's alone), and no TP=1 run comes before the rounds. TREES (space-separated NAME=FOLDER
# pairs, folders like BASELINE's, e.g. a patch applied to each): more trees, run in every round
# after this one, at TP=2 and, with TP1_AB=1, at TP=1; NAME=FOLDER@COMMIT records COMMIT as the
# tree's (e.g. "nowait=_variant@b1ec3ec+no-wait.patch"), else it is this one's, "+NAME".
# SITE: a folder put before each tree on PYTHONPATH, e.g. benchmarks/probes/gemv_pins_site, whose
# sitecustomize.py pins the GEMV's configurations where a variant sets MILI_GEMV_PINS.
#   BASELINE=_baseline BASELINE_COMMIT=07859cb bash benchmarks/probes/tp_batch_1_ab.sh OUT
set -uo pipefail
out=$(realpath -m "${1:?output folder}"); mkdir -p "$out"
site=${SITE:+$(realpath "$SITE")}
model=${MODEL:-Qwen3-8B}; slug=$(echo "${model#Qwen3-}" | tr '[:upper:]' '[:lower:]')
export PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MILI_GIT_COMMIT=${MILI_GIT_COMMIT:-$(python3 -c 'from mili.bench.environment import git_commit; print(git_commit())')}
nvidia-smi --query-gpu=name --format=csv,noheader
latency() {  # latency TP NAME TREE [ENV...]: run from TREE, whose mili/ `python -m` imports
  (cd "$3" && env "${@:4}" PYTHONPATH="${site:+$site:}$3" timeout -k 10 120 python3 -m mili.bench.latency --model "$model" \
    --tensor-parallel-size "$1" --prompt-len 128 --new-tokens 128 --repeats 3 --json "$out/latency-$slug-$2.json" 2>&1 \
    | grep -E "^mili|Error" | sed "s|^|$2: |")
}
[[ ${TP1_AB:-0} == 1 ]] || latency 1 tp1 "$PWD"
for round in $(seq "${ROUNDS:-2}"); do
  if [[ ${TP1_AB:-0} == 1 ]]; then
    latency 1 "tp1-baseline-$round" "$PWD/${BASELINE:?}" MILI_GIT_COMMIT="${BASELINE_COMMIT:-baseline}"
    latency 1 "tp1-$round" "$PWD"
  fi
  latency 2 "tp2-baseline-$round" "$PWD/${BASELINE:?}" MILI_GIT_COMMIT="${BASELINE_COMMIT:-baseline}"
  latency 2 "tp2-$round" "$PWD"
  for tree in ${TREES:-}; do
    name=${tree%%=*} folder=${tree#*=} commit="$MILI_GIT_COMMIT+${tree%%=*}"
    [[ $folder == *@* ]] && commit=${folder#*@} folder=${folder%%@*}
    [[ ${TP1_AB:-0} == 1 ]] && latency 1 "tp1-$name-$round" "$PWD/$folder" MILI_GIT_COMMIT="$commit"
    latency 2 "tp2-$name-$round" "$PWD/$folder" MILI_GIT_COMMIT="$commit"
  done
  for variant in ${VARIANTS:-}; do
    latency 2 "tp2-${variant%%=*}-$round" "$PWD" "${variant#*=}"
  done
done
for variant in ${TP1_VARIANTS-${VARIANTS:-}}; do
  latency 1 "tp1-${variant%%=*}" "$PWD" "${variant#*=}"
done
[[ ${TESTS:-1} == 0 ]] && exit 0
PYTHONPATH=$PWD timeout -k 10 280 python3 -m pytest -o addopts="" -o faulthandler_timeout=250 -p no:cacheprovider -q -m gpu \
  tests/test_tensor_parallel_gpu.py tests/test_one_shot_gpu.py 2>&1 | tail -15
if (( SECONDS < 520 )); then
  PYTHONPATH=$PWD timeout -k 10 $((580 - SECONDS)) python3 benchmarks/probes/decode_kernels.py --model "$model" \
    --tensor-parallel-size 2 --steps 10 --trace "$out/trace-$slug-tp2.json" --json "$out/kernels-$slug-tp2-pdl-on.json" \
    | grep "kernels per step" && gzip "$out/trace-$slug-tp2.json"
fi
