#!/usr/bin/env bash
# Which kernels of the batch-1 step change with the engine's switches, at one model's shapes and
# one TP size, in one run: for the default step, MILI_FUSED_ALL_REDUCE=0 (all-reduce kernels
# instead of the sums inside the GEMVs) and MILI_FUSED_STEP=0 (the modules' forward), batch-1
# latency, then rank 0's kernels with MILI_PDL=0 (each kernel's own time) and with dependent
# launch (waits included). Written for the question of benchmarks/tp-32b-switches-h200/: at
# Qwen3-32B on two H200s turning either off made the step faster, where at 8B it made it slower
# (its run at c161773: benchmarks/tp-32b-switches-h200/kernels-c161773/).
#   MODEL=Qwen3-32B TP=2 bash benchmarks/probes/tp_switches_kernels.sh OUT
set -uo pipefail
out=$(realpath -m "${1:?output folder}"); mkdir -p "$out"
model=${MODEL:-Qwen3-32B}; tp=${TP:-2}
slug=$(echo "$model" | tr '[:upper:]' '[:lower:]')-tp$tp
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MILI_GIT_COMMIT=${MILI_GIT_COMMIT:-$(python3 -c 'from mili.bench.environment import git_commit; print(git_commit())')}
nvidia-smi --query-gpu=name --format=csv,noheader
for arm in default:MILI_FUSED_STEP=1 sums-in-gemvs-off:MILI_FUSED_ALL_REDUCE=0 fused-step-off:MILI_FUSED_STEP=0; do
  name=${arm%%:*}; switch=${arm#*:}
  env "$switch" timeout -k 10 150 python3 -m mili.bench.latency --model "$model" --tensor-parallel-size "$tp" \
    --prompt-len 128 --new-tokens 128 --repeats 3 --json "$out/latency-$slug-$name.json" 2>&1 | grep -E "^mili|Error" \
    | sed "s|^|$name: |"
  for pdl in 0 1; do
    env "$switch" MILI_PDL=$pdl timeout -k 10 150 python3 benchmarks/probes/decode_kernels.py --model "$model" \
      --tensor-parallel-size "$tp" --steps 10 --json "$out/kernels-$slug-$name-pdl$pdl.json" 2>&1 \
      | grep -A12 "kernels per step" | sed "s|^|$name pdl=$pdl: |"
  done
done
