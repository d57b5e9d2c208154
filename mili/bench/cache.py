"""`mili bench cache`: what chapter 05's KV-cache bookkeeping costs on the host CPU.

The block manager and the radix cache are plain Python that runs between GPU steps, so their
cost is added to every step. Three measurements, all on the CPU (no GPU is involved):

1. mixed: 100k operations of an engine-like workload over `BlockManager` + `RadixCache`
   (admissions of prompts sharing a few system prompts, one-token appends, frees that feed the
   cache), reported per operation kind in operations per second. Peer: the same workload on a
   `BlockManager` without a prefix cache.
2. decode step: the bookkeeping of one decode step of 256 sequences (can_append, append_slots,
   slot_mapping of the new token and block_table, per sequence), in microseconds per step.
3. scaling: `match_prefix` and `insert` against prompt length (medians), which should grow linearly
   (O(prompt length / block size) dictionary look-ups plus the token comparisons).

    mili bench cache [--ops 100000] [--batch 256] [--json FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

from mili.bench.environment import git_commit, installed_version
from mili.cache import BlockManager, RadixCache

BLOCK_SIZE = 16
NUM_BLOCKS = 32768
SYSTEM_PROMPTS = 8
SYSTEM_LEN = 512
PROMPT_LENGTHS = (256, 1024, 4096, 16384)


def mixed_workload(num_ops: int, with_cache: bool, seed: int = 0) -> dict:
    """Seconds spent and calls made per operation kind over num_ops operations."""
    rng = random.Random(seed)
    systems = [[rng.randrange(151_000) for _ in range(SYSTEM_LEN)] for _ in range(SYSTEM_PROMPTS)]
    manager = BlockManager(NUM_BLOCKS, BLOCK_SIZE, RadixCache(BLOCK_SIZE) if with_cache else None)
    live: dict[int, list[int]] = {}
    seconds = dict.fromkeys(("allocate", "append_slots", "free"), 0.0)
    calls = dict.fromkeys(seconds, 0)
    next_id = 0
    clock = time.perf_counter
    while sum(calls.values()) < num_ops:
        r = rng.random()
        if r < 0.1 or not live:
            prompt = rng.choice(systems) + [rng.randrange(151_000) for _ in range(rng.randrange(16, 256))]
            start = clock()
            if manager.can_allocate(prompt):
                manager.allocate(next_id, prompt)
                live[next_id] = prompt
                next_id += 1
            seconds["allocate"] += clock() - start
            calls["allocate"] += 1
        elif r < 0.9 or len(live) < 64:
            seq_id = rng.choice(list(live)) if len(live) < 512 else next(iter(live))
            start = clock()
            if manager.can_append(seq_id):
                manager.append_slots(seq_id)
            seconds["append_slots"] += clock() - start
            calls["append_slots"] += 1
            live[seq_id].append(rng.randrange(151_000))
        else:
            seq_id = next(iter(live))
            tokens = live.pop(seq_id)
            start = clock()
            manager.free(seq_id, tokens if with_cache else None)
            seconds["free"] += clock() - start
            calls["free"] += 1
    stats = manager.stats
    return {"seconds": seconds, "calls": calls, "hit_rate": stats.hit_rate, "evictions": stats.evictions}


def decode_step(batch: int, steps: int = 50, seed: int = 0) -> float:
    """Median microseconds of one decode step's bookkeeping for `batch` sequences."""
    rng = random.Random(seed)
    manager = BlockManager(NUM_BLOCKS, BLOCK_SIZE, RadixCache(BLOCK_SIZE))
    for seq_id in range(batch):
        manager.allocate(seq_id, [rng.randrange(151_000) for _ in range(rng.randrange(100, 1024))])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        for seq_id in range(batch):
            if manager.can_append(seq_id):
                manager.append_slots(seq_id)
            n = manager.num_tokens(seq_id)
            manager.slot_mapping(seq_id, n - 1, n)
            manager.block_table(seq_id)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e6


def prefix_scaling(lengths=PROMPT_LENGTHS, repeats: int = 21, seed: int = 0) -> list[dict]:
    """Median microseconds per match_prefix (full hit) and per insert (all new) against prompt
    length (medians: this host may be shared)."""
    rng = random.Random(seed)
    rows = []
    for length in lengths:
        cache = RadixCache(BLOCK_SIZE)
        prompts = [[rng.randrange(151_000) for _ in range(length)] for _ in range(repeats)]
        blocks = list(range(length // BLOCK_SIZE))
        insert_times, match_times = [], []
        for prompt in prompts:
            start = time.perf_counter()
            cache.insert(prompt, blocks)
            insert_times.append(time.perf_counter() - start)
        for prompt in prompts:
            start = time.perf_counter()
            cache.match_prefix(prompt)
            match_times.append(time.perf_counter() - start)
        rows.append({"prompt_tokens": length, "match_us": sorted(match_times)[repeats // 2] * 1e6,
                     "insert_us": sorted(insert_times)[repeats // 2] * 1e6})
    return rows


def metadata() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"gpu": "none (host-side bookkeeping, CPU only)", "driver": "n/a", "cpu": cpu,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": installed_version("torch") or "not installed",
            "triton": installed_version("triton") or "not installed", "git_commit": git_commit(),
            "mili_impl": os.environ.get("MILI_IMPL", "auto"), "load_average_1min": os.getloadavg()[0]}


def run_benchmark(num_ops: int = 100_000, batch: int = 256, log=print) -> dict:
    cached, plain = mixed_workload(num_ops, True), mixed_workload(num_ops, False)
    mixed = []
    for kind in cached["calls"]:
        if not cached["calls"][kind] or not plain["calls"][kind]:
            continue  # a short run may not reach every kind
        ours = cached["calls"][kind] / max(cached["seconds"][kind], 1e-12)
        peer = plain["calls"][kind] / max(plain["seconds"][kind], 1e-12)
        mixed.append({"op": kind, "calls": cached["calls"][kind], "ops_per_s": ours, "us_per_op": 1e6 / ours,
                      "peer_ops_per_s": peer, "ratio_to_peer": ours / peer})
    total_ops = sum(cached["calls"].values())
    total = {"ops": total_ops, "ops_per_s": total_ops / sum(cached["seconds"].values()),
             "peer_ops_per_s": sum(plain["calls"].values()) / sum(plain["seconds"].values()),
             "hit_rate": cached["hit_rate"], "evictions": cached["evictions"]}
    step_us = decode_step(batch)
    scaling = prefix_scaling()
    log(f"{'workload':<34} {'our time':>12} {'ops/s':>12} {'floor':>6} {'peer ops/s':>12} {'ratio':>6}")
    for row in mixed:
        log(f"{'mixed: ' + row['op']:<34} {row['us_per_op']:>9.2f} us {row['ops_per_s']:>12,.0f} {'n/a':>6} "
            f"{row['peer_ops_per_s']:>12,.0f} {row['ratio_to_peer']:>6.2f}")
    log(f"{'mixed: all ' + str(total_ops) + ' ops':<34} {1e6 / total['ops_per_s']:>9.2f} us {total['ops_per_s']:>12,.0f} "
        f"{'n/a':>6} {total['peer_ops_per_s']:>12,.0f} {total['ops_per_s'] / total['peer_ops_per_s']:>6.2f}")
    log(f"{f'decode step, {batch} sequences':<34} {step_us:>9.1f} us {batch / step_us * 1e6:>12,.0f} {'n/a':>6}")
    for row in scaling:
        log(f"{'match_prefix, ' + str(row['prompt_tokens']) + ' tokens':<34} {row['match_us']:>9.1f} us "
            f"{1e6 / row['match_us']:>12,.0f} {'n/a':>6}")
        log(f"{'insert, ' + str(row['prompt_tokens']) + ' tokens':<34} {row['insert_us']:>9.1f} us "
            f"{1e6 / row['insert_us']:>12,.0f} {'n/a':>6}")
    log(f"prefix hit rate of the mixed workload: {total['hit_rate']:.1%}, evicted blocks: {total['evictions']}")
    return {"meta": metadata(), "block_size": BLOCK_SIZE, "num_blocks": NUM_BLOCKS, "mixed": mixed,
            "mixed_total": total, "decode_step": {"batch": batch, "us_per_step": step_us}, "scaling": scaling}


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ops = [row["op"] for row in results["mixed"]]
    x = range(len(ops))
    left.bar([i - 0.2 for i in x], [r["ops_per_s"] for r in results["mixed"]], 0.4, label="with RadixCache")
    left.bar([i + 0.2 for i in x], [r["peer_ops_per_s"] for r in results["mixed"]], 0.4, label="no prefix cache")
    left.set_xticks(list(x), ops)
    left.set_ylabel("operations per second")
    left.set_title(f"BlockManager, {results['mixed_total']['ops']:,} mixed operations")
    left.legend()
    lengths = [r["prompt_tokens"] for r in results["scaling"]]
    right.loglog(lengths, [r["match_us"] for r in results["scaling"]], "o-", label="match_prefix (full hit)")
    right.loglog(lengths, [r["insert_us"] for r in results["scaling"]], "s-", label="insert (all new)")
    base = results["scaling"][0]["match_us"]
    right.loglog(lengths, [base * n / lengths[0] for n in lengths], "k--", label="linear in prompt length")
    right.set_xlabel("prompt tokens")
    right.set_ylabel("microseconds per call")
    right.set_title("radix cache cost vs prompt length")
    right.legend()
    fig.suptitle(f"CPU: {results['meta']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mili bench cache", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=100_000, help="operations in the mixed workload")
    parser.add_argument("--batch", type=int, default=256, help="sequences in the decode step")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--plot", help="write the plot (PNG) here")
    args = parser.parse_args(argv)
    results = run_benchmark(args.ops, args.batch)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
