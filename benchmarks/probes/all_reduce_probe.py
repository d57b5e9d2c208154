"""How long does one small all-reduce take between the GPUs of one host: NCCL against the
one-shot symmetric-memory kernel (`mili.distributed.one_shot`)?

Each rank records a CUDA graph of 72 all-reduces of one size (a decode step of Qwen3-8B makes 72:
two per layer) and replays it; the time per all-reduce is the replay's time / 72. The one-shot
sums are checked against NCCL's. Sizes: bf16 [rows, 4096] for 1 to 256 rows.

    python benchmarks/probes/all_reduce_probe.py [--gpus 2] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CALLS = 72
ROWS = (1, 4, 16, 64, 256)
HIDDEN = 4096


def timed_graph(fn, x, repeats=20) -> float:
    """Microseconds per call of fn(x), from replays of a graph of CALLS calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn(x)
    graph.replay()
    torch.cuda.synchronize()
    dist.barrier()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (repeats * CALLS)


def rank_main(rank: int, size: int, port: int, out: str | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NCCL_NVLS_ENABLE="0",
                      TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=size, device_id=device)
    from mili.distributed.one_shot import OneShotAllReduce

    one_shot = OneShotAllReduce(device, max_bytes=max(ROWS) * HIDDEN * 2)
    rows_out = []
    for rows in ROWS:
        x = torch.randn(rows, HIDDEN, device=device, dtype=torch.bfloat16) * (rank + 1)
        reference = x.clone()
        dist.all_reduce(reference)
        same = torch.equal(one_shot(x), reference)
        nccl_us = timed_graph(lambda t: dist.all_reduce(t), x.clone())
        one_shot_us = timed_graph(one_shot, x)
        rows_out.append({"rows": rows, "bytes": rows * HIDDEN * 2, "nccl_us": nccl_us, "one_shot_us": one_shot_us,
                         "one_shot_equals_nccl": same})
        if rank == 0:
            print(f"{rows:4d} x {HIDDEN} bf16 ({rows * HIDDEN * 2 / 1024:6.0f} KiB): NCCL {nccl_us:6.2f} us, "
                  f"one-shot {one_shot_us:6.2f} us, equal sums: {same}", flush=True)
    if rank == 0 and out:
        record = {"gpu": torch.cuda.get_device_name(), "gpus": size, "torch": torch.__version__,
                  "calls_per_graph": CALLS, "sizes": rows_out}
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
    dist.barrier()
    del one_shot
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    mp.spawn(rank_main, args=(args.gpus, 29517, args.json), nprocs=args.gpus)


if __name__ == "__main__":
    main()
