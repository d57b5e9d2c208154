"""Write chapters/02_kernels.ipynb (without outputs).

    python chapters/_build/build_02.py
    jupyter nbconvert --to notebook --execute --inplace chapters/02_kernels.ipynb
"""

from nbbuild import code, md, write

# ================================================================ title
md(r"""
# Chapter 02 — Triton kernels for RMSNorm, RoPE and SwiGLU

Chapter 01 built Qwen3 out of PyTorch operations. Between its matrix products sit small
elementwise and row-wise operations — RMSNorm, the rotary embedding, the SwiGLU activation — that
do almost no arithmetic but, written in PyTorch, read and write the activations many times over.
In this chapter you write each one as a single Triton kernel that touches memory once.

1. Why kernels: counting the bytes
2. Triton's programming model: programs, blocks, masks, pointers (a warm-up kernel)
3. Exercise 2.1 — RMSNorm, and RMSNorm fused with the residual add
4. Exercise 2.2 — RoPE, in place on q and k
5. Exercise 2.3 — SiLU-and-mul
6. Exercise 2.4 (stretch) — per-head q/k RMSNorm and RoPE in one pass
7. The whole model on the `triton` backend
8. Measure: the kernels on an H200, against the copy bandwidth
9. What you built

Everything here runs on a laptop: without a GPU, Triton's *interpreter* executes the kernels on
the CPU with NumPy (slowly, but with the same results), so you can write and grade every
exercise without CUDA. The speed measurements come from an H200 and are read from `benchmarks/`.
""")

code(r"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on the CPU

import json
import time

import matplotlib.pyplot as plt

import mili
from mili.bench import kernels as bench
from mili.config import preset
from mili.exercise import repo_root
from mili.kernels._triton import tl, triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
print(f"mili {mili.__version__} · MILI_IMPL={os.environ.get('MILI_IMPL', 'auto')} · triton {triton.__version__} · "
      f"kernels run on {DEVICE}" + (" (Triton interpreter)" if DEVICE == "cpu" else ""))
""")

# ================================================================ 1. bytes
md(r"""
## 1. Why kernels: counting the bytes

An H200 does about 790 bf16 TFLOP/s in its matrix units but moves only about 4.2 TB/s to and from
its memory. RMSNorm does ~4 flops per element and must read each element once and write it once:
at 2 bytes per bf16 element that is 4 bytes moved for 4 flops, so its time is set entirely by
memory traffic. The fastest possible RMSNorm is a copy.

PyTorch eager, however, runs chapter 01's `rms_norm` as a chain of kernels, and each one reads its
input from memory and writes its output back:
""")

code(r"""
# bytes per element moved by each eager kernel of rms_norm on bf16 input (x: 2 bytes, float32: 4)
eager_steps = {
    "x.float()":            2 + 4,
    "x32.pow(2)":           4 + 4,
    ".mean(-1)":            4,        # reads the squares; writes one number per row
    "x32 * rsqrt(...)":     4 + 4,
    ".to(bfloat16)":        4 + 2,
    "weight * normed":      2 + 2,
}
for step, nbytes in eager_steps.items():
    print(f"{step:<20} {nbytes:>3} bytes per element")
eager_bytes = sum(eager_steps.values())
print(f"{'eager total':<20} {eager_bytes:>3} bytes per element · one fused kernel: 4 · ratio {eager_bytes / 4:.0f}x")
""")

code(r"""
# the same ratio, measured on an H200 (benchmarks/kernels-h200.json), Qwen3-0.6B, 4096 tokens
report = json.loads((repo_root() / "benchmarks" / "kernels-h200.json").read_text())
row = next(r for r in report["results"] if (r["model"], r["kernel"], r["tokens"]) == ("0.6B", "rms_norm", 4096))
print(f"{report['environment']['gpu']}: eager {row['eager']['ms'] * 1e3:.1f} us, one Triton kernel "
      f"{row['triton']['ms'] * 1e3:.1f} us -> {row['eager']['ms'] / row['triton']['ms']:.1f}x")
""")

md(r"""
The measured ratio is close to the byte count's: the eager version is slow because it moves nine
times the bytes, not because its arithmetic is slow. The same holds for every kernel in this
chapter; here is what each must move at least, for one prefill step of 4096 tokens:
""")

code(r"""
def min_bytes(config, tokens, elem=2):
    h, i, d, heads = config.hidden_size, config.intermediate_size, config.head_dim, \
        config.num_attention_heads + config.num_key_value_heads
    return {
        "rms_norm": 2 * tokens * h * elem,                     # read x, write out
        "fused_add_rms_norm": 4 * tokens * h * elem,           # read x, residual; write out, residual_out
        "apply_rope": 2 * tokens * heads * d * elem,           # read and write q and k, in place
        "silu_and_mul": 3 * tokens * i * elem,                 # read gate and up, write the product
    }

for name in ("0.6B", "8B"):
    for kernel, nbytes in min_bytes(preset(name), 4096).items():
        print(f"Qwen3-{name:<4} {kernel:<19} {nbytes / 1e6:7.1f} MB -> {nbytes / 4.2e12 * 1e6:6.1f} us at 4.2 TB/s")
""")

# ================================================================ 2. triton
md(r"""
## 2. Triton's programming model

A Triton kernel is a Python function compiled for the GPU. You launch it on a *grid* of
**programs**; each program runs the whole function on one **block** of data, and Triton spreads
each block over the GPU's threads for you. The four ideas:

- **programs** — `tl.program_id(0)` says which program this is; the grid (a tuple) says how many.
- **blocks** — `tl.arange(0, BLOCK)` is a vector of BLOCK indices; every operation works on whole
  blocks. `BLOCK` must be a power of two and a `tl.constexpr` (known when the kernel compiles).
- **pointers** — a tensor argument arrives as a pointer to its first element; `ptr + offsets` is
  a block of pointers, `tl.load` reads through them and `tl.store` writes.
- **masks** — the last block usually runs past the end of the data; `mask=offsets < n` switches
  those lanes off (a masked load returns `other`, a masked store writes nothing).

The warm-up kernel scales a vector, and also records which program handled each element:
""")

code(r"""
@triton.jit
def scale_kernel(x_ptr, out_ptr, owner_ptr, n, alpha, BLOCK: tl.constexpr):
    pid = tl.program_id(0)                          # which program am I?
    offsets = pid * BLOCK + tl.arange(0, BLOCK)     # the BLOCK elements this program owns
    mask = offsets < n                              # the last block runs past the end
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, alpha * x, mask=mask)
    tl.store(owner_ptr + offsets, pid, mask=mask)   # for the demonstration only


def scale(x: torch.Tensor, alpha: float, block: int = 4):
    out, owner = torch.empty_like(x), torch.empty(x.shape, dtype=torch.int32, device=x.device)
    grid = (triton.cdiv(x.numel(), block),)          # enough programs to cover every element
    scale_kernel[grid](x, out, owner, x.numel(), alpha, BLOCK=block)
    return out, owner


x = torch.arange(10, dtype=torch.float32, device=DEVICE)
out, owner = scale(x, 2.0)
print("x      ", x.tolist())
print("2 * x  ", out.tolist())
print("program", owner.tolist(), "<- 3 programs of BLOCK=4; the last one masks off 2 lanes")
""")

md(r"""
Without the mask, program 2 would read and write elements 10 and 11, which belong to some other
tensor or to nothing: on a GPU that is silent corruption or an illegal-address crash. In the
interpreter you can debug exactly like Python: put a `print(offsets)` or `breakpoint()` inside the
kernel and rerun the cell (with `TRITON_INTERPRET=1` the kernel body is ordinary Python over NumPy).
Two differences to know: the interpreter is slow (below), and it rounds float32 to bfloat16
toward zero where a GPU rounds to nearest, so bf16 results can differ from PyTorch's by one bf16
step (about 0.4% relative) on a laptop and not on a GPU; the graders' bf16 tolerance allows it.

**Rows and strides.** RMSNorm and SiLU-and-mul work on rows of a matrix. A row-major `[T, H]`
tensor puts element `(t, h)` at `ptr + t * stride(0) + h`; a slice such as `x[:, 100:1100]` keeps
the parent's `stride(0)`, so a kernel must step between rows by the stride it is given, never by
H. Broadcasting a column of row indices against a row of column indices gives a 2-D block; a
reduction such as `tl.sum(block, axis=1)` then gives one value per row:
""")

code(r"""
@triton.jit
def row_sums_kernel(x_ptr, row_stride, out_ptr, num_rows, width, BLOCK_ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_W)
    mask = (rows[:, None] < num_rows) & (cols[None, :] < width)          # [BLOCK_ROWS, BLOCK_W]
    block = tl.load(x_ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + rows, tl.sum(block, axis=1), mask=rows < num_rows)


wide = torch.arange(30, dtype=torch.float32, device=DEVICE).reshape(3, 10)
x = wide[:, 2:7]                                   # [3, 5], rows 10 elements apart
out = torch.empty(3, device=DEVICE)
row_sums_kernel[(triton.cdiv(3, 2),)](x, x.stride(0), out, 3, 5, BLOCK_ROWS=2, BLOCK_W=8)
print(x.tolist(), "stride(0) =", x.stride(0))
print("kernel:", out.tolist(), "· torch:", x.sum(1).tolist())
""")

code(r"""
# NBVAL_IGNORE_OUTPUT
# The interpreter is for correctness, not speed: it runs each program one after another in NumPy.
x = torch.randn(1 << 16, device=DEVICE)
start = time.perf_counter()
scale(x, 2.0, block=1024)
kernel_s = time.perf_counter() - start
start = time.perf_counter()
x * 2.0
torch_s = time.perf_counter() - start
print(f"scale of 65536 elements on {DEVICE}: Triton {kernel_s * 1e3:.2f} ms, torch {torch_s * 1e3:.3f} ms")
""")

# ================================================================ 3. rmsnorm
md(r"""
## 3. Exercise 2.1 — RMSNorm, and RMSNorm fused with the residual add

`out = (x / sqrt(mean(x², -1) + eps)).to(x.dtype) * weight`, each row on its own. The row's mean
square needs the whole row, so a program must hold whole rows: give each program `BLOCK_ROWS`
rows of `BLOCK_H = next_power_of_2(H)` columns, mask the columns past H (hidden sizes such as 1000
are not powers of two), and load masked lanes as 0 so they add nothing to the sum of squares —
then divide by H, not by BLOCK_H. Work in float32 and round where chapter 01 rounds: the
normalised value to x's dtype, then the product with the weight.

Every Qwen3 layer also adds each branch's output to the residual stream right before a norm:

    residual_out = x + residual        # rounded to x's dtype: this is what the next layer reads
    out = rms_norm(residual_out)

Done as two operations, the sum is written to memory and read straight back (5 passes over a
`[T, H]` tensor); fused, the kernel keeps it in registers (4 passes).

**Your task** — in `mili/kernels/rmsnorm.py`, write a `@triton.jit` kernel (one kernel can serve
both functions, with a `HAS_RESIDUAL: tl.constexpr` switch) and complete the two launchers
`rms_norm` and `fused_add_rms_norm`. The launchers check their arguments first — the helpers in
`mili/kernels/_checks.py` (`check_tensor`, `check_same_device`, `check_same_dtype`, `check_shape`,
`as_rows`) raise the errors the grader expects — allocate the outputs, pick the block sizes and
launch. A good start: `BLOCK_ROWS` rows per program such that `BLOCK_ROWS · BLOCK_H` is about
4096 elements, `num_warps` between 4 and 16. Restart the notebook's kernel after editing: the
implementation is chosen when `mili` is imported.

**The grader** runs your kernels in the interpreter at hidden 1000 (not a power of two), 1 row,
6 rows, a 3-D input, strided rows, all three dtypes, one row 100x larger than the others, a large
eps, bad inputs (which must raise `TypeError`/`ValueError` naming the argument) — against plain
float32 PyTorch math.
""")

code(r"""
mili.grade("2.1");
""")

code(r"""
from mili.kernels import fused_add_rms_norm, rms_norm  # yours where you wrote it, else the reference
from mili.model.norm import rms_norm as rms_norm_ch01

x = torch.randn(3, 1000, dtype=torch.bfloat16, device=DEVICE)
w = torch.rand(1000, dtype=torch.bfloat16, device=DEVICE) + 0.5
diff = (rms_norm(x, w, 1e-6).float() - rms_norm_ch01(x, w, 1e-6).float()).abs().max()
print(f"rms_norm vs chapter 01 on bf16 [3, 1000]: max |difference| = {diff:.3g} (one bf16 step at most)")
out, residual_out = fused_add_rms_norm(x, x, w, 1e-6)
print("residual_out == 2x:", torch.equal(residual_out, x + x))
""")

# ================================================================ 4. rope
md(r"""
## 4. Exercise 2.2 — RoPE, in place on q and k

Neox-style rotary embedding, as in chapter 01: each head `x` of a token at position `p` splits into
halves `x1 = x[:D/2]`, `x2 = x[D/2:]` and becomes

    x1, x2  <-  x1·cos − x2·sin,  x2·cos + x1·sin          cos, sin = cos_sin_cache[p] halves

Every head of a token shares that token's `cos`/`sin`, so let **one program handle one token**:
load its cache row once, then rotate a `[heads, D/2]` block of q and one of k. Work in place —
read each element of q and k once, write it once — and return the very tensors you were given.

In the model, q and k are *views* into the output of the fused qkv projection: q is
`qkv[:, :Hq·D].view(T, Hq, D)`, so its token stride is `(Hq + 2·Hkv)·D`, not `Hq·D`. Pass
`q.stride(0)` and `q.stride(1)` to the kernel and address `q_ptr + t·stride0 + h·stride1 + d`.

**Your task** — `apply_rope` in `mili/kernels/rope.py` (`check_rope_args` in `_checks.py` checks
the arguments). **The grader** checks 1 and 7 tokens in three dtypes, head_dim 24 (D/2 = 12, not
a power of two) with 3 heads, strided views of a fused qkv buffer (v must be left untouched),
position 0 as the identity, and bad inputs; the oracle builds its own cos/sin table.
""")

code(r"""
mili.grade("2.2");
""")

# ================================================================ 5. silu
md(r"""
## 5. Exercise 2.3 — SiLU-and-mul

Qwen3's MLP computes `gate_up = x @ W_gate_up` as one `[T, 2I]` matrix and then
`silu(gate) · up` with `silu(g) = g · sigmoid(g)`. Fused, the kernel reads `2·T·I` elements and
writes `T·I`: no reduction, so any tiling works. A simple one: a 1-D grid where consecutive
programs take consecutive `BLOCK`-column chunks of a row (`row = pid // blocks_per_row`), so the
GPU sweeps memory in order; load gate at `row·stride + cols` and up `I` elements further on.

**Your task** — `silu_and_mul` in `mili/kernels/activation.py`. **The grader** checks I = 1000 and
96 in three dtypes, 1 row, strided rows, hand-computed values for negative and positive gates,
and bad inputs (an odd last dimension must raise `ValueError`).
""")

code(r"""
mili.grade("2.3");
""")

# ================================================================ 6. qk norm + rope
md(r"""
## 6. Exercise 2.4 (stretch) — q/k RMSNorm and RoPE in one pass

Qwen3 normalises every query and key head over `head_dim` (q_norm, k_norm) right before the
rotary embedding. Separately that is three passes over q and k — norm q, norm k, rotate both —
each reading and writing the tensors; fused, one program per token loads its heads once,
normalises each head (its mean square spans both halves), scales by the weight, rotates, and
writes back in place: the bytes of RoPE alone. Round where the unfused path rounds (the normalised
value, then the product with the weight) so the result matches it.

**Your task** — `qk_norm_rope` in `mili/kernels/qk_norm_rope.py`. The engine's `triton` backend does
not call it yet (the attention module calls the norm and RoPE ops separately); section 8 shows
what it would save.
""")

code(r"""
mili.grade("2.4");
""")

# ================================================================ 7. the model
md(r"""
## 7. The whole model on the `triton` backend

The model calls every op through a backend (`mili/backends/__init__.py`); the `triton` backend
takes `rms_norm`, `fused_add_rms_norm`, `apply_rope` and `silu_and_mul` from `mili.kernels` —
your kernels — and the rest from PyTorch until chapter 04. A tiny random Qwen3 gives the same
logits with either backend:
""")

code(r"""
from mili.backends import triton_backend
from mili.checkpoint import random_model
from mili.config import Qwen3Config
from mili.model.metadata import AttentionMetadata

tiny = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
input_ids = torch.randint(0, 97, (8,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
positions = torch.cat([torch.arange(5), torch.arange(3)]).to(DEVICE)
logits = {}
for backend in ("torch", "triton"):
    model = random_model(tiny, seed=0, dtype=torch.float32, device=DEVICE, backend=backend)
    with torch.no_grad():
        hidden = model(input_ids, positions, AttentionMetadata.prefill([5, 3], device=DEVICE), kv_cache=None)
        logits[backend] = model.compute_logits(hidden)
modules = triton_backend().describe()
print({op: modules[op] for op in ("rms_norm", "fused_add_rms_norm", "apply_rope", "silu_and_mul")})
print(f"max |logits(triton) - logits(torch)| = {(logits['triton'] - logits['torch']).abs().max():.2e}")
""")

# ================================================================ 8. measure
md(r"""
## 8. Measure: the kernels on an H200

`mili bench kernels` times each kernel at Qwen3-0.6B and 8B sizes from 1 to 16384 tokens in bf16,
with PyTorch eager and `torch.compile` running the same function on the same inputs. It replays
the calls in a CUDA graph over input sets that together overflow the L2 cache (so every call
reads from memory, as each layer of a model does), takes the median with
`triton.testing.do_bench`, and divides the bytes each op must move by the time. The roof is the
bandwidth of a 1 GiB device-to-device copy measured on the same card. These results were
recorded on the GPU machine and are read here from `benchmarks/kernels-h200.json`:
""")

code(r"""
env = report["environment"]
print(f"{env['gpu']} · driver {env['driver']} · torch {env['torch']} · triton {env['triton']} · "
      f"commit {env['git_commit'][:8]} · copy bandwidth {report['copy_gbps']:.0f} GB/s")
print(bench.HEADER)
for r in report["results"]:
    if r["tokens"] >= 1024:
        print(bench.format_row(r))
""")

code(r"""
fig = bench.plot_report(report)
plt.show()
""")

code(r"""
# fraction of the copy bandwidth, with the targets (85% for the norms and SiLU-and-mul, 70% for RoPE)
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for ax, model in zip(axes, ("0.6B", "8B")):
    for kernel in bench.KERNELS:
        rows = [r for r in report["results"] if r["model"] == model and r["kernel"] == kernel]
        ax.plot([r["tokens"] for r in rows], [r["triton"]["fraction_of_copy"] for r in rows], marker="o", label=kernel)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="copy bandwidth")
    ax.axhline(0.85, color="grey", linestyle=":", linewidth=1, label="85% target")
    ax.axhline(0.70, color="grey", linestyle="-.", linewidth=1, label="70% target (RoPE)")
    ax.axvline(4096, color="grey", linewidth=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens")
    ax.set_title(f"mili Triton kernels · Qwen3-{model} · {env['gpu']}")
axes[0].set_ylabel("fraction of copy bandwidth")
axes[0].legend(fontsize=7)
plt.tight_layout()
plt.show()
""")

md(r"""
Three things to read off these numbers.

**A kernel costs a fixed ~2 µs before it moves a byte.** At one token every kernel takes about
2 µs, and at 4096 tokens the time is close to `2 µs + bytes / copy bandwidth`:
""")

code(r"""
for r in report["results"]:
    if r["tokens"] == 4096:
        predicted = 2.0 + r["bytes"] / report["copy_gbps"] / 1e3
        print(f"Qwen3-{r['model']:<4} {r['kernel']:<19} measured {r['triton']['ms'] * 1e3:5.1f} us · "
              f"2 us + bytes/bandwidth = {predicted:5.1f} us")
""")

md(r"""
So a fraction of the copy bandwidth only means something once the bytes take much longer than
2 µs: Qwen3-0.6B's RMSNorm at 4096 tokens moves 16.8 MB, 4 µs of traffic, and reaches 69% of the
copy bandwidth (so does `torch.compile`'s), short of its 85% target. The table's last column says why
no kernel can do better there: a plain streaming copy of the same 16.8 MB, timed the same way,
reaches 67%. Fused with the add (twice the bytes) the norm reaches 89%, and at 16384 tokens 87% and
92%. Every other kernel meets its target (85% for the norms and SiLU-and-mul, 70% for RoPE) from
4096 tokens on. This fixed cost is also why fusing small ops pays twice: fewer bytes
*and* fewer launches — which is what CUDA graphs (chapter 03) attack from the other side.

**torch.compile is a strong peer.** It fuses each function into one Triton kernel too, so for
RMSNorm and SiLU-and-mul it moves the same bytes as ours. From 4096 tokens on, at the 8B sizes our
norms are 2–13% faster; SiLU-and-mul ties (both at the copy bandwidth, within 1%); at the 0.6B
sizes the norms tie (within 3%), because ours picks its rows per program and warps from the hidden
size and the row count, as `torch.compile` tunes its block shape per size (the rule's constants come
from a sweep on the H200, `benchmarks/rmsnorm-h200-sweep.json`); below 4096 tokens `torch.compile`
is still 2–5% ahead there. Where it cannot
fuse the whole operation — RoPE's gather of cos/sin and in-place update, and the norm-then-RoPE
chain of exercise 2.4 — ours is 1.4–2.8x faster.

**Eager PyTorch is 4–27x slower** from 4096 tokens on, for the reason section 1 counted.

## 9. What you built

Four memory-bound kernels that run near the copy bandwidth of an H200 at prefill sizes, and a
`triton` backend that swaps them into the model without changing its logits. Chapter 04 does the
same for the one operation that is not memory-bound at prefill: attention, where the tile shapes
and the online softmax decide the speed.
""")


def build() -> None:
    write("02_kernels.ipynb")


if __name__ == "__main__":
    build()
