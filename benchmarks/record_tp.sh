#!/usr/bin/env bash
# Records tensor parallelism on the GPUs of one host into the folder given as $1, in under 9
# minutes, with random weights at Qwen3 shapes (nothing is downloaded):
#   - batch-1 decode (ms per token) at Qwen3-8B shapes with TP=1 and TP=2, at Qwen3-32B shapes
#     with TP=2 (65 GB of bfloat16 weights do not fit one 80 GB card with a KV cache), and with
#     TP=4 where the host has 4 GPUs; 8B at TP=1 and TP=2 in ROUNDS rounds (2), each run a new
#     group of processes, whose times differ by a few percent: the summary takes their mean;
#   - the GPU tensor-parallel tests (each rank replays its own CUDA graphs) and the one-shot
#     all-reduce's; on 4 GPUs the four-rank test last, time allowing (it alone takes about 2 min);
#   - the throughput workload at 8B shapes with TP=1 and TP=2: 256 requests as in the default
#     workload, lengths U[100, 512] instead of U[100, 1024] to keep the run short;
#   - tp-summary-CARD.json and tp-CARD.png (mili.bench.tensor_parallel_summary): every run against
#     the weight-read floor of its whole group, and the decode speed-up against the ideal one.
# Each run also leaves its own JSON (tp-latency-*.json, tp-throughput-*.json, with the card, the
# driver, torch and triton versions and the commit). Each stage has a time limit within the
# budget; one that fails or runs out leaves the others' results. Everything goes to tp-CARD.log.
#   bash benchmarks/record_tp.sh OUT
# Without a git checkout, or where its history is older than its files (the commit then ends in
# "+dirty"), pass the commit: MILI_GIT_COMMIT=<sha> bash benchmarks/record_tp.sh OUT
# The measurements end within BUDGET_S seconds (480; the 4-GPU latencies come last and need about
# 560, the four-rank test after them 130 more: where that budget cannot be had, run it on its own,
# python3 -m pytest -o addopts="" -m gpu -k four_ranks tests/test_tensor_parallel_gpu.py).
set -uo pipefail
budget_end=$(( $(date +%s) + ${BUDGET_S:-480} ))  # the last measurement ends by then; the summary follows
out=${1:?output folder}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MILI_GIT_COMMIT=${MILI_GIT_COMMIT:-$(python3 -c 'from mili.bench.environment import git_commit; print(git_commit())')}
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())" 2>/dev/null || echo gpu)
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
exec > >(tee -a "$out/tp-$card.log") 2>&1
echo "== $(date -u +%FT%TZ) commit $MILI_GIT_COMMIT, $gpus GPU(s): $card"
nvidia-smi topo -m || true

# stage NAME SECONDS COMMAND...: run COMMAND for at most SECONDS, fewer if the budget runs short
# (timeout signals the command's whole process group: the worker ranks go with it).
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$(( budget_end - $(date +%s) ))
  (( limit > left )) && limit=$left
  if (( limit < 30 )); then
    echo "== $name: skipped, the time budget is spent"
    return
  fi
  echo "== $name (at most $limit s): $*"
  local start
  start=$(date +%s)
  timeout -k 10 "$limit" "$@"
  echo "== $name: exit status $? after $(( $(date +%s) - start )) s"
}

latency() {  # latency MODEL TP SECONDS [ROUND]: a ROUND's JSON ends in -rROUND
  local slug
  slug=$(echo "$1" | tr '[:upper:]' '[:lower:]')
  stage "latency $1 TP=$2${4:+ round $4}" "$3" python3 -m mili.bench.latency --model "$1" --tensor-parallel-size "$2" \
    --prompt-len 128 --new-tokens 128 --repeats 3 --json "$out/tp-latency-$card-$slug-tp$2${4:+-r$4}.json"
}

throughput() {  # throughput MODEL TP SECONDS
  local slug
  slug=$(echo "$1" | tr '[:upper:]' '[:lower:]')
  stage "throughput $1 TP=$2" "$3" python3 -m mili.bench.throughput --model "$1" --tensor-parallel-size "$2" \
    --num-seqs 256 --min-len 100 --max-len 512 --json "$out/tp-throughput-$card-$slug-tp$2.json"
}

if (( gpus < 2 )); then
  echo "== tensor parallelism needs at least 2 GPUs; this host has $gpus"
fi
latency Qwen3-8B 1 90
if (( gpus >= 2 )); then
  latency Qwen3-8B 2 100
  latency Qwen3-32B 2 120
  stage "GPU tensor-parallel tests" 200 python3 -m pytest -o addopts="" -o faulthandler_timeout=180 -p no:cacheprovider -q -m gpu \
    -k "not four_ranks" tests/test_tensor_parallel_gpu.py tests/test_one_shot_gpu.py
fi
throughput Qwen3-8B 1 120
if (( gpus >= 2 )); then
  throughput Qwen3-8B 2 110
fi
for round in $(seq 2 "${ROUNDS:-2}"); do
  latency Qwen3-8B 1 90 "$round"
  (( gpus >= 2 )) && latency Qwen3-8B 2 100 "$round"
done
if (( gpus >= 4 )); then
  latency Qwen3-8B 4 90
  latency Qwen3-32B 4 100
  stage "GPU four-rank test" 150 python3 -m pytest -o addopts="" -o faulthandler_timeout=140 -p no:cacheprovider -q -m gpu \
    -k four_ranks tests/test_tensor_parallel_gpu.py
fi
echo "== summary and plot"
timeout -k 5 40 python3 -m mili.bench.tensor_parallel_summary "$out"
ls -l "$out"
