#!/usr/bin/env bash
# Do the GEMV autotuner's picks decide how long a tensor-parallel batch-1 run takes? RUNS (4)
# autotuned runs of MODEL (Qwen3-8B) at TP (4), each printing its picks (TRITON_PRINT_AUTOTUNING=1),
# then ROUNDS (3) rounds of two runs with every rank pinned (gemv_pins.py): to the picks of the
# fastest autotuned run (the first printed for each shape), and to the slowest's (for each shape
# the first that differs from the fast ones, where any rank's does). TP=1 once first,
# for the ratio. Batch-1 latency, prompt 128, 128 new tokens, median of 3; each run a new group of
# processes; the pins in pins.txt. Shapes that linear.GEMV_PINS pins for the card are not tuned.
#   TP=4 bash benchmarks/probes/tp_pick_groups.sh OUT
set -uo pipefail
out=$(realpath -m "${1:?output folder}"); mkdir -p "$out"
model=${MODEL:-Qwen3-8B}; tp=${TP:-4}; slug=$(echo "${model#Qwen3-}" | tr '[:upper:]' '[:lower:]')
site=$PWD/benchmarks/probes/gemv_pins_site
export PYTHONUNBUFFERED=1 MILI_IMPL=reference NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MILI_GIT_COMMIT=${MILI_GIT_COMMIT:-$(python3 -c 'from mili.bench.environment import git_commit; print(git_commit())')}
nvidia-smi --query-gpu=name --format=csv,noheader
latency() {  # latency TP NAME [ENV...]: the run's JSON and its whole output (NAME.log) in $out
  env "${@:3}" PYTHONPATH="$site:$PWD" timeout -k 10 120 python3 -m mili.bench.latency --model "$model" \
    --tensor-parallel-size "$1" --prompt-len 128 --new-tokens 128 --repeats 3 --json "$out/$2.json" > "$out/$2.log" 2>&1
  grep -E "^mili|Error" "$out/$2.log" | sed "s|^|$2: |"
}
latency 1 "latency-$slug-tp1"
for run in $(seq "${RUNS:-4}"); do
  latency "$tp" "latency-$slug-tp$tp-autotuned-$run" TRITON_PRINT_AUTOTUNING=1
done
mapfile -t ranked < <(python3 -c 'import json, sys; print(*sorted(sys.argv[1:], key=lambda p: json.load(open(p))["mili"]["tpot_ms"]), sep="\n")' \
  "$out/latency-$slug-tp$tp-autotuned-"*.json)
(( ${#ranked[@]} )) || { echo "no autotuned run finished"; exit 1; }
fastest=${ranked[0]} slowest=${ranked[-1]}
fast=$(python3 -m benchmarks.probes.gemv_pins "${fastest%.json}.log") || exit 1
slow=$(python3 -m benchmarks.probes.gemv_pins "${slowest%.json}.log" "$fast") || exit 1
printf 'fast (%s): %s\nslow (%s): %s\n' "${fastest##*/}" "$fast" "${slowest##*/}" "$slow" | tee "$out/pins.txt"
for round in $(seq "${ROUNDS:-3}"); do
  latency "$tp" "latency-$slug-tp$tp-fast-picks-$round" MILI_GEMV_PINS="$fast"
  latency "$tp" "latency-$slug-tp$tp-slow-picks-$round" MILI_GEMV_PINS="$slow"
done
