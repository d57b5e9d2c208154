"""The one-shot all-reduce kernel on 2 GPUs: its sums equal NCCL's, called eagerly with changing
sizes and dtypes, between NCCL calls, and replayed in a CUDA graph (the slot each program keeps
must stay in step across replays); and a rank whose peer never sends gets an error, not a hang.
Skipped without 2 GPUs."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mili.server.launch import free_port

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")]

SIZES = [(1, 4096), (1, 1024), (3, 5120), (64, 4096), (256, 4096), (1, 8)]


def _nccl_sum(t: torch.Tensor) -> torch.Tensor:
    summed = t.clone()
    dist.all_reduce(summed)
    return summed


def _join(rank: int, size: int, port: int, **env: str) -> torch.device:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NCCL_NVLS_ENABLE="0",
                      TORCH_SYMM_MEM_DISABLE_MULTICAST="1", **env)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=size, device_id=device)
    return device


def _rank(rank: int, size: int, port: int, failures) -> None:
    device = _join(rank, size, port)
    try:
        from mili.distributed.one_shot import rendezvous

        one_shot = rendezvous(device)
        generator = torch.Generator(device).manual_seed(rank)
        for call, shape in enumerate(SIZES * 2):
            dtype = (torch.bfloat16, torch.float16)[call % 2]
            x = torch.randn(shape, device=device, dtype=dtype, generator=generator) * (rank + 1)
            if call == 0:
                x[0, :7] = -0.0
            summed = one_shot(x)
            assert summed is not None and torch.equal(summed, _nccl_sum(x)), f"eager call {call} {shape} {dtype}"

        x = torch.empty(1, 4096, device=device, dtype=torch.bfloat16)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            one_shot(x.normal_())
        torch.cuda.current_stream().wait_stream(stream)
        graph, outs = torch.cuda.CUDAGraph(), []
        with torch.cuda.graph(graph):
            y = x
            for _ in range(73):  # odd: the slots of a replay start where the last one ended
                y = one_shot(y * 0.5)
                outs.append(y)
        for replay in range(3):
            x.normal_(generator=generator)
            expected, y = [], x
            graph.replay()
            for _ in range(73):
                y = _nccl_sum(y * 0.5)
                expected.append(y)
            torch.cuda.synchronize()
            for i, (got, want) in enumerate(zip(outs, expected)):
                assert torch.equal(got, want), f"replay {replay}, call {i} of the graph"
    except BaseException as e:  # noqa: BLE001 - reported to the test
        failures.put(f"rank {rank}: {e!r}")
        raise
    finally:
        dist.destroy_process_group()


def test_one_shot_sums_equal_nccls_eagerly_and_in_a_replayed_graph():
    context = mp.get_context("spawn")
    failures = context.Queue()
    port = free_port()
    processes = [context.Process(target=_rank, args=(rank, 2, port, failures)) for rank in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=240)
    for p in processes:
        if p.is_alive():
            p.kill()
    messages = [failures.get() for _ in range(failures.qsize())] if not failures.empty() else []
    assert not messages and all(p.exitcode == 0 for p in processes), \
        f"exit codes {[p.exitcode for p in processes]}: {messages or 'a rank hung or crashed'}"


def _lone_rank(rank: int, size: int, port: int, results, done) -> None:
    """Rank 0 calls the all-reduce, rank 1 never does (a rank that is stuck)."""
    device = _join(rank, size, port, MILI_ALL_REDUCE_TIMEOUT_S="2")
    from mili.distributed.one_shot import rendezvous

    one_shot = rendezvous(device)
    if rank == 1:
        done.wait(120)  # alive, buffer mapped, never sending
        os._exit(0)
    try:
        one_shot(torch.ones(1, 4096, device=device, dtype=torch.bfloat16))
        torch.cuda.synchronize()
        results.put("returned")
    except RuntimeError as e:
        results.put(f"raised: {e}")
    finally:
        done.set()
        os._exit(0)  # the CUDA context is lost after the abort: no teardown


def test_a_rank_that_never_sends_makes_the_kernel_fail_instead_of_hang():
    """Rank 0's wait ends with a CUDA error after MILI_ALL_REDUCE_TIMEOUT_S (2 s here). Either rank 0
    reports it, or NCCL's watchdog thread, which sees the same error, aborts the process first:
    both end the process; what must not happen is a hang, or a sum returned without the peer's part."""
    context = mp.get_context("spawn")
    # a SimpleQueue's put writes to the pipe before it returns; a Queue's leaves it to a feeder
    # thread, which os._exit does not wait for, so rank 0's report could be lost
    results, done = context.SimpleQueue(), context.Event()
    port = free_port()
    processes = [context.Process(target=_lone_rank, args=(rank, 2, port, results, done)) for rank in range(2)]
    for p in processes:
        p.start()
    processes[0].join(timeout=150)
    hung = processes[0].is_alive()
    done.set()
    for p in processes:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    outcome = results.get() if not results.empty() else f"no report, exit status {processes[0].exitcode}"
    assert not hung, "rank 0 still waits for a peer that never sends: the kernel must abort"
    assert outcome != "returned", "rank 0's all-reduce returned without its peer's part"
    assert outcome.startswith("raised") or processes[0].exitcode != 0, outcome
