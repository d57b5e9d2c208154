"""Is a prefill over a cached prefix slower per query token than a whole prefill?

Chapter 06's shared-prefix pair on an H100 came out with the prefix cache *losing*: 87 % of the
prompt tokens from the cache, yet a longer median TTFT and slower steps than with the cache off.
One hypothesis: a prefill over a cached prefix runs exercise 4.3's kernel, which gathers K/V
block by block through the block table, where a whole prefill runs exercise 4.1's kernel over
contiguous K/V; if the paged kernel is much slower per query token, the hits cost more than they
save. This probe times `mili.kernels.flash_attn_varlen` on one batch both ways:

    cache off: every prompt whole (prompt_len queries over prompt_len contiguous keys each)
    cache on:  each prompt's own tail (prompt_len - prefix_len queries) over its prompt_len keys,
               read from a paged cache through a block table

and checks that the cache-on output equals the last rows of the cache-off output. The shapes are
Qwen3-0.6B's attention (16 query heads, 8 KV heads, head_dim 128, bfloat16) on a GPU; on a CPU the
kernels run in the interpreter (TRITON_INTERPRET=1), so pass small sizes there: a dry run of the
probe, not a timing.

    python benchmarks/probes/prefill_kernels.py [--seqs 16] [--prompt-len 1024] [--prefix-len 896]
                                                [--block-size 16] [--json OUT.json]
    TRITON_INTERPRET=1 python benchmarks/probes/prefill_kernels.py --seqs 2 --prompt-len 40 --prefix-len 24 --block-size 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mili.kernels import flash_attn_varlen
from mili.testing import assert_close

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128  # Qwen3-0.6B


def packed_batch(seqs: int, prompt_len: int, block_size: int, device, dtype, seed: int = 0):
    """Queries, keys and values of `seqs` prompts, contiguous, and the same keys and values in a
    paged cache (each sequence's blocks scattered through the pool) with its block table."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(seqs * prompt_len, HEADS, HEAD_DIM, generator=gen).to(device, dtype)
    k = torch.randn(seqs * prompt_len, KV_HEADS, HEAD_DIM, generator=gen).to(device, dtype)
    v = torch.randn(seqs * prompt_len, KV_HEADS, HEAD_DIM, generator=gen).to(device, dtype)
    blocks_per_seq = -(-prompt_len // block_size)
    order = torch.randperm(seqs * blocks_per_seq, generator=gen)  # a pool that has been in use
    table = order.view(seqs, blocks_per_seq).to(torch.int32)
    k_cache = torch.zeros(seqs * blocks_per_seq, block_size, KV_HEADS, HEAD_DIM, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    for s in range(seqs):
        for j in range(blocks_per_seq):
            rows = slice(s * prompt_len + j * block_size, s * prompt_len + min((j + 1) * block_size, prompt_len))
            filled = rows.stop - rows.start
            k_cache[table[s, j], :filled] = k[rows]
            v_cache[table[s, j], :filled] = v[rows]
    return q, k, v, k_cache, v_cache, table.to(device)


def time_us(fn, device) -> float:
    if device.type == "cuda":
        import triton.testing

        return 1000 * triton.testing.do_bench(fn, warmup=25, rep=200)
    fn()
    start = time.perf_counter()
    fn()
    return 1e6 * (time.perf_counter() - start)


def probe(seqs: int, prompt_len: int, prefix_len: int, block_size: int) -> dict:
    if not 0 <= prefix_len < prompt_len:
        raise ValueError(f"need 0 <= prefix_len < prompt_len, got {prefix_len} and {prompt_len}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v, k_cache, v_cache, table = packed_batch(seqs, prompt_len, block_size, device, dtype)
    tail = prompt_len - prefix_len
    whole = torch.arange(seqs + 1, dtype=torch.int32, device=device) * prompt_len
    tails = torch.arange(seqs + 1, dtype=torch.int32, device=device) * tail
    q_tail = q.view(seqs, prompt_len, HEADS, HEAD_DIM)[:, prefix_len:].reshape(-1, HEADS, HEAD_DIM)

    def cache_off():
        return flash_attn_varlen(q, k, v, whole, whole, prompt_len, prompt_len, causal=True)

    def cache_on():
        return flash_attn_varlen(q_tail, k_cache, v_cache, tails, whole, tail, prompt_len, causal=True,
                                 block_table=table)

    expected = cache_off().view(seqs, prompt_len, HEADS, HEAD_DIM)[:, prefix_len:].reshape(-1, HEADS, HEAD_DIM)
    assert_close(cache_on(), expected, dtype=dtype, what="the cache-on prefill against the cache-off one's last rows")
    off_us, on_us = time_us(cache_off, device), time_us(cache_on, device)
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter: not a timing)",
            "dtype": str(dtype), "seqs": seqs, "prompt_len": prompt_len, "prefix_len": prefix_len,
            "block_size": block_size, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM,
            "cache_off": {"kernel": "contiguous (4.1)", "query_tokens": seqs * prompt_len, "us": off_us,
                          "us_per_query_token": off_us / (seqs * prompt_len)},
            "cache_on": {"kernel": "paged (4.3)", "query_tokens": seqs * tail, "us": on_us,
                         "us_per_query_token": on_us / (seqs * tail)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--prefix-len", type=int, default=896)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args()
    report = probe(args.seqs, args.prompt_len, args.prefix_len, args.block_size)
    print(f"{report['device']} · {report['seqs']} prompts of {report['prompt_len']} tokens, "
          f"the first {report['prefix_len']} cached · {report['dtype']}")
    for name in ("cache_off", "cache_on"):
        r = report[name]
        print(f"{name:<9} {r['kernel']:<16} {r['query_tokens']:>7} query tokens  {r['us']:10.1f} us  "
              f"{r['us_per_query_token']:8.4f} us per query token")
    ratio = report["cache_on"]["us"] / report["cache_off"]["us"]
    print(f"the cache-on prefill takes {ratio:.2f} of the cache-off one's time for "
          f"{report['cache_on']['query_tokens'] / report['cache_off']['query_tokens']:.2f} of its query tokens")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
