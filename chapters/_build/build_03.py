"""Write chapters/03_python_integration.ipynb (without outputs).

    python chapters/_build/build_03.py
    jupyter nbconvert --to notebook --execute --inplace chapters/03_python_integration.ipynb
"""


from nbbuild import code, md, write

md(r"""
# Chapter 03 — Python integration: the engine

Chapter 01 generated text for one prompt at a time: a prefill, then one decode step per token.
A decode step of one sequence reads every weight of the model to produce a single token, so the
GPU spends its time waiting for memory. Serving many users means running *many* sequences in one
step: the weights are read once and used by all of them. That is what an inference engine does,
and this chapter builds one, in the shape of vLLM and nano-vllm:

1. The life of a request
2. Exercise 3.1 — the sampler: from logits to a token, for a whole batch at once
3. Exercise 3.2 — the incremental detokenizer: streaming text, stop strings
4. Exercise 3.3 — the scheduler: continuous batching, chunked prefill, preemption
5. Exercise 3.4 — the engine step: building the flat batch
6. The offline API: `LLM.generate`, `LLM.chat`, `llm.stats()`
7. Measure: throughput against batch size
8. What you built

Files: `mili/engine/` (`sampler.py`, `detokenizer.py`, `scheduler.py`, `model_runner.py`, plus the
plumbing `sequence.py`, `engine.py`, `llm.py`). The KV-cache bookkeeping (block manager, prefix
cache) is chapter 05's; the engine only calls it.
""")

code(r"""
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import mili
from mili import LLM, SamplingParams
from mili.exercise import repo_root

torch.manual_seed(0)
if not torch.cuda.is_available():
    # many small ops: one thread each avoids OpenMP spin-waits when the CPU's cores are busy
    # (measured on the 2-core course machine: 78 s with 2 threads vs 1.3 s with 1 for the same run)
    torch.set_num_threads(1)
TINY = repo_root() / "data" / "mili-tiny-qwen3"


def tiny_model_folder() -> str:
    # the trained tiny model when it is there; else the same shapes with random weights and its tokenizer
    if (TINY / "config.json").exists():
        return str(TINY)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = Path(tempfile.mkdtemp(prefix="mili-tiny-random-"))
    config = Qwen3Config(vocab_size=1408, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=1366)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / name, folder / name)
    return str(folder)


MODEL = tiny_model_folder()
print(f"mili {mili.__version__} · MILI_IMPL={os.environ.get('MILI_IMPL', 'auto')} · model: "
      f"{'trained tiny Qwen3' if MODEL == str(TINY) else 'tiny Qwen3 shapes, random weights'}")
""")

# ================================================================ 1
md(r"""
## 1. The life of a request

```
add_request ──> WAITING ──admit (blocks, prefix cache)──> RUNNING ──EOS / stop / max_tokens──> FINISHED
                   ^                                        │  prefill chunk(s), then one decode per step
                   └───────── preempted (blocks freed, generated tokens kept) ─┘
```

Each call to `engine.step()`:

1. **schedule** (3.3): which sequences run, and how many tokens each (a prompt chunk or one decode token),
   under a token budget and a cap on running sequences; admit waiting requests; preempt if KV blocks run out;
2. **build the batch** (3.4): all scheduled tokens back to back, with positions, the slots where their K/V
   go, and the block tables attention reads (`AttentionMetadata`, DESIGN.md §3);
3. **run the model** once for everybody, and compute logits only for the last token of each sequence;
4. **sample** (3.1) one token per sequence, each with its own `SamplingParams`;
5. **append and detokenize** (3.2, 3.4): stream the new text; finish on EOS, stop strings, `max_tokens`.

Let us watch a handful of requests go through an engine with a small token budget.
""")

code(r"""
llm = LLM(MODEL, dtype="float32", device="cpu", block_size=16, num_kv_blocks=256, max_num_batched_tokens=32,
          max_num_seqs=8)
engine = llm.engine
engine.trace = []  # record what the scheduler does, step by step
tok = llm.get_tokenizer()
for i, text in enumerate(["What is 12 + 30?", "Name three colours.", "Count from one to five, slowly please, one by one."]):
    engine.add_request(f"req-{i}", text, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
while engine.has_unfinished_requests():
    outputs = engine.step()
    step_log = [f"{r}#{i}:{kind}({n})" for s, r, i, kind, n in engine.trace if s == engine.num_steps]
    print(f"step {engine.num_steps:2d}: " + ", ".join(step_log))
for out in outputs:
    print(out.request_id, out.outputs[0].finish_reason, repr(out.outputs[0].text))
""")

md(r"""
The token budget is 32: the third prompt does not fit next to the other two in step 1, so it is
*chunked*: part of it runs in step 1, the rest in step 2, while the first two already decode. From
then on every step is a decode step for all three.
""")

# ================================================================ 2
md(r"""
## 2. Exercise 3.1 — the sampler

The model gives one row of logits per sequence, `[B, V]` float32. Each request has its own
`SamplingParams`, packed into `[B]` tensors by `SamplingTensors`. The sampler, on the device:

1. **penalties** on the raw logits (vLLM's / OpenAI's definitions): a token seen in the prompt or the
   output has its logit divided by `repetition_penalty` when positive, multiplied when negative; then
   `frequency_penalty × count` and `presence_penalty × (count > 0)` are subtracted (output tokens only);
2. **greedy** rows (`temperature == 0`) take the argmax;
3. the others divide by the **temperature**, then drop tokens: **top-k** keeps the k most likely,
   **top-p** the smallest set whose probability reaches p, **min-p** those at least `min_p ×` the most
   likely one's probability;
4. **draw** from the softmax. The *exponential race* draws without a cumulative sum: with
   $E_i \sim \mathrm{Exp}(1)$, $\arg\max_i p_i / E_i$ is token $i$ with probability $p_i$. A request with a
   `seed` draws its $E$ from its own `torch.Generator`, so its tokens do not depend on its batch mates.

Here are the filters at work on one row of 24 logits:
""")

code(r"""
from mili.engine.sampler import apply_top_k_top_p_min_p

V = 24
logits = torch.randn(V, generator=torch.Generator().manual_seed(3)) * 1.5
order = logits.argsort(descending=True)


def probs_after(temperature, top_k=V, top_p=1.0, min_p=0.0):
    scaled = (logits / temperature).unsqueeze(0)
    kept = apply_top_k_top_p_min_p(scaled, torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p]))
    return kept.softmax(-1)[0]


stages = [("softmax, T = 1", probs_after(1.0)), ("T = 0.7", probs_after(0.7)),
          ("T = 0.7, top-k = 8", probs_after(0.7, top_k=8)), ("T = 0.7, top-p = 0.8", probs_after(0.7, top_p=0.8)),
          ("T = 0.7, min-p = 0.1", probs_after(0.7, min_p=0.1))]
fig, axes = plt.subplots(1, len(stages), figsize=(16, 2.8), sharey=True)
for ax, (title, p) in zip(axes, stages):
    p = p[order]
    ax.bar(range(V), p, color=["C0" if x > 0 else "lightgray" for x in p])
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("token (most likely first)")
    ax.text(0.95, 0.9, f"{int((p > 0).sum())} kept", transform=ax.transAxes, ha="right")
axes[0].set_ylabel("probability")
fig.suptitle("One row of logits through the sampler's filters (gray: dropped, probability 0)", y=1.04)
plt.show()
""")

md(r"""
**Your turn.** In `mili/engine/sampler.py`, implement `apply_penalties`, `apply_top_k_top_p_min_p` and
`sample` (their docstrings give the full contract). Hints: sort each row once (`logits.sort(descending=True)`)
and do every filter on the sorted row as a mask, then scatter back; top-p keeps a token while the mass
ranked *above* it is below `top_p`. The grader checks the penalties and filters against their definitions
written out in float64, the empirical distribution of 40,000 draws against the filtered softmax, and that
a seeded row gives the same tokens alone and in a batch of six.

*Question:* why must the generator of a seeded request draw exactly V numbers per step, whatever the
other rows do?
""")
code(r"""mili.grade("3.1");""")

# ================================================================ 3
md(r"""
## 3. Exercise 3.2 — the incremental detokenizer

Qwen's tokenizer works on bytes: an emoji is 4 UTF-8 bytes and may be split over several tokens.
Decoding tokens one at a time would show broken characters (`�`). The incremental detokenizer decodes
each new token *together with the few before it* and releases text only once it no longer ends in
U+FFFD. It also watches for stop strings, which must never reach the client: it holds back the last
`len(longest stop) − 1` characters until they cannot begin one.
""")

code(r"""
from mili.engine.detokenizer import IncrementalDetokenizer

text = "Café 🙂 — done. STOP and more"
ids = tok.encode(text)
detok = IncrementalDetokenizer(tok, tok.encode("Say:"), stop=["STOP"])
print(f"{'token':>6}  {'bytes (byte-level BPE piece)':<30} released")
for i in ids:
    delta = detok.add_token(i)
    print(f"{i:>6}  {tok.convert_ids_to_tokens(i)!r:<30} {delta!r}")
    if detok.finished:
        break
print("text:", repr(detok.text), "· stop_reason:", repr(detok.stop_reason))
""")

md(r"""
The released text trails the tokens: `é` (two bytes, two tokens) and `🙂` (four bytes) come out only once
complete, and with the stop string `"STOP"` the last three characters are always held back, in case they
begin it. When `STOP` completes, everything before it is released and the rest is dropped.

**Your turn.** Implement `IncrementalDetokenizer` in `mili/engine/detokenizer.py`. The grader streams text
with emoji, CJK and accents through a byte-level tokenizer written in the test (each id a byte string),
split at random points, and checks that no delta holds U+FFFD, that the deltas join to the full text, that
stop strings (and the text after them) never appear, and that EOS / stop token ids finish generation.

*Question:* a stop string `"\n\n"` and a model that emits `"\n"` then `"\n"`: which call to `add_token`
sets `finished`, and what did the first call release?
""")
code(r"""mili.grade("3.2");""")

# ================================================================ 4
md(r"""
## 4. Exercise 3.3 — the scheduler

Continuous batching (Orca, vLLM): the batch is rebuilt every step. Requests join as soon as there is
room and leave the moment they finish, instead of waiting for the slowest member of a fixed batch.
Each step:

1. **running sequences first**, oldest first: a decode takes 1 token of the budget, an unfinished prompt
   the next chunk. A sequence that needs a new KV block when none is free triggers **preemption by
   recompute**: the most recently admitted sequence gives back its blocks (its full blocks go to the
   prefix cache), keeps the tokens it generated, and waits at the front of the queue; when it resumes, its
   prompt + generated tokens are prefilled again, and greedy decoding continues exactly as before;
2. **then waiting requests, first come first served**, while budget, `max_num_seqs` and blocks allow.
   `block_manager.allocate` reuses the longest cached prefix, so a cached system prompt is not recomputed.

The timeline below shows 10 requests on an engine with a token budget of 48 and a KV pool of only
24 blocks of 16 tokens, so that both chunking and preemption happen.
""")

code(r"""
import random
from matplotlib.patches import Patch

small = LLM(MODEL, dtype="float32", device="cpu", block_size=16, num_kv_blocks=24, max_num_batched_tokens=48,
            max_num_seqs=6, max_model_len=384, enable_prefix_caching=False)
small.engine.trace = []
rng = random.Random(0)
work = [([rng.randrange(1000) for _ in range(rng.randint(8, 90))], rng.randint(10, 40)) for _ in range(10)]
small.generate([{"prompt_token_ids": p} for p, _ in work],
               [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for _, n in work], use_tqdm=False)
trace = small.engine.trace
print(small.stats()["preemptions"], "preemptions in", small.stats()["steps"], "steps")

colors = {"prefill": "C0", "decode": "C2", "preempted": "C3"}
requests = sorted({t[1] for t in trace}, key=lambda r: int(r.split("-")[1]))
fig, ax = plt.subplots(figsize=(12, 3.6))
for row, rid in enumerate(requests):
    events = [t for t in trace if t[1] == rid]
    last = max(t[0] for t in events)
    ax.barh(row, last, left=0.5, color="whitesmoke", edgecolor="none")  # waiting, from arrival to the end
    for step, _, _, kind, n in events:
        ax.barh(row, 1, left=step - 0.5, color=colors[kind], edgecolor="white", linewidth=0.3)
ax.set_yticks(range(len(requests)), [f"request {r.split('-')[1]}" for r in requests])
ax.invert_yaxis()
ax.set_xlabel("engine step")
ax.set_title("Scheduler timeline: budget 48 tokens/step, 24 KV blocks of 16 tokens, max 6 running")
ax.legend(handles=[Patch(color="whitesmoke", label="waiting"), Patch(color="C0", label="prefill (chunk)"),
                   Patch(color="C2", label="decode"), Patch(color="C3", label="preempted")],
          loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
plt.show()
""")

md(r"""
**Your turn.** Implement `Scheduler.schedule` in `mili/engine/scheduler.py`. The class already has the
plumbing: `admit` (allocates blocks, sets `num_computed_tokens` to the cached prefix), `grow` (reserves
slots for a running sequence), `preempt` and `finish`. The grader runs scripted scenarios against a
brute-force block manager: requests joining and leaving, the token budget cutting prompts into chunks,
`max_num_seqs`, no overtaking in the queue, prefix-cache hits, a preemption whose victim keeps its
tokens, and 30 random workloads where every request must finish and no block may leak.

*Question:* why does the scheduler stop admitting new requests in a step where it had to preempt?
""")
code(r"""mili.grade("3.3");""")

# ================================================================ 5
md(r"""
## 5. Exercise 3.4 — the engine step

`build_batch` turns the scheduler's list into the flat batch of DESIGN.md §3: each sequence's new tokens
back to back, their positions, the cache slots their K/V are written to (`block_manager.slot_mapping`),
the block tables attention reads, and which rows' logits are sampled: the last token of each sequence
whose tokens are now all computed (a prompt chunk that leaves tokens for later samples nothing).
`append_tokens` adds the sampled tokens, feeds the detokenizer, and decides who finished and why.
Here is one mixed step (a chunk of a long prompt next to decodes):
""")

code(r"""
from mili.engine.model_runner import build_batch

mixed = LLM(MODEL, dtype="float32", device="cpu", block_size=4, num_kv_blocks=64, max_num_batched_tokens=8,
            max_num_seqs=4)
e = mixed.engine
e.add_request("short", {"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=4, ignore_eos=True))
e.add_request("long", {"prompt_token_ids": list(range(20, 32))}, SamplingParams(max_tokens=4, ignore_eos=True))
e.step()  # step 1: short's whole prompt (3 tokens) and the first 5 of long's 12
plan = e.scheduler.schedule()  # step 2: short decodes, long's next 7 tokens
batch = build_batch(plan.scheduled, e.block_manager)
md_ = batch.attn_metadata
print("scheduled     ", [(s.seq.request.request_id, s.num_tokens) for s in plan.scheduled])
print("input_ids     ", batch.input_ids.tolist())
print("positions     ", batch.positions.tolist())
print("slot_mapping  ", md_.slot_mapping.tolist())
print("cu_seqlens_q  ", md_.cu_seqlens_q.tolist(), " cu_seqlens_k", md_.cu_seqlens_k.tolist())
print("block_tables  ", md_.block_tables.tolist())
print("sampled rows  ", batch.logits_indices.tolist(), "->", [s.request.request_id for s in batch.sampled_seqs])
""")

md(r"""
**Your turn.** Implement `build_batch` and `append_tokens` in `mili/engine/model_runner.py`. The grader
checks a mixed step written out by hand (a fresh prompt, a later chunk, a decode), a pure decode step,
a fresh-prefill step without block tables, and the three ways a sequence finishes.
""")
code(r"""mili.grade("3.4");""")

# ================================================================ 6
md(r"""
## 6. The offline API

The engine assembled, with vLLM's API so that habits carry over: `LLM(model, ...)`,
`llm.generate(prompts, sampling_params)` (one `SamplingParams` for all, or one per prompt; a prompt is
a string or `{"prompt_token_ids": [...]}`), `llm.chat(messages)` through the model's chat template, and
`llm.stats()`. Each result is a `RequestOutput` with `outputs[i].text`, `.token_ids`, `.finish_reason`.
""")

code(r"""
outs = llm.generate(["What is 7 + 5?", {"prompt_token_ids": tok.encode("Spell cat backwards:")}],
                    [SamplingParams(temperature=0, max_tokens=12),
                     SamplingParams(n=3, temperature=0.8, seed=0, max_tokens=8)], use_tqdm=False)
for out in outs:
    for c in out.outputs:
        print(f"{out.request_id} #{c.index} [{c.finish_reason}] {c.text!r}")
chat = llm.chat([{"role": "user", "content": "What is 2 + 3?"}], SamplingParams(temperature=0, max_tokens=16),
                use_tqdm=False)[0]
print("chat:", repr(chat.outputs[0].text))
print({k: v for k, v in llm.stats().items() if k in ("steps", "preemptions", "prefix_cache_hit_rate", "kv_cache_usage")})
""")

md(r"""
A shared system prompt shows the prefix cache at work: once one request with it has finished, every
later request finds its full blocks in the cache and computes only its own tokens.
""")

code(r"""
system = "You are a careful assistant. Answer with one number. " * 3
llm.generate([system + "1 + 1 ="], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
later = llm.generate([system + f"{i} + {i} =" for i in range(2, 6)], SamplingParams(temperature=0, max_tokens=4),
                     use_tqdm=False)
print("system prompt tokens:", len(tok.encode(system)),
      "· cached tokens per later request:", [o.num_cached_tokens for o in later])
""")

# ================================================================ 7
md(r"""
## 7. Measure: throughput against batch size

Output tokens per second on this machine's CPU (one thread) for 32 requests (prompts of 16–48 tokens, 16–48 new tokens),
with the engine allowed to run at most `max_num_seqs` sequences at once. With one sequence the engine is
chapter 01's loop; with more, one forward pass serves them all.
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
import time

rng = random.Random(1)
work = [([rng.randrange(1000) for _ in range(rng.randint(16, 48))], rng.randint(16, 48)) for _ in range(32)]
prompts = [{"prompt_token_ids": p} for p, _ in work]
params = [SamplingParams(temperature=0.6, max_tokens=n, ignore_eos=True) for _, n in work]
sizes, rates = [1, 2, 4, 8, 16, 32], []
for size in sizes:
    bench = LLM(MODEL, dtype="float32", device="cpu", num_kv_blocks=256, max_num_seqs=size,
                max_num_batched_tokens=max(size, 512), enable_prefix_caching=False)
    start = time.perf_counter()
    outs = bench.generate(prompts, params, use_tqdm=False)
    rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start))
    print(f"max_num_seqs={size:3d}: {rates[-1]:7.1f} output tokens/s")
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.plot(sizes, rates, "o-", label="mili engine (this CPU)")
ax.plot(sizes, [rates[0] * s for s in sizes], "--", color="gray", label="perfect scaling from batch 1")
ax.set_xscale("log", base=2)
ax.set_ylim(0, max(rates) * 1.3)
ax.set_xlabel("max_num_seqs (sequences per step)")
ax.set_ylabel("output tokens / s")
ax.set_title("Throughput against batch size, tiny Qwen3, float32, CPU (1 thread)")
ax.legend()
plt.show()
""")

md(r"""
The recorded `mili bench throughput --compare hf` results (DESIGN.md §9's workload, scaled down for the
CPU; Hugging Face `generate` on the same prompts in the same run):
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
import json

for path in sorted((repo_root() / "benchmarks").glob("throughput-*.json")):
    r = json.loads(path.read_text())
    line = f"{path.name}: {r['environment']['device']}, {r['workload']['num_seqs']} seqs, mili {r['mili']['tokens_per_s']:.0f} tok/s"
    if "hf" in r:
        line += f", HF generate {r['hf']['tokens_per_s']:.0f} tok/s, speed-up {r['speedup_vs_hf']:.2f}x"
    print(line)
""")

md(r"""
On a GPU the same engine is held back by something the CPU never shows: launching. A decode step of
Qwen3-0.6B is a few hundred small kernels, and Python plus the driver spend tens of microseconds
launching each one while the GPU, done in a few microseconds, waits. So on CUDA the engine records one
decode step per batch size as a **CUDA graph** (`mili/engine/cuda_graphs.py`, DESIGN.md §5) and replays
it with one call: the step's inputs are copied into fixed buffers, the batch is padded up to the next
recorded size (1, 2, 4, 8, then multiples of 16), and the padding rows write nothing. On an H200, the
§9 workload above ran at 2,678 output tokens/s with every kernel launched from Python
(`LLM(..., enforce_eager=True)`) and at 8,973 tokens/s replaying graphs, one after the other on the
same machine (`benchmarks/throughput-gpu-h200*.json`).

**Question.** Prefill steps are not recorded. Why would a graph per prefill shape be a poor trade,
and why does a long prefill lose little by being launched from Python?
""")

md(r"""
## 8. What you built

A sampler, a streaming detokenizer, a scheduler and the step that ties them to the model: an engine that
keeps many requests in flight, shares their weight reads and KV memory, and gives each one exactly the
tokens it would get alone. Its attention still loops or pads in PyTorch; chapter 04 replaces it with
FlashAttention and paged decode kernels, and chapter 05 opens up the block manager and prefix cache it calls.
""")

write("03_python_integration.ipynb")
