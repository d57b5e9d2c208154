#!/usr/bin/env bash
# Two more fusions of the batch-1 decode step (mili/engine/fused_step.py), measured on one GPU:
#   attention in one kernel  attend_new_token (mili/kernels/decode_step.py): q/k norm, RoPE, the K/V
#                            store and split attention, its first K/V tile read before the dependent wait
#                            (MILI_FUSED_ATTENTION=0: qk_norm_rope_store, then the module's attention)
#   SiLU in the gate_up GEMV rms_norm_linear(output="silu_and_mul") (mili/kernels/linear.py)
#                            (MILI_SILU_IN_GATE_UP=0: the GEMV, then the module's silu_and_mul)
# Within $2 seconds (default 470): the fused-step and CUDA-graph tests; batch-1 latency (prompt 128,
# 512 new tokens, host and device time per step) of Qwen3-0.6B for both, the attention alone and
# neither, interleaved, twice (the last run of both with HF generate as the peer); Qwen3-8B once for
# both and for the attention alone; the kernels of a 0.6B step with both (MILI_PDL=0: each kernel
# timed alone). Everything goes to the folder given as $1, and into $1.tgz.
#   bash benchmarks/probes/new_token_attention_ab.sh OUT [SECONDS]
set -uo pipefail
out=${1:?output folder}
budget_end=$(( $(date +%s) + ${2:-470} ))
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")
log="$out/fusions-$card.log"
limit() {  # limit SECONDS: SECONDS, or what is left of the budget
  local left=$(( budget_end - $(date +%s) ))
  echo $(( $1 < left ? $1 : left ))
}
timeout "$(limit 150)" python3 -m pytest -o addopts="" -p no:cacheprovider -q --tb=short tests/test_fused_step.py \
  tests/test_engine_cuda_graphs.py tests/test_engine_gpu.py -k "not design_workload" > "$log" 2>&1
tail -3 "$log"
latency() {  # latency MODEL ATTENTION SILU RUN SECONDS [OPTIONS...]
  local slug seconds
  slug=$(echo "$1" | tr '[:upper:]' '[:lower:]')
  seconds=$(limit "$5")
  (( seconds < 20 )) && { echo "  ($1 attention=$2 silu=$3 run $4: no time left)"; return; }
  MILI_FUSED_ATTENTION=$2 MILI_SILU_IN_GATE_UP=$3 timeout "$seconds" python3 -m mili.bench.latency --model "$1" \
    "${@:6}" --json "$out/ab-$card-$slug-attention$2-silu$3-run$4.json" 2>&1 | grep -i "^mili \|^hf \|^decode\|error" | head -4
  echo "  ($1 attention-in-one=$2 silu-in-gate-up=$3 run $4)"
}
for variant in "1 1" "1 0" "0 0"; do latency Qwen3-0.6B $variant 1 70 --profile --repeats 2; done
for variant in "1 0" "0 0"; do latency Qwen3-0.6B $variant 2 70 --profile --repeats 2; done
latency Qwen3-0.6B 1 1 2 90 --profile --repeats 2 --compare hf --hf-new-tokens 64
for variant in "1 1" "1 0"; do latency Qwen3-8B $variant 1 80 --repeats 2; done
seconds=$(limit 45)
if (( seconds >= 20 )); then
  echo "== kernels Qwen3-0.6B attention-in-one=1 silu-in-gate-up=1" >> "$log"
  MILI_PDL=0 timeout "$seconds" python3 benchmarks/probes/decode_kernels.py --model Qwen3-0.6B \
    2>&1 | grep -A14 "kernels per step" >> "$log"
fi
grep -A14 "== kernels" "$log" | head -16
tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")"
