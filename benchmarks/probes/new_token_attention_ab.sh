#!/usr/bin/env bash
# Does the batch-1 step's attention in one kernel (attend_new_token, mili/kernels/decode_step.py:
# q/k norm, RoPE, the K/V store and split attention, its first K/V tile read before the dependent
# wait) pay, and is it right? And does loading each GEMV program's whole rows before the wait
# (MILI_GEMV_WHOLE_ROW=1) pay on top? On one GPU, within $2 seconds (default 520): the fused-step
# and CUDA-graph tests; batch-1 latency (Qwen3-0.6B, prompt 128, 512 new tokens, host and device
# time per step) for three variants interleaved, twice; Qwen3-8B once for two; then the kernels of
# a 0.6B step (MILI_PDL=0) both ways while time is left. Everything goes to the folder given as $1.
#   bash benchmarks/probes/new_token_attention_ab.sh OUT [SECONDS]
set -uo pipefail
out=${1:?output folder}
budget_end=$(( $(date +%s) + ${2:-520} ))
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")
log="$out/new-token-attention-$card.log"
limit() {  # limit SECONDS: SECONDS, or what is left of the budget
  local left=$(( budget_end - $(date +%s) ))
  echo $(( $1 < left ? $1 : left ))
}
timeout "$(limit 150)" python3 -m pytest -o addopts="" -p no:cacheprovider -q --tb=short tests/test_fused_step.py \
  tests/test_engine_cuda_graphs.py tests/test_engine_gpu.py -k "not design_workload" > "$log" 2>&1
tail -3 "$log"
latency() {  # latency MODEL ATTENTION_IN_ONE WHOLE_ROW RUN SECONDS [OPTIONS...]
  local slug seconds
  slug=$(echo "$1" | tr '[:upper:]' '[:lower:]')
  seconds=$(limit "$5")
  (( seconds < 20 )) && { echo "  ($1 $2 $3 run $4: no time left)"; return; }
  MILI_FUSED_ATTENTION=$2 MILI_GEMV_WHOLE_ROW=$3 timeout "$seconds" python3 -m mili.bench.latency --model "$1" "${@:6}" \
    --json "$out/ab-$card-$slug-attn$2-wr$3-run$4.json" 2>&1 | grep -i "^mili \|^decode\|error" | head -3
  echo "  ($1 attention-in-one=$2 whole-row=$3 run $4)"
}
for run in 1 2; do
  for variant in "0 0" "1 0" "1 1"; do
    latency Qwen3-0.6B $variant $run 80 --profile --repeats 2
  done
done
for variant in "0 0" "1 0"; do latency Qwen3-8B $variant 1 90 --repeats 2; done
for attn in 1 0; do
  seconds=$(limit 45)
  (( seconds < 20 )) && break
  echo "== kernels Qwen3-0.6B attention-in-one=$attn" >> "$log"
  MILI_FUSED_ATTENTION=$attn MILI_PDL=0 timeout "$seconds" python3 benchmarks/probes/decode_kernels.py \
    --model Qwen3-0.6B 2>&1 | grep -A14 "kernels per step" >> "$log"
done
grep -A14 "== kernels" "$log" | head -34
