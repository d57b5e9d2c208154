"""A worker rank (1 .. size-1): one process, one device, its part of the model and of the KV cache.

It joins the group (first: rank 0 waits in the rendezvous, and a worker that fails later is seen
at once), loads its shard, reports "ready", then runs whatever rank 0 sends until
told to stop (`step.py` lists the commands). It never outlives rank 0:

- Ctrl-C in a terminal reaches every process of the foreground group: workers ignore SIGINT
  and leave the decision to rank 0, which stops them.
- rank 0 gone (killed, crashed, exited): the command pipe reads end-of-file; a worker stuck in
  a collective sees gloo's "connection closed" error, or (NCCL, whose collectives wait on the
  GPU) a watchdog thread sees the parent process change and exits.
- its own failure: the traceback goes to rank 0 through the report pipe, then exit status 1.

CUDA graphs: every rank records its own decode graphs at once (their NCCL all-reduces are
recorded too, and must meet while recording), and for a step sent as "graph_forward" each rank
replays its graph for the step's batch size, or runs eagerly where none fits (a prefill, a batch
larger than the largest graph): every rank decides alike from the same step
(`forward_from_graphs`), so their all-reduces keep meeting. A batch-1 step that rank 0 staged in
its graph's own inputs comes as "graph_batch_1": the inputs arrive straight in this rank's
batch-1 graph buffer, and the graph's output becomes this rank's part of the logits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mili.distributed import one_shot, step
from mili.model.metadata import AttentionMetadata, KVCache
from mili.model.parallel import TensorParallelGroup

PARENT_POLL_S = 0.5


@dataclass(frozen=True)
class WorkerSpec:
    """What every rank needs to build its part of the model (pickled into each worker)."""

    model: str
    dtype: torch.dtype | None
    device: torch.device  # rank 0's; on CUDA rank r takes the r-th next index
    make_backend: Callable  # device -> Backend, the same on every rank
    seed: int
    size: int
    store_port: int
    num_threads: int
    one_shot_all_reduce: bool = False  # rank 0 decides for all (`one_shot.usable`): every rank must agree


def device_of(rank: int, first: torch.device) -> torch.device:
    if first.type == "cuda":
        return torch.device("cuda", (first.index or 0) + rank)
    return first


def join_group(rank: int, spec: WorkerSpec, store: dist.Store) -> None:
    """Join the group: NCCL between GPUs (NVLink multicast off unless set) with the one-shot
    all-reduce of small tensors (`one_shot.py`), gloo on the CPU."""
    device = device_of(rank, spec.device)
    if device.type == "cuda":
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # multicast needs fabric support and gains nothing here
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", store=store, rank=rank, world_size=spec.size, device_id=device)
        if spec.one_shot_all_reduce:
            one_shot.install(device)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=spec.size)


def load_shard(rank: int, spec: WorkerSpec):
    """This rank's part of the model (loading needs no collective: it can run before joining)."""
    from mili.checkpoint import load_model

    device = device_of(rank, spec.device)
    return load_model(spec.model, dtype=spec.dtype, device=device, backend=spec.make_backend(device), seed=spec.seed,
                      group=TensorParallelGroup(rank, spec.size))


def main(rank: int, spec: WorkerSpec, commands, reports) -> None:
    """The process target: commands and reports are the two ends of pipes to rank 0."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(os.getppid())
    try:
        torch.set_num_threads(spec.num_threads)
        reports.send(("joining",))
        join_group(rank, spec, dist.TCPStore("127.0.0.1", spec.store_port, spec.size, is_master=False))
        model = load_shard(rank, spec)
        reports.send(("ready",))
        with torch.inference_mode():
            serve(model, commands)
    except BaseException:  # noqa: BLE001 - reported to rank 0, which decides; this process ends
        try:
            reports.send(("error", traceback.format_exc()))
        except OSError:
            pass  # rank 0 is gone
        os._exit(1)  # no interpreter teardown: a broken communicator may hang in it
    leave_group()


def release_graphs(graphs) -> None:
    """Free this rank's CUDA graphs and let their work finish before the group is left."""
    if graphs is not None:
        graphs.release()
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()


def leave_group() -> None:
    """Leave the process group at shutdown. An NCCL communicator is aborted, not destroyed:
    destroying it waits on the other ranks, which are leaving too (or gone), and it hung on
    two H200s once each rank had recorded CUDA graphs with collectives in them."""
    one_shot.uninstall()
    abort_nccl_group()
    if dist.is_initialized():  # gloo
        dist.destroy_process_group()


def abort_nccl_group() -> None:
    """Abort this process's NCCL group (if it has one): its pending collectives fail instead of
    waiting for ranks that are gone, and the group is left. gloo needs nothing: its connections
    to dead ranks close and its collectives raise."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        try:
            dist.distributed_c10d._abort_process_group()
        except Exception:  # noqa: BLE001 - best effort; NCCL's watchdog timeout remains the last resort
            pass


def forward_from_graphs(model, graphs, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata,
                        kv_cache: KVCache) -> torch.Tensor:
    """This rank's hidden states for a step: its decode graph's replay where one fits, else eagerly."""
    from mili.engine.batch import ModelInput

    model_input = ModelInput(input_ids, positions, md, logits_indices=input_ids.new_empty(0), sampled_seqs=[])
    replayed = graphs.run(model_input)
    return replayed.rows if replayed is not None else model(input_ids, positions, md, kv_cache)


def serve(model, commands) -> None:
    """Run rank 0's commands on this rank's shard until "shutdown" or end-of-file."""
    kv_cache = graphs = None
    while True:
        try:
            message = commands.recv()
        except EOFError:
            return  # rank 0 is gone
        kind = message[0]
        if kind == step.SHUTDOWN:
            release_graphs(graphs)
            return
        if kind == step.KV_CACHE:
            _, num_blocks, block_size = message
            kv_cache = graphs = None  # free the old ones first (the graphs read the old cache)
            kv_cache = KVCache.for_config(model.config, num_blocks, block_size, dtype=model.dtype, device=model.device)
        elif kind == step.FORWARD:
            _, layout, use_cache = message
            buffer = step.broadcast_from_first(torch.empty(layout.numel, dtype=torch.int64, device=model.device))
            input_ids, positions, md = step.unpack_step(layout, buffer)
            model(input_ids, positions, md, kv_cache if use_cache else None)
        elif kind == step.LOGITS:
            _, shape = message
            hidden = step.broadcast_from_first(torch.empty(shape, dtype=model.dtype, device=model.device))
            model.compute_logits(hidden)  # this rank's part of the vocabulary, gathered on rank 0
        elif kind == step.COPY_BLOCKS:
            kv_cache.copy_blocks(message[1])
        elif kind == step.RECORD_GRAPHS:
            from mili.engine.cuda_graphs import DecodeGraphs

            _, max_num_seqs, max_model_len = message
            graphs = None
            graphs = DecodeGraphs(model, kv_cache, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                                   after_warm_up=one_shot.empty_sum_buffers)
        elif kind == step.GRAPH_FORWARD:
            _, layout = message
            buffer = step.broadcast_from_first(torch.empty(layout.numel, dtype=torch.int64, device=model.device))
            forward_from_graphs(model, graphs, *step.unpack_step(layout, buffer), kv_cache)
        elif kind == step.GRAPH_BATCH_1:
            step.broadcast_from_first(graphs.batch_1_inputs.buffer)
            model.compute_logits(graphs.replay_batch_1())
        else:
            raise ValueError(f"unknown command {kind!r} from rank 0")


def _exit_with_parent(parent: int) -> None:
    """Exit when rank 0's process ends, even while this one waits inside a collective."""

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="mili-parent-watch", daemon=True).start()
