"""`mili bench attention`: chapter 04's kernels against PyTorch's attention on the same GPU.

Prefill: causal FlashAttention at head_dim 128 with Qwen3-0.6B (16 query / 8 KV heads) and
Qwen3-8B (32 / 8) head counts, one sequence of 512 to 16k tokens, in TFLOP/s (4·D·Hq·N(N+1)/2
flops, the visible half of the score matrix) against `scaled_dot_product_attention` with its
FlashAttention-2 backend, its cuDNN backend and its default choice; the floor is the flops over
the bf16 matrix-product rate measured in the same run.
Decode: paged decode attention (Qwen3-8B heads, 16-token blocks scattered at random) for batch
1 to 256 and context 512 to 32k, in GB/s of K/V read, as a fraction of the copy bandwidth
measured in the same run, against a PyTorch baseline that gathers each sequence's K/V out of
the paged cache and calls `scaled_dot_product_attention`. Times are medians of
`triton.testing.do_bench` (L2 flushed before every run) over replays of a captured CUDA graph of
the one call (the engine replays graphs at decode), bf16 throughout.

    mili bench attention [--json FILE] [--plot FILE] [--tokens 512 4096 ...] [--batches 1 64 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mili.bench.environment import environment

HEAD_DIM = 128
PREFILL_HEADS = {"0.6B": (16, 8), "8B": (32, 8)}
PREFILL_TOKENS = (512, 1024, 2048, 4096, 8192, 16384)
DECODE_HEADS = (32, 8)  # Qwen3-8B; the K/V read (the cost) is the same for 0.6B's 16 query heads
DECODE_BATCHES = (1, 8, 64, 256)
DECODE_CONTEXTS = (512, 1024, 4096, 16384, 32768)
MAX_DECODE_TOKENS = 1 << 21  # batch x context cap: 8 GB of K/V in bf16, twice that with the baseline's copy
BLOCK_SIZE = 16
SDPA_BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "default")
# done-when targets (issue 7)
PREFILL_TARGET_TOKENS = 4096
DECODE_TARGETS = {(64, 4096): 0.80, (64, 1024): 0.60}  # (batch, context): fraction of copy bandwidth


def median_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))


def graph_ms(fn) -> float:
    """Median time of `fn` replayed as a captured CUDA graph, as the engine runs decode: no Python or
    launch overhead in the figure (small problems would otherwise time the CPU). Plain calls if capture fails."""
    side = torch.cuda.Stream()  # warm up (compile, allocate workspaces) on a side stream, as capture wants
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError:
        torch.cuda.synchronize()
        return median_ms(fn)
    return median_ms(graph.replay)


def copy_gbps(num_bytes: int = 2 << 30) -> float:
    """Device-to-device copy moving `num_bytes` in all (half read, half written)."""
    src = torch.empty(num_bytes // 2, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return num_bytes / median_ms(lambda: dst.copy_(src)) / 1e6


def matmul_tflops(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n**3 / median_ms(lambda: a @ b) / 1e9


# ---------------------------------------------------------------- prefill

def sdpa_prefill(backend: str, q4, k4, v4):
    """A callable running SDPA (causal) on [1, H, N, D] views, or None where the backend refuses."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def call(k, v, gqa):
        if backend == "default":
            return F.scaled_dot_product_attention(q4, k, v, is_causal=True, enable_gqa=gqa)
        with sdpa_kernel(getattr(SDPBackend, backend)):
            return F.scaled_dot_product_attention(q4, k, v, is_causal=True, enable_gqa=gqa)

    group = q4.shape[1] // k4.shape[1]
    expanded = (k4.repeat_interleave(group, 1), v4.repeat_interleave(group, 1))
    for k, v, gqa in ((k4, v4, True), (*expanded, False)):  # native GQA first, else K/V expanded beforehand
        try:
            call(k, v, gqa)
            torch.cuda.synchronize()
            return lambda: call(k, v, gqa)
        except RuntimeError:
            continue
    return None


def bench_prefill(model: str, tokens: int, matmul_rate: float) -> dict:
    from mili.kernels import flash_attn_varlen

    hq, hkv = PREFILL_HEADS[model]
    q = torch.randn(tokens, hq, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(tokens, hkv, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(tokens, hkv, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, tokens], device="cuda", dtype=torch.int32)
    flops = 4 * HEAD_DIM * hq * tokens * (tokens + 1) / 2
    row = {"model": model, "tokens": tokens, "flops": flops, "floor_ms": flops / matmul_rate / 1e9}
    impls = {"mili": lambda: flash_attn_varlen(q, k, v, cu, cu, tokens, tokens)}
    q4, k4, v4 = (x.unsqueeze(0).transpose(1, 2) for x in (q, k, v))
    for backend in SDPA_BACKENDS:
        impls["sdpa_" + backend.lower()] = sdpa_prefill(backend, q4, k4, v4)
    for name, fn in impls.items():
        ms = graph_ms(fn) if fn is not None else None
        row[name] = None if ms is None else {"ms": ms, "tflops": flops / ms / 1e9}
    return row


# ---------------------------------------------------------------- decode

def torch_paged_decode(q, k_cache, v_cache, block_tables, context: int):
    """The PyTorch baseline: gather K/V out of the pages, then SDPA with the query heads of a group as rows."""
    batch, hq, d = q.shape
    hkv = k_cache.shape[2]
    k = k_cache[block_tables].flatten(1, 2)[:, :context].transpose(1, 2)  # [B, Hkv, L, D], a gathered copy
    v = v_cache[block_tables].flatten(1, 2)[:, :context].transpose(1, 2)
    out = F.scaled_dot_product_attention(q.view(batch, hkv, hq // hkv, d), k, v)
    return out.reshape(batch, hq, d)


def bench_decode(batch: int, context: int, copy_rate: float) -> dict:
    from mili.kernels import paged_decode_attention

    hq, hkv = DECODE_HEADS
    blocks_per_seq = context // BLOCK_SIZE
    num_blocks = batch * blocks_per_seq
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, hkv, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks, device="cuda").to(torch.int32).view(batch, blocks_per_seq)
    lengths = torch.full((batch,), context, device="cuda", dtype=torch.int32)
    q = torch.randn(batch, hq, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    kv_bytes = 2 * batch * context * hkv * HEAD_DIM * 2
    row = {"batch": batch, "context": context, "kv_bytes": kv_bytes, "floor_ms": kv_bytes / copy_rate / 1e6}
    impls = {"mili": lambda: paged_decode_attention(q, k_cache, v_cache, lengths, tables),
             "torch_gather_sdpa": lambda: torch_paged_decode(q, k_cache, v_cache, tables, context)}
    for name, fn in impls.items():
        ms = graph_ms(fn)
        gbps = kv_bytes / ms / 1e6
        row[name] = {"ms": ms, "gbps": gbps, "fraction_of_copy": gbps / copy_rate}
    row["mili"]["python_call_ms"] = median_ms(impls["mili"])  # the same op launched from Python, for contrast
    return row


# ---------------------------------------------------------------- the run


def run_benchmark(models=tuple(PREFILL_HEADS), tokens=PREFILL_TOKENS, batches=DECODE_BATCHES,
                  contexts=DECODE_CONTEXTS, log=print) -> dict:
    matmul_rate = matmul_tflops()
    copy_rate = copy_gbps()
    log(f"bf16 matmul 8192^3: {matmul_rate:.0f} TFLOP/s · copy (1 GiB, read + write): {copy_rate:.0f} GB/s")
    log(PREFILL_HEADER)
    prefill = []
    for model in models:
        for n in tokens:
            prefill.append(bench_prefill(model, n, matmul_rate))
            log(format_prefill(prefill[-1]))
            torch.cuda.empty_cache()
    log(DECODE_HEADER)
    decode = []
    for b in batches:
        for c in contexts:
            if b * c <= MAX_DECODE_TOKENS:
                decode.append(bench_decode(b, c, copy_rate))
                log(format_decode(decode[-1]))
                torch.cuda.empty_cache()
    report = {"environment": {**environment(dtype="bfloat16"), "block_size": BLOCK_SIZE, "head_dim": HEAD_DIM,
                                  "timing": "do_bench median over CUDA-graph replays, L2 flushed"},
              "matmul_tflops": matmul_rate, "copy_gbps": copy_rate, "prefill": prefill, "decode": decode}
    report["targets"] = check_targets(report)
    return report


def check_targets(report: dict) -> list[dict]:
    checks = []
    for r in report["prefill"]:
        if r["tokens"] == PREFILL_TARGET_TOKENS and r["sdpa_flash_attention"]:
            ours, peer = r["mili"]["tflops"], r["sdpa_flash_attention"]["tflops"]
            checks.append({"what": f"prefill {r['model']} N={r['tokens']} vs SDPA FLASH_ATTENTION",
                           "got": ours, "want": peer, "ok": ours >= peer})
    for r in report["decode"]:
        want = DECODE_TARGETS.get((r["batch"], r["context"]))
        if want is not None:
            got = r["mili"]["fraction_of_copy"]
            checks.append({"what": f"decode B={r['batch']} L={r['context']} fraction of copy",
                           "got": got, "want": want, "ok": got >= want})
    return checks


# ---------------------------------------------------------------- reporting

PREFILL_HEADER = (f"{'model':<5} {'tokens':>6} {'mili ms':>8} {'TFLOP/s':>7} {'of mm':>6} {'FA2':>6} {'cuDNN':>6} "
                  f"{'default':>7} {'vs FA2':>6}")
DECODE_HEADER = f"{'batch':>5} {'context':>7} {'KV MB':>8} {'mili us':>8} {'GB/s':>6} {'copy%':>6} {'torch us':>9} {'speedup':>7}"


def _tflops(entry) -> str:
    return f"{entry['tflops']:.0f}" if entry else "n/a"


def format_prefill(r: dict) -> str:
    m, fa2 = r["mili"], r["sdpa_flash_attention"]
    return (f"{r['model']:<5} {r['tokens']:>6} {m['ms']:>8.3f} {m['tflops']:>7.0f} {r['floor_ms'] / m['ms']:>5.0%} "
            f"{_tflops(fa2):>6} {_tflops(r['sdpa_cudnn_attention']):>6} {_tflops(r['sdpa_default']):>7} "
            f"{(fa2['ms'] / m['ms'] if fa2 else float('nan')):>5.2f}x")


def format_decode(r: dict) -> str:
    m, t = r["mili"], r["torch_gather_sdpa"]
    return (f"{r['batch']:>5} {r['context']:>7} {r['kv_bytes'] / 1e6:>8.1f} {m['ms'] * 1e3:>8.1f} {m['gbps']:>6.0f} "
            f"{m['fraction_of_copy']:>6.0%} {t['ms'] * 1e3:>9.1f} {t['ms'] / m['ms']:>6.1f}x")


def print_report(report: dict, stream=None) -> None:
    stream = stream or sys.stdout
    env = report["environment"]
    stream.write(f"{env['gpu']} · torch {env['torch']} · triton {env['triton']} · matmul "
                 f"{report['matmul_tflops']:.0f} TFLOP/s · copy {report['copy_gbps']:.0f} GB/s\n")
    stream.write(PREFILL_HEADER + "\n")
    for r in report["prefill"]:
        stream.write(format_prefill(r) + "\n")
    stream.write(DECODE_HEADER + "\n")
    for r in report["decode"]:
        stream.write(format_decode(r) + "\n")
    for c in report["targets"]:
        stream.write(f"{'MET ' if c['ok'] else 'MISS'} {c['what']}: {c['got']:.3g} (target {c['want']:.3g})\n")


def plot_report(report: dict, path: str | Path | None = None):
    """Left: prefill TFLOP/s against tokens. Right: decode GB/s against context, the copy bandwidth as roof."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {"mili": ("-", "o", "mili Triton"), "sdpa_flash_attention": ("--", "s", "SDPA FlashAttention-2"),
              "sdpa_cudnn_attention": (":", "^", "SDPA cuDNN"), "sdpa_default": ("-.", "x", "SDPA default")}
    for i, model in enumerate(dict.fromkeys(r["model"] for r in report["prefill"])):
        rows = [r for r in report["prefill"] if r["model"] == model]
        for impl, (line, marker, label) in styles.items():
            points = [(r["tokens"], r[impl]["tflops"]) for r in rows if r.get(impl)]
            if points:
                left.plot(*zip(*points), linestyle=line, marker=marker, color=f"C{i}", label=f"{label} · {model}")
    left.axhline(report["matmul_tflops"], color="k", linewidth=1, linestyle="--", label="bf16 matmul rate")
    left.set(xscale="log", xlabel="tokens (one sequence, causal)", ylabel="TFLOP/s",
             title="prefill attention, head_dim 128, bf16")
    left.set_xscale("log", base=2)
    left.legend(fontsize=7)
    for i, batch in enumerate(dict.fromkeys(r["batch"] for r in report["decode"])):
        rows = [r for r in report["decode"] if r["batch"] == batch]
        contexts = [r["context"] for r in rows]
        right.plot(contexts, [r["mili"]["gbps"] for r in rows], "-o", color=f"C{i}", label=f"mili · batch {batch}")
        right.plot(contexts, [r["torch_gather_sdpa"]["gbps"] for r in rows], ":", marker="x", color=f"C{i}",
                   label=f"gather + SDPA · batch {batch}")
    right.axhline(report["copy_gbps"], color="k", linewidth=1, linestyle="--", label="copy bandwidth (roof)")
    right.set_xscale("log", base=2)
    right.set(xlabel="context tokens per sequence", ylabel="GB/s of K/V read",
              title=f"paged decode, Hq/Hkv = {DECODE_HEADS[0]}/{DECODE_HEADS[1]}, block {BLOCK_SIZE}, bf16")
    right.set_ylim(0, report["copy_gbps"] * 1.45)  # room for the legend above the roof
    right.legend(fontsize=7, ncol=3, loc="upper left")
    fig.suptitle(f"Chapter 04 attention on {report['environment']['gpu']}", fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mili bench attention", description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--plot", help="write the plot (PNG) here")
    parser.add_argument("--models", nargs="+", default=list(PREFILL_HEADS), choices=list(PREFILL_HEADS))
    parser.add_argument("--tokens", type=int, nargs="+", default=list(PREFILL_TOKENS))
    parser.add_argument("--batches", type=int, nargs="+", default=list(DECODE_BATCHES))
    parser.add_argument("--contexts", type=int, nargs="+", default=list(DECODE_CONTEXTS))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("mili bench attention needs a CUDA GPU (the kernels' speed means nothing in the interpreter)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("MILI_IMPL", "reference")  # the engine's default; MILI_IMPL=auto times your kernels
    report = run_benchmark(args.models, args.tokens, args.batches, args.contexts,
                           log=lambda line: print(line, flush=True))
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot_report(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
