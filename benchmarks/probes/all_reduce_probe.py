"""How long does one small all-reduce take between the GPUs of one host: NCCL, PyTorch's one-shot
symmetric-memory op (`torch.ops.symm_mem.one_shot_all_reduce`: two barriers) and mili's one-shot
kernel (`mili.distributed.one_shot`: no barrier, dependent launch)?

Each rank records a CUDA graph of 72 all-reduces of one size (a decode step of Qwen3-8B makes 72:
two per layer) and replays it; the time per all-reduce is the replay's time / 72. The one-shot
sums are checked against NCCL's. The graph chains y = all_reduce(y * 0.5): each all-reduce waits
for a kernel that waits for the all-reduce before it, as in a decode step. Sizes: bf16 [rows, 4096] for 1 to 256 rows.

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
    """Microseconds per call of y = fn(y * 0.5), from replays of a graph of CALLS such calls in a
    chain (each waits for the one before, as in a decode step)."""

    def chain():
        y = x
        for _ in range(CALLS):
            y = fn(y * 0.5)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            chain()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()
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
    import torch.distributed._symmetric_memory as symm_mem

    from mili.distributed.one_shot import rendezvous

    mili_one_shot = rendezvous(device, max_bytes=max(ROWS) * HIDDEN * 2)
    torch_buffer = symm_mem.empty(max(ROWS) * HIDDEN, dtype=torch.bfloat16, device=device)
    group_name = dist.group.WORLD.group_name
    symm_mem.rendezvous(torch_buffer, group_name)

    def torch_one_shot(t):
        return torch.ops.symm_mem.one_shot_all_reduce_copy(torch_buffer[:t.numel()], t.view(-1), "sum",
                                                            group_name).view(t.shape)

    def nccl(t):
        dist.all_reduce(t)
        return t

    rows_out = []
    for rows in ROWS:
        x = torch.randn(rows, HIDDEN, device=device, dtype=torch.bfloat16) * (rank + 1)
        reference = nccl(x.clone())
        row = {"rows": rows, "bytes": rows * HIDDEN * 2}
        for name, fn in (("nccl", nccl), ("torch_one_shot", torch_one_shot), ("mili_one_shot", mili_one_shot)):
            if name != "nccl":
                row[f"{name}_equals_nccl"] = torch.equal(fn(x), reference)
            row[f"{name}_us"] = timed_graph(fn, x.clone())
        rows_out.append(row)
        if rank == 0:
            print(f"{rows:4d} x {HIDDEN} bf16 ({rows * HIDDEN * 2 / 1024:6.0f} KiB): "
                  + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                              if k not in ("rows", "bytes")), flush=True)
    if rank == 0 and out:
        record = {"gpu": torch.cuda.get_device_name(), "gpus": size, "torch": torch.__version__,
                  "calls_per_graph": CALLS, "per_call": "y = all_reduce(y * 0.5), chained",
                  "git_commit": os.environ.get("MILI_GIT_COMMIT", "unknown"), "sizes": rows_out}
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
    dist.barrier()
    del mili_one_shot
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    mp.spawn(rank_main, args=(args.gpus, 29517, args.json), nprocs=args.gpus)


if __name__ == "__main__":
    main()
