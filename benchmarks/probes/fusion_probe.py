"""Would fusing the norms and the activation into the batch-1 projections pay?

`kernel_removal.py` could not say: taking the norms or SiLU out of the step made it slower. So
this probe builds the fused kernels and times them against the unfused chain they replace, at
Qwen3-0.6B's shapes in bfloat16, in one CUDA graph per variant (28 layers, as the model has):

    unfused   per layer: add+RMSNorm -> GEMV qkv -> GEMV o -> add+RMSNorm -> GEMV gate_up -> SiLU -> GEMV down
    fused     per layer: [add+RMSNorm+GEMV qkv] -> GEMV o -> [add+RMSNorm+GEMV gate_up] -> [SiLU+GEMV down]

(attention is left out: it is the same in both, and the o projection reads a slice of the qkv
output in its place). The unfused chain uses the engine's kernels (the reference RMSNorm and
SiLU of exercises 2.1 and 2.3, the GEMV of mili/kernels/linear.py). A fused GEMV does its
neighbour's work in its prologue or its loop:

    add+RMSNorm+GEMV   every program reads the whole input row (K elements, a few KB from L2),
                       adds the residual, computes the row's rms, and normalises each tile of x as
                       it multiplies it; program 0 also writes the sum, the next residual (the
                       engine's own since, `rms_norm_linear` in mili/kernels/linear.py).
    SiLU+GEMV          each tile of x is silu(gate) * up, read from the gate_up output.

Both variants run with dependent launch on (as the engine does on Hopper) and off, and the
fused outputs are checked against the unfused ones first. Run on a GPU:

    python benchmarks/probes/fusion_probe.py [--json OUT.json]
    TRITON_INTERPRET=1 python benchmarks/probes/fusion_probe.py --layers 1 --small   # a CPU dry run
"""

from __future__ import annotations

import argparse
import json

import torch

from mili.kernels import fused_add_rms_norm, silu_and_mul
from mili.kernels._triton import dependent_launch, tl, triton, wait_for_previous_kernel
from mili.kernels.linear import GEMV_CONFIGS, _gemv_kernel, first_weight_tile
from mili.testing import assert_close

QWEN3_0_6B = dict(hidden=1024, q_size=2048, kv_size=1024, inter=3072)


@triton.jit
def _silu_gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_w, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      DEPENDENT_LAUNCH: tl.constexpr):
    """The GEMV of mili/kernels/linear.py with the activation in its tiles: y = W · (silu(gate) * up)
    where x = [gate | up], each K long, with silu_and_mul's rounding. (The add+RMSNorm GEMV is
    linear.py's own, INPUT="add_rms_norm".)"""
    rows, row_ok, w_rows, cols, w = first_weight_tile(w_ptr, N, K, stride_w, BLOCK_N, BLOCK_K)
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for _ in range(0, K, BLOCK_K):
        ok = cols < K
        gate = tl.load(x_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + K + cols, mask=ok, other=0.0).to(tl.float32)
        x = (gate * tl.sigmoid(gate) * up).to(y_ptr.dtype.element_ty)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        cols += BLOCK_K
        w = tl.load(w_rows + cols[None, :], mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=row_ok)


def _tuned(kernel, key):
    return triton.autotune(configs=GEMV_CONFIGS, key=key)(kernel) if torch.cuda.is_available() else kernel


gemv_tuned, silu_gemv_tuned = _tuned(_gemv_kernel, ["N", "K", "INPUT"]), _tuned(_silu_gemv_kernel, ["N", "K"])
SMALL = dict(BLOCK_N=2, BLOCK_K=64)  # the interpreter: one small configuration


def _grid(n):
    return (lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)) if torch.cuda.is_available() else (triton.cdiv(n, 2),)


def _options(pdl):
    """A GPU autotunes and may launch dependently; the interpreter takes one small configuration."""
    return dict(DEPENDENT_LAUNCH=pdl, launch_pdl=pdl) if torch.cuda.is_available() else dict(DEPENDENT_LAUNCH=False,
                                                                                             **SMALL)


def gemv(x, w, pdl, out=None):
    n, k = w.shape
    y = torch.empty(1, n, dtype=x.dtype, device=x.device) if out is None else out
    gemv_tuned[_grid(n)](x, w, y, n, k, w.stride(0), x, x, y, 0.0,  # no residual, norm weight or eps
                         INPUT="plain", BLOCK_H=1, **_options(pdl))
    return y


def norm_gemv(x, res, norm_w, w, pdl, eps=1e-6):
    n, k = w.shape
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(x)
    gemv_tuned[_grid(n)](x, w, y, n, k, w.stride(0), res, norm_w, res_out, eps,
                         INPUT="add_rms_norm", BLOCK_H=triton.next_power_of_2(k), **_options(pdl))
    return y, res_out


def silu_gemv(x, w, pdl):
    n, k = w.shape
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    silu_gemv_tuned[_grid(n)](x, w, y, n, k, w.stride(0), **_options(pdl))
    return y


class Layer:
    def __init__(self, device, dtype, hidden, q_size, kv_size, inter):
        shapes = [(q_size + 2 * kv_size, hidden), (hidden, q_size), (2 * inter, hidden), (hidden, inter)]
        self.flat = torch.empty(sum(n * k for n, k in shapes), device=device, dtype=dtype)  # one range to prefetch
        weights, at = [], 0
        for n, k in shapes:
            weights.append(self.flat[at:at + n * k].view(n, k))
            weights[-1].copy_((torch.randn(n, k, device=device) / k ** 0.5).to(dtype))
            at += n * k
        self.qkv, self.o, self.gate_up, self.down = weights
        self.q_size = q_size
        self.norm1 = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
        self.norm2 = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)

    def unfused(self, h, res, pdl):
        x, res = fused_add_rms_norm(h, res, self.norm1, 1e-6)
        qkv = gemv(x, self.qkv, pdl)
        h = gemv(qkv[:, :self.q_size], self.o, pdl)
        x, res = fused_add_rms_norm(h, res, self.norm2, 1e-6)
        return gemv(silu_and_mul(gemv(x, self.gate_up, pdl)), self.down, pdl), res

    def fused(self, h, res, pdl):
        qkv, res = norm_gemv(h, res, self.norm1, self.qkv, pdl)
        h = gemv(qkv[:, :self.q_size], self.o, pdl)
        gate_up, res = norm_gemv(h, res, self.norm2, self.gate_up, pdl)
        return silu_gemv(gate_up, self.down, pdl), res


@triton.jit
def _prefetch_kernel(w_ptr, n, sink_ptr, BLOCK: tl.constexpr):
    """Reads w[0:n] into L2 (kept there, evict_last) and discards it; the sum only keeps the loads.
    Each program reads its own contiguous share, four independent tiles at a time (loads in flight)."""
    share = tl.cdiv(tl.cdiv(n, tl.num_programs(0)), 4 * BLOCK) * 4 * BLOCK
    lo = tl.program_id(0) * share
    hi = tl.minimum(lo + share, n)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(lo, hi, 4 * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        a = tl.load(w_ptr + offs, mask=offs < hi, other=0.0, eviction_policy="evict_last")
        b = tl.load(w_ptr + BLOCK + offs, mask=BLOCK + offs < hi, other=0.0, eviction_policy="evict_last")
        c = tl.load(w_ptr + 2 * BLOCK + offs, mask=2 * BLOCK + offs < hi, other=0.0, eviction_policy="evict_last")
        d = tl.load(w_ptr + 3 * BLOCK + offs, mask=3 * BLOCK + offs < hi, other=0.0, eviction_policy="evict_last")
        acc += (a.to(tl.float32) + b.to(tl.float32)) + (c.to(tl.float32) + d.to(tl.float32))
    total = tl.sum(acc, 0)
    if total == 1234.5:  # never, in practice; the compiler cannot know
        tl.store(sink_ptr, total)


def prefetch(layer, sink, programs):
    _prefetch_kernel[(programs,)](layer.flat, layer.flat.numel(), sink, BLOCK=1024, num_warps=4)


def run(layers, variant, h, res, pdl, prefetch_programs=0):
    """The chain; with prefetch_programs, a second stream reads layer i+1's weights into L2 while
    layer i runs (one layer ahead: each prefetch waits for the previous one and for layer i to start)."""
    side = torch.cuda.Stream() if prefetch_programs else None
    sink = torch.empty(1, device=h.device)
    if side is not None:
        side.wait_stream(torch.cuda.current_stream())
    for i, layer in enumerate(layers):
        if side is not None and i + 1 < len(layers):
            started = torch.cuda.Event()
            started.record()
            side.wait_event(started)
            with torch.cuda.stream(side):
                prefetch(layers[i + 1], sink, prefetch_programs)
        h, res = getattr(layer, variant)(h, res, pdl)
    if side is not None:
        torch.cuda.current_stream().wait_stream(side)
    return h, res


def back_to_back_us(fn, repeats: int = 50) -> float:
    """Microseconds per call of fn, called back to back with no host work in between (the GPU's
    time when fn only launches work): the best of five timings of `repeats` calls."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(1e3 * start.elapsed_time(end) / repeats)
    return min(times)


def replay_us(fn, repeats=50):
    """fn recorded once as a CUDA graph, its replays timed back to back."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return back_to_back_us(graph.replay, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--small", action="store_true", help="an eighth of each size (a dry run in the interpreter)")
    parser.add_argument("--json")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    sizes = {name: size // 8 if args.small else size for name, size in QWEN3_0_6B.items()}
    layers = [Layer(device, dtype, **sizes) for _ in range(args.layers)]
    h = torch.randn(1, sizes["hidden"], device=device).to(dtype)
    res = torch.randn(1, sizes["hidden"], device=device).to(dtype)
    # one layer: over many, bfloat16 roundings that differ by a unit (the fused and unfused GEMVs may
    # tune to different tiles, which add in another order) grow from layer to layer
    want = run(layers[:1], "unfused", h, res, False)
    got = run(layers[:1], "fused", h, res, False)
    for name, a, b in zip(("output", "residual"), got, want):
        assert_close(a, b, dtype=dtype, what=f"the fused layer's {name} against the unfused one")
    if not cuda:
        print("dry run: the fused chain matches the unfused one (no timing without a GPU)")
        return
    pdl_modes = [False] + ([True] if dependent_launch(torch.device(device)) else [])
    report = {"device": torch.cuda.get_device_name(), "layers": args.layers, "sizes": sizes, "dtype": str(dtype),
              "us_per_chain": {}}
    weight_bytes = sum(layer.flat.numel() * layer.flat.element_size() for layer in layers)
    report["weight_bytes"] = weight_bytes
    for pdl in pdl_modes:
        for programs in (0, 132, 264, 528):
            for variant in ("unfused", "fused"):
                if programs and not pdl:
                    continue
                us = replay_us(lambda: run(layers, variant, h, res, pdl, programs))
                name = f"{variant}{'-pdl' if pdl else ''}{f'-prefetch{programs}' if programs else ''}"
                report["us_per_chain"][name] = us
                print(f"{name:<26} {us:8.1f} us for {args.layers} layers ({us / args.layers:.2f} us per layer, "
                      f"{weight_bytes / us / 1e3:6.0f} GB/s of weights)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
