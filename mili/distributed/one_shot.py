"""The all-reduce of a decode step, in one kernel that reads the other GPUs' memory directly.

A tensor-parallel decode step at batch 1 all-reduces a few kilobytes twice per layer (72 times
per token at Qwen3-8B shapes). At that size an all-reduce costs its latency, not its bytes: NCCL's
ring passes the data through several steps and kernels. PyTorch's symmetric memory maps one buffer
of every GPU into the address space of each, so one kernel can do it all: each rank copies its
part into its own buffer, waits at a barrier for the others (a flag in each GPU's signal pad),
reads every rank's buffer over NVLink, sums and writes the result, then meets the others at a
second barrier so that no buffer is overwritten while a peer still reads it
(`torch.ops.symm_mem.one_shot_all_reduce_copy`). It reads world_size × the bytes, so it only pays
for small tensors; larger ones (a prefill's) stay on NCCL. No NVLink multicast is used.

Rank 0 decides whether the group uses it (`usable`) and every rank installs it after joining the
group (`install`, from `worker.join_group`); `TensorParallelGroup.all_reduce` then uses it for the
tensors it takes, and every rank takes or leaves a tensor alike (by its dtype and size only).
MILI_ALL_REDUCE=nccl turns it off. A process uses it for its first group only: on two H200s a
second group in the same process (after the first shut down) hung with it, most likely because
PyTorch keeps a process's symmetric memory tied to the first process group it met; so a second
tensor-parallel model in one process sums with NCCL.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from mili.model.parallel import set_fast_all_reduce

# A decode step of up to 256 sequences at hidden size 4096 in bfloat16: on two H200s the one-shot
# kernel beat NCCL at every size up to this one, the largest measured (all-reduce-probe-h200.json).
MAX_BYTES = 2 << 20
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class OneShotAllReduce:
    def __init__(self, device: torch.device, max_bytes: int = MAX_BYTES):
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = dist.group.WORLD.group_name
        self.buffer = symm_mem.empty(max_bytes, dtype=torch.uint8, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)  # collective: every rank, in the same order
        self.max_bytes = max_bytes

    def __call__(self, t: Tensor) -> Tensor | None:
        """The sum of `t` over the ranks (a new tensor), or None where `t` is too large or not a float
        tensor on this GPU. The choice depends on nothing that may differ between ranks."""
        nbytes = t.numel() * t.element_size()
        if (t.device != self.buffer.device or t.dtype not in DTYPES or nbytes == 0 or nbytes > self.max_bytes
                or nbytes % 16):
            return None
        if not t.is_contiguous() or t.data_ptr() % 16:
            t = t.clone(memory_format=torch.contiguous_format)  # a fresh allocation is aligned
        symm = self.buffer[:nbytes].view(t.dtype)
        return torch.ops.symm_mem.one_shot_all_reduce_copy(symm, t.view(-1), "sum", self.group_name).view(t.shape)


_installed_once = False


def usable(device: torch.device) -> bool:
    """Whether a group that rank 0 starts now on `device` should use the one-shot all-reduce."""
    return device.type == "cuda" and not _installed_once and os.environ.get("MILI_ALL_REDUCE") != "nccl"


def install(device: torch.device) -> None:
    """Set up the one-shot all-reduce on this rank (collective: every rank of the group calls it)."""
    global _installed_once
    _installed_once = True
    set_fast_all_reduce(OneShotAllReduce(device))


def uninstall() -> None:
    set_fast_all_reduce(None)
