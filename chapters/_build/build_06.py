"""Write chapters/06_deployment.ipynb (without outputs).

    python chapters/_build/build_06.py
    jupyter nbconvert --to notebook --execute --inplace chapters/06_deployment.ipynb
"""

from nbbuild import code, md, think, write

md(r"""
# Chapter 06 — Deployment: from engine to service

Chapters 01–05 built an engine that takes a list of prompts and returns a list of answers.
A service is different: requests arrive one by one from many clients at unpredictable times,
each client wants its tokens *as they are made*, some clients leave halfway, the process must be
observable from outside, and it must stop without dropping work. This chapter wraps the engine
in an OpenAI-compatible HTTP server (`mili serve`) that does all of that, and measures it.

1. The async engine: one thread steps the engine, every request gets its own stream
2. Server-Sent Events: the OpenAI chunk format
3. Exercise 6.1 — streaming chat completions
4. Exercise 6.2 — metrics: TTFT, TPOT, inter-token latency
5. A live server: the openai client, errors, a client that disconnects
6. Exercise 6.3 — load testing: percentiles from raw timings; latency against request rate
7. Graceful drain, Docker and Kubernetes
8. What you built
9. Scaling out: tensor parallelism — exercise 6.4, column- and row-parallel layers

Everything here runs on a CPU with the tiny model (`data/mili-tiny-qwen3`): the numbers are this
machine's, not a GPU's. The server needs the `server` extra: `pip install -e ".[dev,server]"`.
Questions marked **Think** are for you to answer before reading on: write
down your answer, then check it against what the next cells show; your instructor discusses them.
""")

code(r"""
import asyncio
import json
import time

import httpx
import matplotlib.pyplot as plt
import openai

import mili
from mili import LLM, SamplingParams
from mili.exercise import repo_root

TINY = repo_root() / "data" / "mili-tiny-qwen3"
""")

md(r"""
## 1. The async engine

`LLMEngine.step()` runs one batch: it schedules, runs the model once, samples one token per
running sequence and returns a `RequestOutput` for every request that moved. It is not
thread-safe, and it should never wait for the network. So the server splits the work in two:

```
 HTTP requests ──► event loop (asyncio, uvicorn) ──commands──► engine thread: while True:
   (many clients)    parse, validate, tokenize     add/abort      apply commands
                     one asyncio.Queue per request ◄──outputs───  outputs = engine.step()
                     ──► SSE chunks to each client                push each to its queue
```

* **One thread owns the engine** (`mili/server/async_engine.py`). The event loop never calls
  it; it puts `("add", ...)` and `("abort", id)` commands on a queue that the engine thread
  applies *between* steps. An abort therefore takes effect before the next step, and the
  request's KV blocks go back to the pool at once.
* **Each request has its own stream**: an `asyncio.Queue` that the engine thread feeds with
  `loop.call_soon_threadsafe(queue.put_nowait, output)`. `AsyncEngine.generate()` is an async
  generator over it; leaving it early (a client that disconnected) sends the abort.
* Continuous batching needs nothing more: whatever is in the engine when a step starts runs in
  that step, so a request that arrives mid-generation joins the batch one step later.

Here is the async engine on its own, inside this notebook's event loop:
""")

code(r"""
from mili.server.async_engine import AsyncEngine

llm = LLM(str(TINY), num_kv_blocks=256)
engine = AsyncEngine(llm.engine)
engine.start()

prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": "Sort the numbers:\n9, 2, 7, 4"}],
                                           add_generation_prompt=True)
async for output in engine.generate("demo-1", prompt, SamplingParams(temperature=0, max_tokens=16)):
    c = output.outputs[0]
    print(f"{len(c.token_ids):2d} tokens  text so far {c.text!r:24}  finished={output.finished}")
""")

md(r"""
These outputs are **cumulative**: each carries the whole text so far, so the step that makes the
thousandth token copies a thousand. A streaming server asks for **deltas** instead
(`SamplingParams(output_kind=RequestOutputKind.DELTA)`): each output carries only the tokens and
text that are new, and costs the same at every step. Turning deltas into OpenAI's chunks is
exercise 6.1. Two requests started together share steps:

""")

think(r"""
Why not simply call `engine.step()` from the event loop, between two requests'
handlers? What would a client notice?
""", r"""
A step runs the model: milliseconds to seconds of work that never yields. While it runs inside the
event loop, no other coroutine can run: no request is parsed, no chunk is sent, `/health` does not
answer, and a disconnect is not noticed. Every client would see its stream stall for the length of
each step, and a load balancer might decide the server is dead. With one thread owning the engine,
the loop only moves bytes and commands, and stays responsive whatever the model does.
""")

code(r"""
async def collect(request_id, question):
    prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    steps = 0
    async for output in engine.generate(request_id, prompt, SamplingParams(temperature=0, max_tokens=16)):
        steps += 1
    return question, output.outputs[0].text, steps

for question, answer, steps in await asyncio.gather(collect("a", "What is 17 + 25?"),
                                                     collect("b", "Reverse the words:\nred green blue")):
    print(f"{question!r:40} -> {answer!r:18} in {steps} outputs")
engine.shutdown()
""")

md(r"""
## 2. Server-Sent Events and the OpenAI chunk format

With `"stream": true` the OpenAI API answers with `Content-Type: text/event-stream`: a sequence
of events, each a line `data: <json>` followed by a blank line, and at the end `data: [DONE]`.
For `/v1/chat/completions` each event is a `chat.completion.chunk`:

```
data: {"id":"chatcmpl-…","object":"chat.completion.chunk","created":1700000000,"model":"mili-tiny-qwen3",
       "choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {… "choices":[{"index":0,"delta":{"content":"4"},"logprobs":null,"finish_reason":null}]}

data: {… "choices":[{"index":0,"delta":{"content":"2"},"logprobs":null,"finish_reason":"stop"}]}

data: {… "choices":[],"usage":{"prompt_tokens":14,"completion_tokens":3,"total_tokens":17,…}}

data: [DONE]
```

The rules clients rely on: the first chunk of each choice carries the role; later chunks carry
only the *new* text; `finish_reason` is `null` until the chunk that ends the choice, where it
is `stop` (EOS, a stop string or token), `length` (max_tokens or the context window) or `abort`
(cancelled); with `stream_options.include_usage` every chunk has `"usage": null` and one last
chunk with no choices carries the token counts.

""")

think(r"""
The engine's text grows by whole tokens, but a token may end in the middle of a
multi-byte UTF-8 character (an emoji is 4 bytes, often 2 or more tokens). What must the stream do
with such a half character?
""", r"""
Hold it back. The detokenizer of chapter 03 emits text only up to the last complete character, so
no output ends in a replacement character `�`: a delta output may have a new token and no new
text, and the half character comes with the next one. A client that concatenates the deltas
gets exactly the final text. The grader feeds multi-byte characters for this reason.
""")

md(r"""
## 3. Exercise 6.1 — streaming chat completions

Open `mili/server/streaming.py` and implement `chat_completion_stream`: an **async generator**
that reads the request's delta `RequestOutput`s and yields the events above, one choice per
chunk (a request with `n=2` has choices 0 and 1, which may finish at different steps; a choice
that finished is still listed in later outputs, with no text and its finish reason). Use
`protocol.sse(dict)` to format an event and `protocol.usage(output, completion_tokens)` for the
usage. Keep, per choice, whether it started and whether it finished, and count the tokens.

The grader feeds scripted outputs (text in random pieces, including multi-byte characters,
several choices, steps where a choice has nothing new, a request aborted before its first
token) and rebuilds the stream the way a client would.

When a request offers `tools`, the server passes your chunks through `with_tool_calls`
(`mili/server/tool_calls.py` parses Qwen3's `<tool_call>` blocks), which turns the calls in
the content into `tool_calls` deltas.
""")

code(r"""
mili.grade("6.1");
""")

md(r"""
## 4. Exercise 6.2 — metrics: TTFT, TPOT and inter-token latency

A user waiting for a chat answer feels two numbers: how long until the first token appears
(**time to first token**, TTFT: queueing + prefill) and how fast the rest comes (**time per
output token**, TPOT: the mean gap after the first token, set by the decode step time and thus
by how many requests share the batch). The gaps one by one are the **inter-token latencies**
(ITL); their tail shows stalls, e.g. when a long prefill joins the batch. End-to-end latency is
arrival to finish.

The server exports them as Prometheus histograms at `/metrics`, under vLLM's names with a
`mili:` prefix (`mili:time_to_first_token_seconds`, `mili:time_per_output_token_seconds`,
`mili:inter_token_latency_seconds`, `mili:e2e_request_latency_seconds`), next to gauges and
counters the engine reports after every step: `mili:num_requests_running`,
`mili:num_requests_waiting`, `mili:kv_cache_usage_perc`, `mili:prefix_cache_queries_total`,
`mili:prefix_cache_hits_total`, `mili:num_preemptions_total`, `mili:prompt_tokens_total`,
`mili:generation_tokens_total`, `mili:request_success_total{finished_reason=…}`.

Implement `observe_request` in `mili/server/metrics.py`: given when a request arrived, when each
of its tokens came out and when it finished, observe each figure into its histogram. The
engine thread calls it once per finished request.

""")

think(r"""
A request's tokens came out at 0.30 s, 0.35 s, 0.40 s and 1.40 s after it arrived (a long
prefill of another request joined the batch before the last one). What are its TTFT, its TPOT and
its inter-token latencies, and which of them shows the stall?
""", r"""
TTFT = 0.30 s. The gaps after the first token are 0.05, 0.05 and 1.00 s: those are the three ITL
observations, and the 1 s one lands in the histogram's tail. TPOT is their mean, (1.40 − 0.30) / 3
≈ 0.37 s: the stall is spread over the request and hidden in an average. That is why servers
export ITL percentiles as well as TPOT, and why chunked prefill (chapter 03) exists: it caps how long
one prefill can hold up everyone's next token.
""")

code(r"""
mili.grade("6.2");
""")

md(r"""
## 5. A live server

`mili serve --model data/mili-tiny-qwen3 --port 8000` starts the server. Here we start it in a
child process on a free port (`mili.server.launch.launch_server`, the helper the tests use) and
talk to it with plain HTTP and with the official `openai` client, unchanged.
""")

code(r"""
from mili.server.launch import launch_server

server_context = launch_server(TINY, args=["--max-num-seqs", "64", "--num-kv-blocks", "1024"])
server = server_context.__enter__()
print("listening on", server.url, "| /health:", httpx.get(server.url + "/health").json())
print(json.dumps(httpx.get(server.url + "/v1/models").json()["data"][0], indent=1))
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
body = {"messages": [{"role": "user", "content": "What is 17 + 25?"}], "max_tokens": 8, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}}
with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
    print(response.headers["content-type"])
    for line in response.iter_lines():
        if line:
            print(line[:150])
""")

code(r"""
client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
model = client.models.list().data[0].id
for question in ["What is 17 + 25?", "Sort the numbers:\n9, 2, 7, 4"]:
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                            temperature=0, max_tokens=32, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    print(f"{question!r:34} -> streamed pieces {pieces}")
""")

md(r"""
**Bad input never reaches the engine.** Requests are parsed strictly (a string where a number
belongs is a 400, not FastAPI's default 422), the prompt is tokenized and checked against the
context window before it is queued (in a worker thread, so a huge prompt delays nobody), fields
the server cannot honour (structured output, `tool_choice: "required"`, `best_of`, ...) are
refused rather than ignored, and every error has OpenAI's shape, so the client raises its usual exceptions
(`docs/running-safely.md` lists every limit and status code):
""")

code(r"""
def status_of(path, body):
    response = httpx.post(server.url + path, json=body)
    return response.status_code, response.json()["error"]["message"][:90]

print(status_of("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}))
print(status_of("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}))
print(status_of("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}))
try:
    client.completions.create(model=model, prompt="hi", top_p=0)
except openai.BadRequestError as err:
    print("openai.BadRequestError:", err.body["message"])
""")

md(r"""
**A client that leaves.** When a streaming client disconnects, Starlette cancels the task
that writes its response; the cancellation unwinds through the chunk generator into
`AsyncEngine.generate`, whose `finally` sends the abort. The engine thread applies it before
its next step, and the blocks are free. Below, a client reads three chunks of a 400-token
answer and hangs up; `/metrics` shows the request gone and no KV block held by any request:
""")

code(r"""
from mili.bench.serve import metric_value as metric

def gauges():
    text = httpx.get(server.url + "/metrics").text
    names = ["num_requests_running", "kv_cache_blocks_in_use", "generation_tokens_total"]
    return {n: metric(text, f"mili:{n}") for n in names} | {
        "aborted": metric(text, "mili:request_success_total", finished_reason="abort")}

before = gauges()
stream = client.completions.create(model=model, prompt="Count: 1 2 3", max_tokens=400, stream=True,
                                   extra_body={"ignore_eos": True})
for i, chunk in enumerate(stream):
    if i == 2:
        print("running while streaming:", gauges()["num_requests_running"])
        break
stream.close()
time.sleep(0.5)
after = gauges()
print("after the disconnect:", {k: after[k] for k in ("num_requests_running", "kv_cache_blocks_in_use")},
      "| aborted requests +", after["aborted"] - before["aborted"],
      "| tokens generated", after["generation_tokens_total"] - before["generation_tokens_total"], "of 400")
""")

md(r"""
**Backpressure.** The server counts the sequences it has admitted: a request asks for `n` of
them (`--max-n`, 8 by default, caps `n`). Beyond `--max-num-seqs` + `--max-queue` of them, a new
request gets `429 Too Many Requests` with a `Retry-After` header
at once, instead of waiting in an unbounded queue until its client times out; while the server
drains it answers `503` with `Retry-After`. Both are tested in `tests/test_server_admission.py`
and `tests/test_server_drain.py`.
""")

md(r"""
## 6. Exercise 6.3 — load testing

`mili bench serve` (`mili/bench/serve.py`) is a load generator in the style of vLLM's
`benchmark_serving`: it sends N streaming requests as a Poisson process at a given request rate,
with at most C in flight, and keeps only **raw timings** per request: when it was sent, when
each chunk arrived, when it ended, and the token counts from the usage chunk. Everything it
reports is computed afterwards from those — by you. Implement `summarize_requests` in
`mili/bench/analysis.py`: throughput, and mean / median / std / percentiles of TTFT, TPOT, ITL
and end-to-end latency, with percentiles interpolated linearly between ranks like numpy's.
""")

code(r"""
mili.grade("6.3");
""")

md(r"""
Now measure. The same 24 requests (64-token prompts, 16 output tokens) at increasing request
rates: at low rates a request mostly has the engine to itself; as the rate grows, requests
share the batch (TPOT grows with the batch's step time) and then queue (TTFT grows).
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
from mili.bench.serve import make_prompts, print_summary, run_load

rates = [3.0, 6.0, 12.0, float("inf")]
prompts = make_prompts("random", 24, 64, vocab_size=1300, seed=0)
await run_load(server.url, prompts[:4], output_len=4)  # warm-up: the first requests pay one-off costs
sweep = {}
for rate in rates:
    sweep[rate] = await run_load(server.url, prompts, output_len=16, request_rate=rate, max_concurrency=32)
    s = sweep[rate]
    print(f"rate {rate:>4} req/s: {s['completed']} ok, {s['errors']} errors, {s['output_throughput']:6.1f} tok/s, "
          f"TTFT p50 {s['ttft_ms']['median']:6.1f} ms p99 {s['ttft_ms']['p99']:6.1f} ms, "
          f"TPOT p50 {s['tpot_ms']['median']:5.1f} ms")
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
labels = [f"{r:g}" if r != float("inf") else "all at once" for r in rates]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, figure, title in ((axes[0], "ttft_ms", "time to first token"), (axes[1], "tpot_ms", "time per output token")):
    for stat, style in (("median", "o-"), ("p99", "s--")):
        ax.plot(labels, [sweep[r][figure][stat] for r in rates], style, label=stat)
    ax.set_xlabel("request rate (requests/s)")
    ax.set_ylabel("milliseconds")
    ax.set_title(f"{title}, tiny model on this CPU")
    ax.legend()
fig.tight_layout()
plt.show()
""")

md(r"""
Read the right end first: with all 24 requests at once, each waits behind the others' prefills
(TTFT in the hundreds of milliseconds) and every decode step carries the whole batch (TPOT
several times the single-request figure). At low rates the engine is mostly idle between
arrivals. This machine has 2 cores shared with other work, so the low-rate points are noisy;
the same sweep on an H100 follows the recorded CPU benchmark below.

""")

think(r"""
Predict, before reading the numbers: if the request rate exceeds what the server can
finish per second, what happens to TTFT as the run goes on, and what happens to TPOT?
""", r"""
TTFT grows without bound: requests arrive faster than they leave, the waiting queue lengthens, and
each new request waits behind all of it (only `--max-queue` and the 429s stop it). TPOT levels off:
it is set by the step time of a full batch (`max_num_seqs` sequences), which cannot grow past
that. Goodput — requests that meet a TTFT and TPOT target — therefore peaks at some rate and then
falls, even though raw token throughput stays flat.
""")

md(r"""
The recorded benchmark (`benchmarks/serve-tiny-cpu-c32.json`, made by
`mili bench serve --num-prompts 200 --max-concurrency 32 --input-len 64 --output-len 32`
against `mili serve` with the tiny model on a 2-core CPU) for reference:
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
recorded = json.loads((repo_root() / "benchmarks" / "serve-tiny-cpu-c32.json").read_text())
print(recorded["environment"]["device"], "| commit", recorded["environment"]["git_commit"][:10])
print_summary(recorded["summary"])
""")

md(r"""
### The same sweep on an H100

`benchmarks/record_serve_gpu.sh` runs this study on a GPU: `mili serve` with Qwen3-0.6B's shapes
(random weights; every request asks for exactly its output length, so the weights do not matter)
in bfloat16 with the Triton kernels and CUDA graphs, and `mili bench serve` against it. It first
sends every request at once to find the server's capacity (requests per second at a full batch),
then Poisson arrivals at fractions of that capacity, and reports for each run the percentiles of
TTFT, TPOT and ITL and the **goodput**: requests per second that met a TTFT and a TPOT objective
(`--goodput ttft:MS tpot:MS`, as in vLLM). Throughput counts every token; goodput counts only the
requests a user would have been happy with. The next cell reads the records from `benchmarks/`
(`serve-h100-*.json`); every number it shows comes from them.
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
gpu_runs = {}
for path in sorted((repo_root() / "benchmarks").glob("serve-h100-*.json")):
    record = json.loads(path.read_text())
    if "summary" in record:
        gpu_runs[path.stem.removeprefix("serve-h100-")] = record
loads = sorted((name for name in gpu_runs if name.startswith("load")),
               key=lambda name: gpu_runs[name]["setup"]["request_rate"])
if not loads:
    print("No H100 serving record in benchmarks/ yet (benchmarks/serve-h100-load*.json): "
          "`bash benchmarks/record_serve_gpu.sh OUT` on an H100 writes it; copy OUT/serve-h100-* into benchmarks/.")
else:
    first = gpu_runs[loads[0]]
    setup, slo = first["setup"], first["summary"].get("goodput", {}).get("slo_ms", {})
    print(f"{first['environment']['device']}, model {first['summary']['model']}, {setup['input_len']}-token prompts, "
          f"{setup['output_len']} output tokens, at most {setup['max_concurrency']} in flight; goodput objectives: "
          + ", ".join(f"{k[:-3].upper()} <= {v:g} ms" for k, v in slo.items()))
    header = (f"{'arrivals':>14} {'done':>5} {'out tok/s':>9} | {'TTFT p50':>8} {'p90':>7} {'p99':>7} | "
              f"{'TPOT p50':>8} {'p90':>6} {'p99':>6} | {'ITL p50':>7} {'p99':>6} | {'goodput':>12}")
    print(header + "\n" + "-" * len(header))
    for name in loads:
        s, rate = gpu_runs[name]["summary"], gpu_runs[name]["setup"]["request_rate"]
        arrivals = "all at once" if rate == float("inf") else f"{rate:.3g} req/s"
        g = s.get("goodput", {})
        print(f"{arrivals:>14} {s['completed']:>5} {s['output_throughput']:>9,.0f} | "
              f"{s['ttft_ms']['p50']:>8.1f} {s['ttft_ms']['p90']:>7.1f} {s['ttft_ms']['p99']:>7.1f} | "
              f"{s['tpot_ms']['p50']:>8.2f} {s['tpot_ms']['p90']:>6.2f} {s['tpot_ms']['p99']:>6.2f} | "
              f"{s['itl_ms']['p50']:>7.2f} {s['itl_ms']['p99']:>6.2f} | "
              + (f"{g['request_goodput']:>5.2f} ({g['fraction_met']:>4.0%})" if g else f"{'-':>12}"))
    print("(milliseconds; goodput in requests/s, with the share of requests that met every objective)")

    def offered(name):  # arrival rate; "all at once" plotted at the measured throughput
        rate = gpu_runs[name]["setup"]["request_rate"]
        return gpu_runs[name]["summary"]["request_throughput"] if rate == float("inf") else rate

    cpu_rates = [r for r in rates if r != float("inf")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for stat, style in (("median", "o-"), ("p99", "s--")):
        axes[0].plot(cpu_rates, [sweep[r]["ttft_ms"][stat] for r in cpu_rates], style, color="C0", label=f"TTFT {stat}")
        axes[0].plot(cpu_rates, [sweep[r]["tpot_ms"][stat] for r in cpu_rates], style, color="C1", label=f"TPOT {stat}")
        axes[1].plot([offered(n) for n in loads], [gpu_runs[n]["summary"]["ttft_ms"][stat] for n in loads], style,
                     color="C0", label=f"TTFT {stat}")
        axes[1].plot([offered(n) for n in loads], [gpu_runs[n]["summary"]["tpot_ms"][stat] for n in loads], style,
                     color="C1", label=f"TPOT {stat}")
    axes[0].set_title("tiny model on this CPU (the sweep above)")
    axes[1].set_title(f"{first['summary']['model']}, {first['environment']['device']}")
    for ax in axes:
        ax.set(xlabel="arrival rate (requests/s)", ylabel="milliseconds (log scale)", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
""")

md(r"""
Read the H100 table the way you read the CPU sweep: at low rates TTFT is a prefill and TPOT a
small batch's decode step; towards capacity the batch fills (TPOT grows with the step time) and
requests start to queue (TTFT's tail grows first, its median later). In the plot, "all at
once" is drawn at the rate the server sustained. Goodput falls before
throughput does: the server still produces tokens, but fewer requests meet their objectives.
Each request's latencies are kept in the JSON (`per_request`), so you can apply your own
objectives to the same run.
""")

think(r"""
The shared-prefix workload gives every request the same long prefix (a system prompt) and a
short tail of its own. Predict, before the next cell: which of TTFT, TPOT and output throughput
should the prefix cache improve most, and why might another barely move?
""", r"""
TTFT, most: with the prefix cached, a request's prefill computes only its own tail, so each
request's prefill is several times shorter and the queue of prefills ahead of a new request
drains that much faster. Output throughput rises as far as the run was bound by prefill work
(all requests at once is). TPOT moves least: once decoding, every sequence still reads its whole
context from the KV cache at every step, shared blocks included (sharing saves memory and
prefill compute, not decode reads); what improves is only the share of steps that also carry a
chunk of someone's prefill. Sharing also means the shared blocks are stored once, so more
sequences fit in the pool, which matters once memory, not `max_num_seqs`, limits the batch.
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
pair = [gpu_runs.get(name) for name in ("shared-prefix", "shared-prefix-nocache")]
if None in pair:
    print("No H100 shared-prefix record in benchmarks/ yet (serve-h100-shared-prefix.json and "
          "serve-h100-shared-prefix-nocache.json, from benchmarks/record_serve_gpu.sh).")
else:
    setup = pair[0]["setup"]
    print(f"{pair[0]['environment']['device']}: {setup['num_prompts']} requests at once, {setup['input_len']}-token "
          f"prompts of which the first {setup['prefix_len']} are shared, {setup['output_len']} output tokens each")
    print(f"{'prefix cache':<13} {'hit rate':>8} {'out tok/s':>9} {'TTFT p50':>9} {'p99':>8} {'TPOT p50':>9} "
          f"{'e2e p50':>8}")
    for label, record in zip(("on", "off"), pair):
        s = record["summary"]
        print(f"{label:<13} {s['prefix_cache_hit_rate']:>8.0%} {s['output_throughput']:>9,.0f} "
              f"{s['ttft_ms']['p50']:>9.1f} {s['ttft_ms']['p99']:>8.1f} {s['tpot_ms']['p50']:>9.2f} "
              f"{s['e2el_ms']['p50']:>8.1f}")
    on, off = (record["summary"] for record in pair)
    print(f"with the cache on: median TTFT x{on['ttft_ms']['p50'] / off['ttft_ms']['p50']:.2f}, "
          f"output throughput x{on['output_throughput'] / off['output_throughput']:.2f} (against the cache off)")
""")

md(r"""
**Compare this with your prediction.** The cache hits as it should (most prompt tokens come from
it), and every figure moves the right way: the first token comes sooner, and the server produces
more tokens per second. It did not always. Until the fix this section tells about, the H100
record of this pair went the other way: with the cache on, requests waited *longer* for their
first token, decode steps were slower, and throughput fell. How that was tracked down is a
lesson in measuring before believing.

The first guess was a kernel. A prefill over a cached prefix runs chapter 04's *other* prefill
kernel (exercise 4.3: K/V gathered block by block through the block table), where a whole
prefill runs the contiguous one (4.1). If the paged kernel were much slower per query token, the
hits could cost more than they save. `benchmarks/probes/prefill_kernels.py` times both on this
workload's shapes (16 prompts of 1,024 tokens, the first 896 cached), after checking that they
agree; the next cell reads its record. The paged kernel *is* slower per query token, about three
times, but it has only an eighth of the query tokens, so the cache-on prefill still takes a
fraction of the cache-off one's time. The guess was wrong: attention could not explain the gap.

The clue was in the percentiles. In the same-call comparison below, the old code's first run on
each fresh server has a median TTFT almost equal to its p99: every request waited for one and
the same stall, a second or so long, which is about what Triton takes to compile a kernel.
Triton compiles a kernel once for each *specialisation*, and besides the constexprs and the
alignment of each pointer (chapter 03's ledger met those), it specialises every integer argument
on whether it is 1 or a multiple of 16.
Three integers of our kernels change from step to step: the width of the block table (the most
blocks any sequence of the step holds), the count of query tiles of a prefill, and the count of
rows of a norm. The first step whose block table was, say, 64 blocks wide, compiled the paged
prefill kernel again, in the middle of the run, and every request in that step waited. The
server's warm-up could never cover every value; the fix is not to specialise on them:
`@triton.jit(do_not_specialize=["stride_bt", "num_m_blocks"])` (and `["num_rows"]` for the norm).
The warm-up on a GPU now also runs a batch longer than a step's token budget, which covers the
norm's larger tiles and the chunked prefill, and after it the server logs every compile
(`mili.kernels._triton.watch_compiles`). `tests/test_engine_gpu.py` runs a workload of prompts of
every length, shared prefixes and chunks after the warm-up and fails if anything compiles.

The cell after the probe shows the old code against the new, each run on a fresh server, in two
calls on fresh machines. Each machine starts with Triton's disk cache cold, as a new deployment
does; in a tree's second round, the old code finds its mid-run specialisations already on disk
and loads them quickly, which is why a stall like this hides on a developer's warm machine. The
second call adds "short": the new kernels with the old, short warm-up, to tell the two changes apart.
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
probe_path = repo_root() / "benchmarks" / "prefill-kernels-h100.json"
if probe_path.exists():
    probe = json.loads(probe_path.read_text())
    print(f"{probe['device']}: {probe['seqs']} prompts of {probe['prompt_len']} tokens, the first {probe['prefix_len']} "
          f"cached ({probe['heads']} query heads, {probe['kv_heads']} KV heads, head_dim {probe['head_dim']}, {probe['dtype']})")
    for name in ("cache_off", "cache_on"):
        r = probe[name]
        print(f"  {name:<9} {r['kernel']:<17} {r['query_tokens']:>6} query tokens {r['us']:>8.1f} us "
              f"({r['us_per_query_token'] * 1e3:.1f} ns per query token)")
    print(f"  the cache-on prefill takes {probe['cache_on']['us'] / probe['cache_off']['us']:.2f} of the cache-off one's "
          f"time, at {probe['cache_on']['us_per_query_token'] / probe['cache_off']['us_per_query_token']:.1f}x the time "
          "per query token")
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
ab_path = repo_root() / "benchmarks" / "serve-h100-warmup-ab.json"
if ab_path.exists():
    ab = json.loads(ab_path.read_text())
    print(f"{ab['environment']['device']}, the shared-prefix workload, one fresh server per run, in the order they ran:")
    for number, call in enumerate(ab["calls"], 1):
        print(f"\ncall {number} (a fresh machine: Triton's disk cache starts cold)")
        print(f"{'run':<16} {'out tok/s':>9} {'TTFT p50':>9} {'p99':>8} {'TPOT p50':>9} {'ITL p99':>8}")
        for name, s in call["runs"].items():
            print(f"{name:<16} {s['output_throughput']:>9,.0f} {s['ttft_ms']['p50']:>9.1f} {s['ttft_ms']['p99']:>8.1f} "
                  f"{s['tpot_ms']['p50']:>9.2f} {s['itl_ms']['p99']:>8.1f}")
    print("\nold: integers specialised, short warm-up; short: do_not_specialize, short warm-up; "
          "new: do_not_specialize and the long warm-up (milliseconds)")
""")

md(r"""
Read the runs in order. Each call's first old-code run stalls: its median TTFT is about twice the
new code's or more, and close to its own p99, with the cache on and (in the first call) with it off;
the cache-off runs compile mid-run too, since the query-tile count and the norm's row count
change with every step's sizes. The old code's second runs are much closer, their extra
specialisations loaded from disk. "short" shows that the kernels' change alone removes the stall.
Throughput and TPOT are another matter: the same code varies from run to run by as much as the
codes differ from each other (compare each tree's two runs, and the two calls), so these runs
show no difference there. One run of 256 requests is one sample of a noisy process, and a
difference smaller than the spread between its own repeats is not a finding.
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
import random

rng = random.Random(0)
system_prompt = [rng.randrange(10, 1000) for _ in range(448)]
shared = [{"prompt_token_ids": system_prompt + [rng.randrange(10, 1000) for _ in range(64)]} for _ in range(16)]
prefill_only = SamplingParams(temperature=0, max_tokens=1)
for caching, first_alone in ((False, False), (True, False), (True, True)):
    llm = LLM(str(TINY), num_kv_blocks=1024, enable_prefix_caching=caching)
    if first_alone:  # one request with the system prompt runs first, as in a server that has been up a while
        llm.generate(shared[:1], prefill_only, use_tqdm=False)
    before = llm.stats()
    start = time.perf_counter()
    llm.generate(shared[1:], prefill_only, use_tqdm=False)
    seconds = time.perf_counter() - start
    after = llm.stats()
    hits = (after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"]) / (
        after["prefix_cache_query_tokens"] - before["prefix_cache_query_tokens"])
    label = "off" if not caching else ("on, after one request" if first_alone else "on, all at once")
    print(f"prefix cache {label:<22} 15 prefills of 512 tokens (448 shared): {seconds:.2f} s, "
          f"{hits:.0%} of their prompt tokens from the cache")
    del llm
""")

md(r"""
All at once into an empty cache, the requests share nothing: they are admitted in the same step,
before any of them has computed the prefix, and a block enters the cache only once its K/V is
written. A server that has been up a while holds its system prompt already: the third row. On
the H100, 256 requests did not fit one step's token budget, so the later ones did find the prefix
cached (the hit rate above) — and still waited longer. The cache did its part there; the time
went elsewhere.
""")

md(r"""
## 7. Graceful drain, Docker and Kubernetes

**Drain.** A deployment replaces pods by sending SIGTERM and, after a grace period, SIGKILL.
`mili serve` turns SIGTERM into a drain (`mili/server/cli.py`): `/health` and every new request
answer 503 (the load balancer stops sending), requests in flight may finish for up to
`--shutdown-timeout` seconds, the rest are aborted — their streams end with
`finish_reason: "abort"`, so clients know — and the process exits with status 0.

**Docker** (`deployment/Dockerfile`): two stages on a CUDA base image; the first installs
`pip install -e ".[server]"` into a virtual environment, the second copies it into the
runtime image and runs `mili serve` as a non-root user, with a `HEALTHCHECK` on `/health`.
`deployment/docker-compose.yml` runs it next to Prometheus, which scrapes `/metrics`.

**Kubernetes** (`deployment/kubernetes/`): the pod asks for one `nvidia.com/gpu`, mounts the
model from a volume, and probes `/health` three ways — a *startup* probe with a long budget
(loading weights), a *readiness* probe that fails during the drain (the Service stops routing
to the pod at once) and a *liveness* probe (a dead engine thread gets the pod restarted). A
`preStop` sleep lets the endpoints update before SIGTERM arrives, and
`terminationGracePeriodSeconds` covers the preStop sleep + `--shutdown-timeout` + the last
chunks. `tests/test_deployment.py` checks these numbers agree and validates the manifests
against the Kubernetes and Compose schemas.
""")

code(r"""
print((repo_root() / "deployment" / "kubernetes" / "deployment.yaml").read_text().split("containers:")[1][:900])
""")

md(r"""
Now stop our server the way Kubernetes would — SIGTERM — and check that it drained and exited 0:
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
start = time.monotonic()
server_context.__exit__(None, None, None)
print(f"exit status {server.process.returncode} after {time.monotonic() - start:.1f} s")
""")

md(r"""
## 8. What you built

An OpenAI-compatible service around your engine: one thread drives the engine while the event
loop serves many clients, each with its own stream of Server-Sent Events; bad requests are
refused before they reach the engine, clients that leave free their KV blocks within one step,
the server tells Prometheus and load balancers how it is doing, and it stops without dropping
work. With the load generator you can now measure the whole stack the way users feel it: run
`mili serve` on a GPU with a real Qwen3 and `mili bench serve` against it.
""")

md(r"""
## 9. Scaling out: tensor parallelism

Qwen3-32B is 65 GB of bfloat16 weights: on an 80 GB GPU almost nothing is left for the KV
cache. Tensor parallelism splits **every layer** over the GPUs of one host, so each holds and
reads only its share of the weights. Megatron-LM's split costs two all-reduces per layer: the
first matrix of a pair is split by its *output* features (column-parallel: each rank computes
some features, no communication), the second by its *input* features (row-parallel: each rank
multiplies the features it has, and one all-reduce sums the partial products). Attention splits
by heads (a rank's q, k, v rows, its heads, its columns of `o_proj`), the MLP by intermediate
features; the embedding and the LM head split the vocabulary (the logits are gathered on rank 0,
which samples). Between the all-reduces nothing is exchanged:
""")

code(r"""
from matplotlib.patches import FancyBboxPatch

steps = [("hidden\n(all of it)", None), ("qkv_proj\nmy heads' rows", "column"), ("attention\nmy heads", None),
         ("o_proj\nmy columns", "row"), ("Σ all-reduce", "reduce"), ("+ residual\nnorm", None),
         ("gate_up_proj\nmy rows", "column"), ("silu · up", None), ("down_proj\nmy columns", "row"),
         ("Σ all-reduce", "reduce"), ("+ residual", None)]
colors = {"column": "#9ecae1", "row": "#fdae6b", "reduce": "#e6550d", None: "#f0f0f0"}
fig, ax = plt.subplots(figsize=(14, 3.2))
for i, (label, kind) in enumerate(steps):
    x = i * 1.3
    ranks = [(-0.35, 1.7)] if kind == "reduce" else [(0.85, 0.5), (-0.35, 0.5)]
    for y, height in ranks:
        ax.add_patch(FancyBboxPatch((x, y), 1.1, height, boxstyle="round,pad=0.02", fc=colors[kind], ec="black"))
        ax.text(x + 0.55, y + height / 2, label, ha="center", va="center", fontsize=8,
                color="white" if kind == "reduce" else "black")
    if i:
        for y in (1.1, -0.1):
            ax.annotate("", (x, y), (x - 0.2, y), arrowprops=dict(arrowstyle="->"))
for y, name in ((1.1, "rank 0"), (-0.1, "rank 1")):
    ax.text(-0.15, y, name, ha="right", va="center", fontsize=10)
ax.set_xlim(-1.0, len(steps) * 1.3)
ax.set_ylim(-0.5, 1.5)
ax.axis("off")
ax.set_title("One decoder layer on 2 ranks: blue splits outputs (column-parallel), orange splits inputs "
             "(row-parallel), red joins the ranks")
plt.show()
""")

md(r"""
`LLM(model, tensor_parallel_size=2)` (`mili generate --tensor-parallel-size 2`) starts one
process per rank (`mili/distributed/`): rank 0 runs the whole engine of chapter 03 unchanged,
and its model sends each step's batch to the other ranks with one `torch.distributed.broadcast`
before running its own shard. On GPUs the ranks talk over NCCL; here, on the CPU, over gloo —
the same code, which is how the tests check that 2 ranks give exactly the tokens of one process:
""")

code(r"""
params = SamplingParams(temperature=0, max_tokens=12)
questions = ["What is 17 + 25?", "Reverse the words:\nred green blue", "Sort the numbers:\n9, 2, 7, 4"]
conversations = [[{"role": "user", "content": q}] for q in questions]
one = LLM(str(TINY), num_kv_blocks=64)
two = LLM(str(TINY), num_kv_blocks=64, tensor_parallel_size=2)
for question, a, b in zip(questions, one.chat(conversations, params, use_tqdm=False),
                          two.chat(conversations, params, use_tqdm=False)):
    print(f"{question!r:40} one process {a.outputs[0].text!r:16} two ranks {b.outputs[0].text!r:16} "
          f"same tokens: {a.outputs[0].token_ids == b.outputs[0].token_ids}")
whole = sum(p.numel() for p in one.model.parameters())
print(f"rank 0 holds {sum(p.numel() for p in two.model.shard_model.parameters()) / whole:.0%} of the weights")
two.model.shutdown()
""")

md(r"""
Each rank holds half of the weights (the norms, which every rank keeps whole, are tiny).

### Exercise 6.4 — column- and row-parallel linear layers

In `mili/model/parallel.py`, implement `ColumnParallelLinear.load` (copy this rank's rows of the
full weight and bias), `RowParallelLinear.load` (this rank's columns; every rank holds the whole
bias) and `RowParallelLinear.forward` (multiply with `self.partial_product`, sum the partial
sums over the ranks with `self.group.all_reduce` — `dist.all_reduce` on this CPU, a faster kernel
on GPUs, see below — and add the bias once). The full weights may arrive as safetensors slices: index them with one slice so that a
rank reads only its part from disk — no rank of a 32B model can hold the whole of it. The grader
runs your layers on 2 gloo ranks against the same layers computed whole in one process.
""")

code(r"""
mili.grade("6.4")
""")

md(r"""
### Measured on two GPUs

`benchmarks/record_tp.sh` measures the same code on the GPUs of one host: batch-1 decode at
Qwen3-8B shapes with one GPU and with two, Qwen3-32B (which does not fit one 80 GB card with a
KV cache) on two, and the throughput workload at 8B shapes, each against the weight-read floor of
its *whole group* (every GPU reads its share at the copy bandwidth measured in the run). Two
records follow: two H100s joined by NVLink, when small all-reduces still used PyTorch's one-shot
op, and four H200s joined by NVLink, with mili's own kernels (below), where the same run also
took TP=4 (and, for 32B, TP=4 against TP=2). Each JSON in `benchmarks/tp-*.json` names its own
commit; earlier H200 records are in `benchmarks/tp-h200-*/`:
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
from IPython.display import Image, display

for card in ("h100", "h200"):
    tp = json.loads((repo_root() / "benchmarks" / f"tp-summary-{card}.json").read_text())
    print(f"{tp['environment']['device']}s, at commit {tp['environment']['git_commit'][:7]}")
    for row in sorted(tp["latency"], key=lambda r: (r["model"], r["tensor_parallel_size"])):
        print(f"batch 1  {row['model']:<10} TP={row['tensor_parallel_size']}  {row['tpot_ms']:6.2f} ms/token  "
              f"floor {row['floor_ms_per_token']:5.2f} ms  ({row['times_floor']:.2f}x)")
    for row in tp["throughput"]:
        print(f"offline  {row['model']:<10} TP={row['tensor_parallel_size']}  {row['tokens_per_s']:8,.0f} tok/s   "
              f"{row['fraction_of_bandwidth_floor']:.0%} of its floor")
    for name, ratio in sorted(tp["decode_speedup"]["Qwen3-8B"].items()):  # "tp2_over_tp1", ...
        ranks = name.split("_")[0].removeprefix("tp")
        print(f"Qwen3-8B at batch 1: TP={ranks} takes {ratio['time_ratio']:.2f} of TP=1's time per token; "
              f"the ideal (1/{ranks} of the bytes per GPU) is {ratio['ideal_time_ratio']:.2f}")
    print()
display(Image(filename=str(repo_root() / "benchmarks" / "tp-h200.png")))
""")

md(r"""
**Where the other half of the speed-up goes.** Each GPU reads half the bytes, but it still runs
every layer's small kernels (norms, RoPE, the KV store, attention) at full count, and a batch-1
step adds two all-reduces per layer (72 at Qwen3-8B's 36 layers, and one for the embedding) of
only 8 KB each. At that size an all-reduce costs its
latency, not its bytes. NCCL's general algorithms pass the data through several steps. PyTorch's
*symmetric memory* maps each GPU's buffer into the others' address space, so one kernel can do
it all; PyTorch's own one-shot op copies its part in, meets the other GPUs at a barrier, reads
every part over NVLink, sums, and meets them at a second barrier before the buffer may be reused.
mili's kernel (`mili/distributed/one_shot.py`) needs no barrier: each element of a buffer holds
an *empty* marker (the bits of -0.0, which no rank sends) until data arrives, so each rank
*pushes* its part into every GPU's buffer and polls its own until nothing is empty, then sums and
empties it. Two slots, alternating, keep a fast rank from overwriting what a slow one still
reads. And it launches dependently, like the other kernels of the step. The probe below times a
chain of all-reduces of each size inside a CUDA graph, three ways, in one run:
""")

think(r"""
mili's kernel gives each all-reduce call one of two slots, alternating. Why would a single
buffer not do, with no barrier? And why are two enough, however far ahead one rank runs? (When
can a peer write its part of our buffer again?)
""", r"""
With one buffer, a fast rank finishes call c as soon as our part has arrived, runs on, and at call
c+1 writes its next part into our buffer, possibly before we have read its part of call c: we
would sum a mix of two calls. With two slots, a peer writes the same slot of our buffer again at
call c+2. To get there it must finish call c+1, which needs our part of call c+1, and we send that
only after our call c has read and emptied the slot. So whatever the skew, a slot is empty before
it is written again. A rank can never get more than one call ahead of another, because each call
waits for everyone's part.
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
probe = json.loads((repo_root() / "benchmarks" / "all-reduce-probe-h200.json").read_text())
sizes = probe["sizes"]
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for key, label, marker in (("nccl_us", "NCCL all_reduce", "o-"), ("torch_one_shot_us", "PyTorch one-shot (two barriers)", "s-"),
                           ("mili_one_shot_us", "mili one-shot (push and poll)", "^-")):
    ax.plot([s["bytes"] / 1024 for s in sizes], [s[key] for s in sizes], marker, label=label)
ax.set(xscale="log", xlabel="tensor size (KiB, bf16 rows of 4096)", ylabel="µs per all-reduce (+ one small kernel)",
       title=f"A chain of all-reduces between {probe['gpus']} {probe['gpu']}s, inside a CUDA graph")
ax.legend()
plt.show()
ab = json.loads((repo_root() / "benchmarks" / "all-reduce-engine-ab-h200.json").read_text())["second_call"]
print(f"Qwen3-8B, TP=2, batch 1: {ab['old_759926d_tpot_ms']:.2f} ms/token with PyTorch's one-shot op, "
      f"{ab['new_ada4093_tpot_ms']:.2f} with mili's (same call)")
smallest = sizes[0]
expected = 73 * (smallest["torch_one_shot_us"] - smallest["mili_one_shot_us"]) / 1000
measured = ab["old_759926d_tpot_ms"] - ab["new_ada4093_tpot_ms"]
print(f"the probe predicts {expected:.2f} ms saved per token (73 all-reduces of {smallest['bytes'] // 1024} KiB); "
      f"the engine saved {measured:.2f} ms")
""")

think(r"""
The probe predicts how much a step should save with mili's one-shot kernel; the engine saved more
than that (the last line above). What does a decode step have that the probe's chain does not?
And before you run the next cell: of the gap between TP=2's time and the ideal (half of one GPU's
bytes), which kernels would you expect to take the most?
""", r"""
In the probe, the kernel between two all-reduces is PyTorch's elementwise scaling, which does not
take part in dependent launch: each all-reduce waits for it to finish before it can even launch.
In a decode step the all-reduce sits between a GEMV and a norm that both launch dependently, so
mili's kernel is already resident when the GEMV finishes, and the norm is resident when the
all-reduce finishes: the launch latency on both sides is hidden, which PyTorch's op (not a
dependent launch) broke twice per all-reduce. The probe counts only the all-reduce's own time.
The rest of the gap: every rank still runs each layer's small kernels (norms, RoPE, the KV store,
attention) at full count, and a half-size GEMV is further from the bandwidth than a full one (the
same ramp-up and tail, half the bytes). The next cell's trace shows it: the small kernels cost
the same with one rank or two, so their excess over half is as large a part of the gap as the
all-reduces and as the GEMVs' lost efficiency. So the next savings are the fusions that also matter
on one GPU (norm into the GEMV before it, SiLU into the down projection, the all-reduce into the
residual add and norm that follow it), not a faster all-reduce alone.
""")

md(r"""
A kernel trace of rank 0's decode step splits it (`benchmarks/probes/decode_kernels.py` with
`MILI_PDL=0`, so each kernel's time is its own, not its wait; the same two H200s):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
def kernel_split(path, groups):
    # each group's microseconds per step in a kernel trace (groups: name -> kernel name prefixes), and the rest
    record = json.loads((repo_root() / "benchmarks" / path).read_text())
    split = {group: sum(k["us_per_step"] for k in record["kernels"] if k["name"].startswith(names))
             for group, names in groups.items()}
    kernels = [k for k in record["kernels"] if not k["name"].startswith("nccl:")]  # annotations, not kernels
    split["the rest: sampling, gathering the logits, copies"] = sum(k["us_per_step"] for k in kernels) - sum(split.values())
    return record, split

then = {"GEMVs (the layers' weights)": ("_gemv_kernel",), "LM head": ("nvjet",),
        "all-reduces": ("_one_shot_all_reduce_kernel",),
        "small kernels: norms, RoPE, KV store, attention, SiLU": (
            "_rms_norm_kernel", "_qk_norm_rope_kernel", "_store_kvcache_kernel", "_paged_decode_split_kernel",
            "_combine_splits_kernel", "_silu_and_mul_kernel")}
one, split_one = kernel_split("decode-kernels-h200-qwen3-8b-tp1-pdl-off.json", then)
two, split_two = kernel_split("decode-kernels-h200-qwen3-8b-tp2-pdl-off.json", then)
print(f"{one['device']}, {one['model']}, batch 1, rank 0, us per step    TP=1     TP=2   TP=2/TP=1")
for group in split_one:
    ratio = f"{split_two[group] / split_one[group]:8.2f}" if split_one[group] else "       -"
    print(f"  {group:<56} {split_one[group]:7.0f}  {split_two[group]:7.0f}  {ratio}")
total_one, total_two = sum(split_one.values()), sum(split_two.values())
print(f"  {'all kernels':<56} {total_one:7.0f}  {total_two:7.0f}  {total_two / total_one:8.2f}")
""")

md(r"""
**The all-reduce inside the GEMVs.** The answer above named one more fusion: the all-reduce into
the residual add and norm that follow it (`mili/kernels/pushed_sums.py`). The o and down GEMVs
push their partial products straight into every GPU's buffer, by the same empty-marker rule. In
the first version the next GEMV, which already read its whole input row in every program for the
norm, waited for every rank's part and summed it as it read: no kernel stood between the two.
(The engine now sums in a small norm kernel before a plain GEMV; the section "A fusion that wins
at one shape and loses at another" below says why.) Each call site of the step (layer 3's o
projection, layer 3's down projection, ...) owns a region of the buffer, and in that version the
GEMV of the next call site emptied the previous one (who empties it now is the last part of this
section). One run on two H200s, alternating the two ways
(`MILI_FUSED_ALL_REDUCE=0` keeps the all-reduce kernels):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
ab_dir = repo_root() / "benchmarks" / "tp-sums-in-gemvs-ab-h200"
runs = {p.stem.removeprefix("latency-8b-"): json.loads(p.read_text()) for p in sorted(ab_dir.glob("latency-8b-*.json"))}
tp1 = runs.pop("tp1")["mili"]["tpot_ms"]
print(f"{runs['tp2-kernels-1']['environment']['device']} x 2, Qwen3-8B, batch 1, commit "
      f"{runs['tp2-kernels-1']['environment']['git_commit'][:7]}: TP=1 {tp1:.3f} ms/token")
for name, run in runs.items():
    how = "sums in the GEMVs  " if run["sums_in_gemvs"] else "all-reduce kernels"
    print(f"  TP=2, {how}  {run['mili']['tpot_ms']:.3f} ms/token = {run['mili']['tpot_ms'] / tp1:.3f} of TP=1")
""")

think(r"""
mili's one-shot kernel empties each element right after reading it. Why could the GEMV that read a
call site's sums, in this first version, not do the same? And the sites need no slot bits: why was one region per call
site enough, as long as the step had three call sites or more? (When does a peer write the same
site again, and what has this rank done by then?)
""", r"""
In the one-shot kernel each element is read by exactly one program, so that program knows when
it is done with it. In that GEMV every program read the whole row (each needs all of x for its
rows' dot products and for the norm), and no program knows when the others have finished: an
early one that emptied the site would leave a later one waiting forever. Only a later kernel
knows that all of them are done. So the GEMV of the next call site empties the previous site
after its dependent wait, which returns once the kernel before it has finished, and everything
before that kernel too. A peer writes site s again one step later. To get there it must have
read this rank's parts of every site in between, which this rank pushes only after the GEMV of
site s+1 has emptied site s. With only two call sites, that GEMV would also be the one that
pushes the part the peer waits for: the emptying and the push would race inside one kernel.
""")

md(r"""
**Around the layers.** Once the sums moved into the GEMVs, a kernel trace of rank 0 showed where
else TP=2 spent time that one GPU does not. Before its first GEMV the step ran 47 µs of small
kernels, against 9 at TP=1: the step's integer inputs packed into one tensor and broadcast, then
unpacked and copied into the graph's buffers, and the vocabulary-parallel embedding's masks and
all-reduce. Now rank 0 stages a batch-1 step's inputs in its graph's own buffer, one broadcast
fills every rank's buffer, and the embedding pushes its row into a sum site that the first layer
sums (`embedding_to_sum`). And each rank turns its own graph's output into its part of the
logits, instead of receiving rank 0's hidden state: the ranks' hidden states are the same bits.
The phases of a step, from the two traces (two calls on two H200s each; a trace runs under the
profiler, so its times are a little longer than a step's), then the batch-1 latency from a third
call that alternates the two versions:
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
import gzip
import statistics


def step_phases(trace_path):
    # per decode step (between two copies of the sampled id to the host): the kernels before the
    # first GEMV, the layers, what comes between them and the LM head, the LM head, and after it
    events = [e for e in json.load(gzip.open(trace_path))["traceEvents"]
              if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    events.sort(key=lambda e: e["ts"])
    ends_of_steps = [i for i, e in enumerate(events) if "Device -> Pinned" in e["name"]]
    phases = []
    for a, b in zip(ends_of_steps[1:-1], ends_of_steps[2:]):
        step = events[a + 1:b + 1]
        gemvs = [e for e in step if e["name"].startswith("_gemv")]
        lm_head = next(e for e in step if "nvjet" in e["name"])  # cuBLAS's GEMV for the LM head
        phases.append({"before the first GEMV": gemvs[0]["ts"] - step[0]["ts"],
                       "layers": gemvs[-1]["ts"] + gemvs[-1]["dur"] - gemvs[0]["ts"],
                       "then to the LM head": lm_head["ts"] - gemvs[-1]["ts"] - gemvs[-1]["dur"],
                       "LM head": lm_head["dur"],
                       "after it (gather, sample)": step[-1]["ts"] + step[-1]["dur"] - lm_head["ts"] - lm_head["dur"]})
    return {name: statistics.median(p[name] for p in phases) for name in phases[0]}


def layer_kernels(trace_path):
    # what each kernel of a layer adds to the step: from the end of the kernel before it to its own
    # end (under dependent launch a kernel starts before the one before it ends), median over layers
    events = sorted((e for e in json.load(gzip.open(trace_path))["traceEvents"]
                     if e.get("ph") == "X" and e.get("cat") == "kernel"), key=lambda e: e["ts"])
    added, gemvs_seen, previous_end = {}, 0, None
    for e in events:
        role = None
        if e["name"].startswith("_gemv"):
            role, gemvs_seen = ("qkv", "o", "gate_up", "down")[gemvs_seen % 4], gemvs_seen + 1
        elif "attention" in e["name"]:
            role = "attention"
        elif "merge" in e["name"]:
            role = "merge"
        if role and previous_end is not None:
            added.setdefault(role, []).append(e["ts"] + e["dur"] - previous_end)
        previous_end = e["ts"] + e["dur"]
    return {role: statistics.median(times) for role, times in added.items()}


trace_dir = repo_root() / "benchmarks" / "tp-batch-1-inputs-ab-h200"
columns = {"TP=1 (before)": "before-07859cb/trace-8b-tp1.json.gz", "TP=2 before": "before-07859cb/trace-8b-tp2.json.gz",
           "TP=2 after": "after-9d344e2/trace-8b-tp2.json.gz"}
table = {name: step_phases(trace_dir / path) for name, path in columns.items()}
print(f"{'µs per step (median)':<28}" + "".join(f"{name:>15}" for name in table))
for phase in next(iter(table.values())):
    print(f"{phase:<28}" + "".join(f"{t[phase]:>15.1f}" for t in table.values()))
kernels = {name: layer_kernels(trace_dir / path) for name, path in columns.items()}
one_gpu = kernels.pop("TP=1 (before)")
print(f"\n{'µs a layer kernel adds':<28}{'TP=1':>15}" + "".join(f"{name:>15}{'of TP=1':>9}" for name in kernels))
for role, time in one_gpu.items():
    print(f"{role:<28}{time:>15.2f}" + "".join(f"{k[role]:>15.2f}{k[role] / time:>9.2f}" for k in kernels.values()))
ab = {p.stem.removeprefix("latency-8b-"): json.loads(p.read_text()) for p in sorted((trace_dir / "ab-8fec446").glob("*.json"))}
tp1 = ab["tp1"]["mili"]["tpot_ms"]
probe_device = ab["tp1"]["environment"]["device"] + "s"
print(f"\nbatch-1 latency, one call, alternating: TP=1 {tp1:.3f} ms/token")
for arm in ("baseline-1", "1", "baseline-2", "2"):
    run = ab[f"tp2-{arm}"]
    print(f"  TP=2 at {run['environment']['git_commit'][:7]}: {run['mili']['tpot_ms']:.3f} ms/token = "
          f"{run['mili']['tpot_ms'] / tp1:.3f} of TP=1")
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
roles = list(one_gpu)
fig, ax = plt.subplots(figsize=(7.5, 3.4))
for offset, (name, added) in zip((-0.2, 0.2), kernels.items()):
    ax.bar([i + offset for i in range(len(roles))], [added[r] / one_gpu[r] for r in roles], width=0.4, label=name)
ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="half (each rank reads half the weights)")
ax.set_xticks(range(len(roles)), roles)
ax.set(ylabel="time added at TP=2 / at TP=1", ylim=(0, 1.1),
       title=f"What each kernel of a layer adds to the step, Qwen3-8B, {probe_device}")
ax.legend(fontsize=8)
plt.show()
""")

md(r"""
The prologue lost most of its time and the broadcast before the LM head went, and in the
alternating run the step is about 0.04 ms shorter. The layers vary from call to call by as much
(the two TP=2 traces ran on different machines), and the target of 0.6 of TP=1 is still not met:
what separates TP=2 from half of TP=1 is now inside the layers. Each GEMV reads half its TP=1
bytes, so each should add half its TP=1 time. The o and down projections come close; the qkv
GEMV, which first waits for the other rank's down projection, is furthest from it. Every program
of a summing GEMV polled the whole row until both ranks' parts were there, so each of the 72 sums
per step cost the two GPUs' skew and the interconnect's latency, on top of the bytes. The memory
sits idle during that wait; asking for the first megabytes of the weight to come into L2 then
gained almost nothing, and asking for more lost time
(`benchmarks/tp-batch-1-inputs-ab-h200/README.md`).

How much is the summing itself, and how much the other GPU? `benchmarks/probes/summing_gemv_probe.py`
runs the GEMVs of the shard's 36 layers on one GPU (no attention), once with the plain kernels
and once summing through sum sites of a group of one rank: the polling, the second read of the
parts, the pushes, but no other GPU to wait for. (Its record is of the summing GEMVs; the probe
now runs the summing norm kernel.)
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
probe = json.loads((repo_root() / "benchmarks" / "summing-gemv-probe-h200.json").read_text())
print(f"{probe['environment']['device']}, commit {probe['environment']['git_commit'][:7]}: the GEMVs of "
      f"{probe['layers']} layers of a Qwen3-8B shard at TP=2, {probe['weight_gigabytes']:.2f} GB")
for name, us in probe["us_per_layer"].items():
    print(f"  {name:<30} {us:6.2f} us a layer  {probe['tb_per_s'][name]:.2f} TB/s")
per_layer_gb = probe["weight_gigabytes"] / probe["layers"]  # a TP=2 shard's; TP=1 reads twice as much


def gemv_rate(added, gigabytes):  # TB/s over the time a layer's four GEMVs add to a step
    return gigabytes / sum(added[role] for role in ("qkv", "o", "gate_up", "down")) * 1e3


print(f"the steps traced above, their layers' GEMVs: TP=1 {gemv_rate(one_gpu, 2 * per_layer_gb):.2f} TB/s, "
      f"TP=2 {gemv_rate(kernels['TP=2 after'], per_layer_gb):.2f} TB/s (waiting for the other GPU included)")
""")

md(r"""
The summing costs about a microsecond a layer. The rest of the gap has two parts of similar size:
waiting for the other GPU at each of the two sums of a layer (the real step's GEMVs against the
probe's), and the GEMVs themselves, which at half size stream their weights more slowly than
TP=1's full-size GEMVs (the probe against TP=1).
""")

md(r"""
**Three ideas that lost.** Two attacked the wait at the sums. First: the parts carry their own
"arrived" marks, so a summing GEMV need not wait for the pushing kernel before it to end (its
end, the flush of its stores, the release of the next kernel); it could let the next kernel
launch and poll at once. Second: each rank autotunes the GEMV on its own GPU, so the ranks may
run different configurations, and the faster would wait for the slower at every sum; rank 0
could send its picks to every rank. Each was measured against the code without it, in one call
(`benchmarks/tp-sum-wait-h200/`, `benchmarks/tp-shared-choices-ab-h200/`):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
bench = repo_root() / "benchmarks"


def per_layer(path):
    return json.loads((bench / path).read_text())["us_per_layer"]


print("summing GEMVs of a Qwen3-8B shard in a one-rank group, µs a layer (plain / summed):")
for name, path in (("wait for the kernel before", "tp-sum-wait-h200/no-wait-372d31b/summing-probe-01148df.json"),
                   ("poll from launch", "tp-sum-wait-h200/no-wait-372d31b/summing-probe-372d31b.json"),
                   ("wait for the kernel before", "tp-sum-wait-h200/early-sum-probe/summing-probe-wait.json"),
                   ("poll one element a rank, napping", "tp-sum-wait-h200/early-sum-probe/summing-probe-early.json")):
    us = per_layer(path)
    print(f"  {name:<34} {us['plain']:6.2f} / {us['summed (a group of one rank)']:6.2f}")
choices = bench / "tp-shared-choices-ab-h200"


def tpot(name):
    return json.loads((choices / f"latency-8b-{name}.json").read_text())["mili"]["tpot_ms"]


one = tpot("tp1")
for arm, label in (("tp2-baseline", "each rank's own picks"), ("tp2", "rank 0's picks on every rank")):
    runs = [tpot(f"{arm}-{r}") for r in (1, 2, 3)]
    print(f"TP=2, {label:<29}: " + ", ".join(f"{t:.3f}" for t in runs) + f" ms/token (TP=1 {one:.3f}: "
          f"{min(runs) / one:.3f}-{max(runs) / one:.3f})")
""")

md(r"""
Polling from launch lost almost three microseconds a sum: the pollers, launched once every
program of the pushing kernel had started, read whole rows while that kernel still streamed its
weights. Reading only the last element of each rank's part, with a short sleep between reads,
still lost about one: here the hardware's wait was cheaper than a program that waits in software.
The ranks did pick differently, for one or two of the six GEMV shapes in each run; but each
rank's own pick is the fastest it found on its own GPU, and the step waits for the slower rank
at each sum, so rank 0's picks cannot make the slower rank faster, and the step did not get
faster. Neither is kept.

The third attacked what does not shrink at all: attention and the kernel that merges its splits
take as long at TP=2 as at TP=1. The attention kernel could merge its own splits: each program
writes its split's output and log-sum-exp, counts itself in with an atomic add on its KV head's
counter, and the program that arrives last merges, so the merge kernel and the boundary before
it go. An earlier version of this idea, which counted with one thread's atomic after a barrier,
changed tokens inside CUDA graphs: most likely the last program read another program's partials
before they were visible. With a `fence.acq_rel.gpu` in every thread before the count (and again
before the reads) it passed the GPU tests of the fused step, the CUDA graphs and the engine.
Measured against the merge kernel, three calls on two H200s
(`benchmarks/attention-merge-in-kernel-ab-h200/`):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
merge_ab = bench / "attention-merge-in-kernel-ab-h200"
for folder, arms in (("first-call", ("kernel", "merged")), ("unrolled-call", ("kernel", "unrolled")),
                     ("no-fence-call", ("kernel", "nofence"))):
    for arm in arms:  # kernel: the merge kernel; the others merge in the attention kernel's last program
        cells = []
        for tp in (1, 2):
            runs = [json.loads(f.read_text())["mili"]["tpot_ms"]
                    for f in sorted((merge_ab / folder).glob(f"latency-8b-tp{tp}-{arm}*.json"))]
            cells.append(", ".join(f"{t:.3f}" for t in runs) or "-")
        print(f"{folder:<14} {arm:<9} ms/token  TP=1 {cells[0]:<13}  TP=2 {cells[1]}")
alone = json.loads((merge_ab / "no-fence-call" / "kernels-8b-tp1-pdl-off-kernel.json").read_text())
for kernel in alone["kernels"]:
    if kernel["name"] in ("_new_token_attention_kernel", "_merge_splits_kernel"):
        print(f"timed alone at TP=1 (MILI_PDL=0): {kernel['name']:<28} {kernel['mean_us']:.2f} µs a layer")
""")

md(r"""
Slower in every call: by 0.11–0.16 ms a step at TP=1 and 0.20–0.23 at TP=2, 3 to 6 µs a layer,
where the whole merge kernel takes 1.6 µs a layer timed alone. Without the fences (incorrect,
timed only to divide the loss) it lost about half as much. So the fences cost one half, and the
other half is most likely the tail the last program adds to the kernel: an atomic's round trip,
then the dependent reads of the partials.
Under dependent launch the separate merge kernel is already launched and waiting, and its
boundary costs less than that tail. The merge stays a kernel of its own.
""")

think(r"""
The first version had a barrier across the program's threads and then one thread's atomic add
with acquire-release semantics; its tokens changed inside CUDA graphs. The second had a
`fence.acq_rel.gpu` in every thread before the count, and again in every thread of the last
program before it read; it passed. What does the fence in every thread guarantee by
construction? And why can no test in Triton's interpreter catch such a race, however often it
runs?
""", r"""
Each thread's fence makes that thread's own stores visible to the whole GPU before anything the
thread does afterwards, here before the sum over all threads that the count waits for. So when the
count reaches its last value, every store of every arriving program is visible, whatever the
memory model says about one thread's release covering what other threads wrote. (A barrier
orders the threads of one program among themselves; whether a single release after it also
publishes the other threads' stores to other SMs is exactly the kind of subtle cumulativity
question one should not rely on, and the first version's race most likely came from there; it
was not proven.) The reader's fences, and its loads that bypass its SM's L1, which is not kept
coherent with other SMs' writes, make each of its threads see those stores. The interpreter runs
the programs one after another, each to completion, over ordinary memory: by the time the last
program runs, every store of the earlier ones has happened. The race needs programs running at
the same time on different SMs, so only GPU runs can show it, and a GPU run that passes shows
only that the race did not happen that time.
""")

think(r"""
Each rank now turns its own final hidden state into its part of the logits, where before rank 0
broadcast its own. That is only right if the two ranks' hidden states are the same bits. Why
are they, although each rank computes different products? What would make them differ, and
what would the user see if they did?
""", r"""
Every rank ends each layer with the same residual row because every sum over the ranks gives
every rank the same bits: the one-shot kernel and the summing norms add the parts in rank order,
in float32, and round once, on every rank, and everything after a sum (the norm, the residual
add) is computed from that sum alone. The final norm then reads the same row on every rank. If
each rank added the others' parts to its own, each in its own order, floating-point addition,
which is not associative, would give rows that differ in the last bits (NCCL avoids this too:
each element is reduced once, on one rank, and the result is sent to the others). The logits of the two halves of the vocabulary would then come from slightly
different hidden states: mostly harmless, but greedy decoding could pick a different token
where two logits are nearly tied, and the tokens would no longer equal one GPU's or the eager
group's, which is what the tensor-parallel tests compare.
""")

md(r"""
**A fusion that wins at one shape and loses at another.** At Qwen3-32B shapes on two H200s the
same batch-1 step is slower than with its fusions switched off, where at 8B it was faster. One
call timed the three steps and then traced rank 0's kernels with dependent launch off, so that
each kernel's time is its own; a second traced the default step by launch shape, one GEMV per
projection (`benchmarks/tp-32b-switches-h200/`):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
switches = bench / "tp-32b-switches-h200"
for arm, label in (("default", "fused, sums in the GEMVs"), ("sums-in-gemvs-off", "fused, all-reduce kernels"),
                   ("fused-step-off", "the modules' forward")):
    ms = json.loads((switches / "kernels-c161773" / f"latency-qwen3-32b-tp2-{arm}.json").read_text())["mili"]["tpot_ms"]
    kernels = json.loads((switches / "kernels-c161773" / f"kernels-qwen3-32b-tp2-{arm}-pdl0.json").read_text())
    gemvs = sum(k["us_per_step"] for k in kernels["kernels"] if k["name"] == "_gemv_kernel")
    print(f"{label:<27} {ms:6.3f} ms/token, its GEMVs {gemvs:6.0f} µs a step")
shapes = json.loads((switches / "gemv-tilings" / "kernels-32b-tp2-c161773-pdl0.json").read_text())
weights = {"qkv": 5120 * 5120, "o": 5120 * 4096, "gate_up": 2 * 12800 * 5120, "down": 5120 * 12800}  # rank 0's shard
projections = {(640, 128): "qkv", (2560, 64): "o", (1600, 128): "gate_up", (2560, 128): "down"}  # (programs, threads)
for launch in shapes["launch_shapes"]:
    if launch["name"] != "_gemv_kernel":
        continue
    programs, threads = json.loads(launch["grid"])[0], json.loads(launch["block"])[0]
    name = projections[programs, threads]
    rate = 2 * weights[name] / launch["mean_us"] / 1e6
    print(f"{name:<8} {programs:5d} programs of {threads:3d} threads, {launch['registers']:3d} registers: "
          f"{launch['mean_us']:5.1f} µs, weights at {rate:.2f} TB/s")
pinned = {"none": "as the autotuner picks them", "A": "pinned to 2 rows, 1024 columns",
          "B": "pinned to 1 row, 2048 columns"}
for arm, label in pinned.items():  # a third call
    ms = json.loads((switches / "gemv-tilings" / f"pinned-32b-tp2-{arm}.json").read_text())["mili"]["tpot_ms"]
    print(f"summing norm GEMVs {label:<30}: {ms:6.3f} ms/token")
""")

md(r"""
The GEMVs read the same weights in all three steps and take over a millisecond more in the
default one, more than its fusions save elsewhere. By launch shape the loss is in the two GEMVs
whose input is the row summed over the GPUs and then normalised (qkv, gate_up): they stream their
weights much more slowly than the down projection. Every program of such a GEMV reads the whole
pushed row, each GPU's part, from L2: once in its prologue, polling until it has arrived, and
again tile by tile in its loop. The autotuner keeps the programs few, 8 rows each, at the cost of
so many registers that an SM holds few of them, and that choice is the best of its set: pinned to
fewer rows a program (a third call), the step lost milliseconds. At TP=1, whose norm GEMVs read an ordinary row,
the same pinning cost nothing. Two fixes followed: tilings that hold the normalised row in
registers, so a program reads it once for several row blocks, offered to the autotuner beside the
others; and one small kernel of one program that sums and normalises the row once, before a plain
GEMV. One call on two H200s timed both against the code before them (`sum-norm-kernel/`):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
fixes = switches / "sum-norm-kernel"
for arm, label in (("baseline-1", "summing GEMVs"), ("1", "summing GEMVs, again"),
                   ("held-1", "the row held in registers"), ("sumnorm-1", "summing norm kernel, plain GEMV")):
    run = json.loads((fixes / f"latency-32b-tp2-{arm}.json").read_text())
    print(f"Qwen3-32B TP=2 {label:<32} {run['mili']['tpot_ms']:6.3f} ms/token, "
          f"{run['mili']['times_floor']:.2f}x the group's floor")
for tree, label in (("held", "the row held"), ("sumnorm", "summing norm kernel")):
    kernels = json.loads((fixes / f"kernels-32b-tp2-{tree}-pdl0.json").read_text())
    gemvs = sum(k["us_per_step"] for k in kernels["kernels"] if k["name"] == "_gemv_kernel")
    norms = sum(k["us_per_step"] for k in kernels["kernels"] if k["name"] == "_site_add_rms_norm_kernel")
    gate_up = next(c for c in kernels["gemv_configs"] if c.startswith("(12800, 5120"))
    print(f"{label:<20}: GEMVs {gemvs:5.0f} µs a step, summing norms {norms:4.0f}; gate_up's tiling: "
          f"{gate_up.split('-> ')[1].split(', num_ctas')[0]}")
print("Qwen3-8B TP=2, another call, in the order run:")
for arm in ("baseline-1", "1", "baseline-2", "2"):
    run = json.loads((fixes / f"latency-8b-tp2-{arm}.json").read_text())
    label = "summing norm kernel" if run["environment"]["git_commit"].endswith("+sumnorm") else "summing GEMVs"
    print(f"  {label:<20} {run['mili']['tpot_ms']:.3f} ms/token")
""")

md(r"""
The autotuner never picked the held row's tilings, and the step did not move. The summing norm
kernel took the 32B step most of the way back: the GEMVs now read an ordinary row, the autotuner
gives gate_up one row a program at two warps, and the 128 small kernels it adds (two a layer)
cost far less than the GEMVs gained. At 8B it changed nothing measurable (the two arms of the same code differ by as
much). The engine now runs it, and the summing GEMVs are gone: one more kernel per norm, where
the first version had removed one, and a faster step.
""")

think(r"""
Count what the programs of the qkv GEMV read besides the weights, at 32B shapes on two GPUs: the
shard has 5120 rows, the row is 5120 bfloat16 elements from each of the two GPUs, and every
program reads it twice. How much is that with the autotuner's 8 rows a program, and with 2? Why
does the cost follow the number of programs, and not the size of the weights?
""", r"""
With 8 rows a program there are 640 programs, each reading 2 × 5120 × 2 bytes twice: 41 KB
each, 26 MB in all, half of the 52 MB of qkv weights in this shard. With 2 rows a program, 2560
programs read 105 MB, twice the weights. The weights are read once whatever the tiling, so their
bytes do not change; the row is read once per program, so its bytes grow with the number of
programs, and they come from L2 with the polling loads' latency, before the program can start
streaming. The two fixes cut exactly that: one program reads the row once for many row blocks,
or one kernel reads it once for the whole GPU; the second is what the engine kept.
""")

md(r"""
**One trip instead of four.** The summing norm is one program on one SM. A GEMV of 2048
programs hides the latency of memory behind its other programs' loads; a kernel of one program
has nothing to hide it behind, so its time is its chain of dependent trips to memory, each a
full round trip, and it runs 73 times a step. As first written it read the parts of the row one
GPU after another (each polled until it had arrived, with a reduction over the whole program to
ask "has all of it arrived?"), then the residual, then the norm's weight: four trips in a row.
Now it asks for the weight, which no kernel writes, before its dependent wait, and after the
wait for every GPU's part at once, as one block [GPUs, width], together with the residual; the
final norm sums the last down projection the same way, so the step has no all-reduce kernel
left. The attention kernel got the same treatment (everything but the new token's q, k and v
before its wait). One call timed the three trees alternating on two H200s, a second call the
attention change at TP=1 and TP=2 on another pair (`benchmarks/tp-summing-norm-ab-h200/`):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
trip = bench / "tp-summing-norm-ab-h200"
def tpot(path):
    return json.loads((trip / path).read_text())["mili"]["tpot_ms"]
tp1 = tpot("latency-8b-tp1.json")
mean = {}  # ms/token of each tree at TP=2, over its two rounds
for arm, label in (("baseline", "parts one GPU after another"), ("norm", "every part at once"),
                   ("both", "and the pushes' addresses early")):
    runs = [tpot(f"latency-8b-tp2-{arm}-{r}.json") for r in (1, 2)]
    print(f"Qwen3-8B TP=2, {label:<32} {runs[0]:.3f}, {runs[1]:.3f} ms/token: "
          f"{min(runs) / tp1:.3f}-{max(runs) / tp1:.3f} of TP=1's {tp1:.3f}")
    mean[arm] = sum(runs) / 2
saved_us = (mean["baseline"] - mean["both"]) * 1000
norms = 2 * 36 + 1  # two a layer and the final norm
per_gpu = json.loads((trip / "latency-8b-tp1.json").read_text())["copy_bytes_per_s"]
print(f"saved {saved_us:.0f} µs a step, {saved_us / norms:.2f} µs for each of its {norms} summing norms; "
      f"one GPU copies at {per_gpu / 1e12:.2f} TB/s, so 32 KB stream in {32e3 / per_gpu * 1e9:.0f} ns")
early = trip / "attention-inputs-early"
for tp in (1, 2):
    before, after = (json.loads((early / f"latency-8b-tp{tp}{arm}-1.json").read_text())["mili"]["tpot_ms"]
                     for arm in ("-before", ""))
    print(f"attention inputs before the wait, TP={tp}: {before:.3f} -> {after:.3f} ms/token")
""")

md(r"""
About 0.09 ms of a 2.58 ms step, most of it from the norm; TP=1, which has no summing norm, runs
none of the changed code. With the attention change too, TP=2 took 0.60-0.61 of TP=1's time on
three pairs of H200s (and in `benchmarks/tp-h200-b1ec3ec/`, this code's record on a host of four),
against an ideal of 0.50 and a target of 0.6.
""")

think(r"""
The summing norm reads two GPUs' parts of a 4096-element bfloat16 row, the residual and the
norm's weight: 32 KB. Compare the time those bytes take to stream (printed above) with the time
the change saved for each norm. What bounds a kernel of one program, and why would the same
reordering make no difference to a GEMV of thousands of programs?
""", r"""
The bytes take about ten nanoseconds; the change saved over a microsecond a norm, a hundred
times more. A lone program is bound by latency: each load whose value it needs before it can
issue the next costs a full round trip to memory (and here a reduction over the whole program
per poll), however few bytes it moves. A GEMV keeps thousands of loads in flight from hundreds
of programs, so one program's wait is another's transfer and what binds it is bandwidth; the
order of its few prologue loads is hidden behind the stream of weights. So a small kernel
should issue every independent load before it uses any, and the loads that need no dependent
wait (weights, addresses) before the wait.
""")

md(r"""
**Who empties, and who waits.** Now that one program reads a site, that program knows when it is
done with it: the summing norm empties its site in its own buffer right after reading it, and
the pushing kernels write nothing but their parts. Then the norm need not wait for the pushing
kernel at all (`gdc_wait`), and it lets the next kernel launch at once: the parts carry their
own arrival, a kernel pushes a part only after the reads it is made of, and everything else the
norm reads was written before the pushing kernel started. It is the first of the three ideas
that lost, come back in a kernel of one program: one poller, where the summing GEMVs had
hundreds reading whole rows beside a kernel that still streamed its weights. Three calls on two
H200s timed this against the norm that waits, with two more trees: a norm that reads everything
first and waits just before its stores, and one that does not wait while the pushing kernels
still empty the site before (`reader-empties/`; TP=2, ms/token, each round's run in order, the
trees alternating within a round):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
who = trip / "reader-empties"
arms = {"baseline": "the norm waits (b1ec3ec)", "": "the call's tree", "nowait": "no wait, pushes empty"}
for call, tree in (("late-wait", "waits just before its stores"), ("call-3", "empties its site, no wait")):
    tp1 = json.loads((who / call / "latency-8b-tp1.json").read_text())["mili"]["tpot_ms"]
    rounds = sorted(int(p.stem.rsplit("-", 1)[1]) for p in (who / call).glob("latency-8b-tp2-baseline-*.json"))
    print(f"{call}: the call's tree {tree}; TP=1 {tp1:.3f}")
    for arm, label in arms.items():
        runs = [json.loads((who / call / f"latency-8b-tp2-{arm + '-' if arm else ''}{r}.json").read_text())
                ["mili"]["tpot_ms"] for r in rounds]
        mean = sum(runs) / len(runs)
        print(f"  {label:<26} {', '.join(f'{t:.3f}' for t in runs)}: mean {mean:.3f}, {mean / tp1:.3f} of TP=1")
shares = []  # every run of the engine's tree, as a share of its own call's TP=1
for call in ("call-2", "call-3"):
    tp1 = json.loads((who / call / "latency-8b-tp1.json").read_text())["mili"]["tpot_ms"]
    shares += [json.loads(p.read_text())["mili"]["tpot_ms"] / tp1 for p in (who / call).glob("latency-8b-tp2-[0-9].json")]
print(f"the engine's tree, all {len(shares)} runs of two calls: {min(shares):.3f}-{max(shares):.3f} of TP=1")
""")

md(r"""
The norm that empties its site and does not wait became the engine's: in the four-round call it was
faster than the waiting norm in every round, and on average it is within the target of 0.6 of
TP=1's time there, if only just. Over every run of two calls it straddles the target: each run
is a new pair of processes, and runs of one tree differ by about as much as the trees do, which
is why the trees alternate and the rounds repeat. Waiting late gained nothing over waiting
early. The fastest tree is not the engine's: with no wait on the pushing kernels anywhere,
nothing orders their last stores, which empty the site before, ahead of what follows.
""")

think(r"""
The late-wait tree asked for everything it reads before its wait and waited only before its
first store, yet it was no faster than the norm that waits first. What does `gdc_wait` wait for
that the parts' arrival does not tell? And why do two sites suffice now that the norm empties its
own, where the first version needed three?
""", r"""
The wait returns when the whole pushing kernel has finished: every program exited and its
writes flushed, and the grid's completion seen by the GPU, which comes after its last part has
landed. The parts' arrival tells the norm only that its data is there. So a norm that waits
anywhere before it ends pays for the kernel's completion on every sum, wherever the wait stands;
one that does not wait pays only for the data. Sites: a peer writes site s again only after it
has received this rank's part of a later site, and this rank pushes that part from a kernel that
starts after its norm of site s has finished, emptying included. With one site, the peer's next
push would need only the part of the same sum, which this rank sends before its norm empties the
site: the push could land first and be emptied away.
""")

md(r"""
**One more store off the path.** The whole step waits for the summing norm to *finish*, and a
kernel has finished only when its writes have landed, the emptying stores included. The GEMV after
the norm waits for it anyway, and it has hundreds of programs: each empties a chunk of the site
after its wait (`linear(x, weight, empties=site)`), and the norm stores only its two output rows.
(The final norm, which no GEMV of the step follows, still empties its own site.) The order still
holds: a peer rewrites a site only after it has received a later part of ours, which we push from
a kernel that starts after the emptying GEMV has finished. One call on two H200s alternated the
two trees; then, on a host of four, three rounds of TP=1 and TP=2 (ms/token):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
gemv_empties = repo_root() / "benchmarks" / "tp-gemv-empties-ab-h200"


def ms_per_token(path):
    return json.loads(path.read_text())["mili"]["tpot_ms"]


tp1 = ms_per_token(gemv_empties / "batch-1" / "latency-8b-tp1.json")
for arm, label in (("baseline-", "the norm empties (9c4f34b)"), ("", "the GEMV empties (82f06b9)")):
    runs = [ms_per_token(gemv_empties / "batch-1" / f"latency-8b-tp2-{arm}{r}.json") for r in (1, 2, 3)]
    mean = sum(runs) / len(runs)
    print(f"{label:<27} {', '.join(f'{t:.3f}' for t in runs)}: mean {mean:.3f}, {mean / tp1:.3f} of TP=1 ({tp1:.3f})")
for r in (1, 2, 3):
    one, two = (ms_per_token(gemv_empties / "rounds-x4" / f"latency-8b-tp{tp}-{r}.json") for tp in (1, 2))
    print(f"four-GPU host, round {r}: TP=1 {one:.3f}, TP=2 {two:.3f}, {two / one:.3f} of TP=1")
""")

md(r"""
Faster in every round, by more than not waiting had gained: the stores were a real part of what
the step waited for. But runs of this one tree, each a new pair of processes, fall in two groups,
about 2.38 and 2.42-2.47 ms, so one run either side of the target says little. Two more runs
printed what the GEMV's autotuner picked at warm-up, on each rank, for each of the step's four
GEMVs, keyed as the autotuner keys them (N outputs × K inputs, and what the GEMV writes):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
import re

pick = re.compile(r"with key as \((\d+), (\d+), '\w+', '(\w+)', (\w+),.*?\n.*?\nbest config selected: "
                  r"BLOCK_N: (\d+), BLOCK_K: (\d+), num_warps: (\d+), num_ctas: \d+, num_stages: (\d+)")


def picks_by_shape(log):  # each GEMV shape's picks in a run's log, one a rank, in the order printed
    picks = {}
    for n, k, output, empties, *config in pick.findall(log.read_text()):
        kind = output + (", empties" if empties == "True" else "")
        picks.setdefault(f"{n} x {k} {kind}", []).append("rows {} K-tile {} warps {} stages {}".format(*config))
    return picks


for run in (2, 3):
    log = gemv_empties / "autotune-choices" / f"run-{run}.log"
    print(f"run {run}: {ms_per_token(log.with_name(f'lat-{run}.json')):.3f} ms/token")
    for shape, per_rank in picks_by_shape(log).items():
        print(f"  {shape:<34} {' | '.join(per_rank)}")
""")

md(r"""
In the faster run both ranks made the same picks; in the slower one they disagreed on three of
the four shapes, and both picked another tiling for the qkv. Two runs prove nothing, and an
earlier attempt to give every rank rank 0's picks gained nothing
(`benchmarks/tp-shared-choices-ab-h200/`), so which tiling is picked may matter more than
whether the ranks agree. What the picks cost has to be measured with the picks held fixed
(`benchmarks/probes/gemv_pins.py` pins the configurations in every rank's process).
""")

think(r"""
Each rank's autotuner picked, for each GEMV, the configuration that was fastest on its own GPU
at warm-up. Why can those picks still make the step slower than another set would, and how would
you find out whether the two groups of runs come from them?
""", r"""
The autotuner times each GEMV alone, many times over, with the GPU doing nothing else; in the
step the GEMV streams its weights right after other kernels, overlapping their tails under a
dependent launch, and configurations within a few percent of each other are ordered by the
timer's noise. And a sum is done only when the slower rank's part has landed, so a pick that is
slower in the step on either rank costs both. To find out: pin each GEMV's configuration, one
shape at a time, and time the step in alternating rounds against the autotuned tree; if the
groups follow the pins, ship fixed configurations per shape and card (as vLLM and SGLang ship
tuned kernel configurations) instead of tuning at start-up.
""")

md(r"""
**The picks, held fixed.** One call on two H200s, three rounds, each run a new pair of processes:
the tree autotuned (twice a round), every rank pinned to the fast run's picks, and every rank
pinned to the slow run's (rank 0's, where the ranks differed):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
gemv_pins = repo_root() / "benchmarks" / "tp-gemv-pins-ab-h200"
tp1 = ms_per_token(gemv_pins / "latency-8b-tp1.json")
for arm, label in (("baseline-", "autotuned"), ("", "autotuned again"), ("pinned2-", "the fast run's picks"),
                   ("pinned3-", "the slow run's picks")):
    runs = [ms_per_token(gemv_pins / f"latency-8b-tp2-{arm}{r}.json") for r in (1, 2, 3)]
    mean = sum(runs) / len(runs)
    print(f"{label:<21} {', '.join(f'{t:.3f}' for t in runs)}: mean {mean:.3f}, {mean / tp1:.3f} of TP=1 ({tp1:.3f})")
""")

md(r"""
Pinned, every run takes its picks' time to within 5 µs, and the two sets of picks are the
two groups. So the engine now fixes those four configurations for the H200
(`GEMV_PINS` in `mili/kernels/linear.py`, through the autotuner's own pruning hook; shapes and
cards without a pin are autotuned as before), and the record on four H200s above, two rounds of
TP=1 and TP=2, is at that code. With four ranks there are four picks a shape to disagree. A later
call on four H200s ran TP=4 autotuned four times, each run printing its picks, then six times
with every rank pinned to one run's:
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
tp4_pins = repo_root() / "benchmarks" / "tp-gemv-pins-tp4-h200"
tp1 = ms_per_token(tp4_pins / "latency-8b-tp1.json")
for arm, count in (("autotuned", 4), ("fast-picks", 3), ("slow-picks", 3)):
    runs = [ms_per_token(tp4_pins / f"latency-8b-tp4-{arm}-{r}.json") for r in range(1, count + 1)]
    print(f"TP=4 {arm:<10} {', '.join(f'{t:.3f}' for t in runs)}  ({min(runs) / tp1:.3f}-{max(runs) / tp1:.3f} of TP=1)")
for shape, per_rank in picks_by_shape(tp4_pins / "latency-8b-tp4-autotuned-3.log").items():
    print(f"  slowest run, {shape:<34} {' | '.join(per_rank)}")
""")

md(r"""
The two pinned arms turned out to hold the same picks (the first printed for each shape, whichever
rank printed it, agreed between the fastest and the slowest run), so they are six runs of one
set: within 0.004 ms of each other, at the best autotuned run's time, where the autotuned runs
spread over 0.08 ms. In the slowest, one rank alone took another tiling for the gate_up, and
the ranks disagreed on the other three shapes, as they did in the faster runs. Those pinned picks
are now the H200's for TP=4 too.
""")

md(r"""
**Where the step's time goes now.** The same kernel trace as at the start of this section (rank 0,
`MILI_PDL=0`, each kernel's time its own), at the code of these records, on two H200s.
""")

think(r"""
No all-reduce kernel is left in the step. Before you run the next cell: which kernels would you
expect to make up the gap between TP=2 and half of TP=1 now, and would any of them shrink if the
interconnect were twice as fast?
""", r"""
The summing norms: 73 one-program kernels a step that TP=1 does not run at all (its norms are
inside the GEMVs), each a short chain of memory round trips to wait for and add the parts. The
GEMVs: each shard is half the bytes in as many launches, with the same ramp-up and tail, so they
stream at a lower rate. And attention: with half the heads each rank's batch-1 attention kernel
does half the work, but it is bound by its latency, not its bytes, so it takes about as long.
Only the summing norms' wait for the parts depends on the interconnect, and a part is one 8 KB
row, whose time is latency, not bandwidth: a faster link would barely move any of the three.
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
now = {"GEMVs (the layers' weights)": ("_gemv_kernel",), "LM head": ("nvjet",),
       "summing norms (the sums of the parts)": ("_site_add_rms_norm_kernel", "_embedding_to_sum_kernel"),
       "attention (new token, merging the splits)": ("_new_token_attention_kernel", "_merge_splits_kernel"),
       "final norm (at TP=2 a summing norm)": ("_rms_norm_kernel",)}
one, split_one = kernel_split("tp-step-kernels-h200/decode-kernels-h200-qwen3-8b-tp1-pdl-off.json", now)
two, split_two = kernel_split("tp-step-kernels-h200/decode-kernels-h200-qwen3-8b-tp2-pdl-off.json", now)
print(f"{one['device']}, {one['model']}, commit {one['environment']['git_commit']}, rank 0, us per step"
      f"   TP=1   TP=2   TP=2 - TP=1/2")
for group in split_one:
    print(f"  {group:<52} {split_one[group]:6.0f} {split_two[group]:6.0f} {split_two[group] - split_one[group] / 2:+9.0f}")
total_one, total_two = sum(split_one.values()), sum(split_two.values())
print(f"  {'all kernels':<52} {total_one:6.0f} {total_two:6.0f} {total_two - total_one / 2:+9.0f}")
""")

md(r"""
Three parts of similar size, as predicted: the summing norms, the GEMVs' lower rate, and
attention. The LM head, one large GEMM, halves as it should.
""")

md(r"""
**Scale up or scale out?** Tensor parallelism is for a model that does not fit one GPU, or for
a lower time per token: each GPU reads only its share of the weights per step, but two
all-reduces per layer wait on the interconnect, so it stays within one host's NVLink. For more
traffic, add replicas instead, which share nothing: `deployment/kubernetes/hpa.yaml` adds pods
when requests queue up (`mili:num_requests_waiting`), as `deployment/README.md` explains.
""")


def build() -> None:
    write("06_deployment.ipynb")


if __name__ == "__main__":
    build()
