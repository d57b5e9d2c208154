"""What passes between the scheduler, the model runner and the engine each step.

`SchedulerOutput` lists the sequences to run and how many of their uncomputed tokens each runs
(a decode runs 1, a prompt chunk up to the token budget). `ModelInput` is that list turned into
the flat batch (`docs/architecture.md`, "The batch contract"), ready for the model.
`LaunchedStep` is a step whose sampled ids are on their way to the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mili.engine.sequence import Sequence
from mili.model.metadata import AttentionMetadata


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed this step, from seq.num_computed_tokens on

    @property
    def completes_prompt(self) -> bool:
        """After this step every token has its K/V: the last one's logits give the next token."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)  # sent back to waiting this step

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class ModelInput:
    input_ids: Tensor  # [T] int64
    positions: Tensor  # [T] int64
    attn_metadata: AttentionMetadata
    logits_indices: Tensor  # [S] int64: rows of the flat batch whose logits are sampled
    sampled_seqs: list[Sequence]  # the S sequences those rows belong to, in the same order
    row_keys: list | None = None  # per sequence of the batch: its seq_id if it decodes and is sampled


class LaunchedStep:
    """A step whose forward and sampler are queued on the device; `result()` waits for the ids.

    seqs[i] gets token_ids[i] ([S] int64 on the device). The ids start their copy to pinned host
    memory at once, so waiting for them is the step's one host sync. A later step that decodes a
    token this one sampled reads it from `token_ids` on the device (index: seq_id -> row).
    """

    def __init__(self, seqs: list[Sequence], token_ids: Tensor):
        self.seqs, self.token_ids = seqs, token_ids
        self.index = {seq.seq_id: i for i, seq in enumerate(seqs)}
        self.journal = None  # the engine's StepJournal of the step, kept until its tokens are appended
        self._ready = None
        if token_ids.is_cuda:
            self._host = token_ids.to("cpu", non_blocking=True)  # into pinned memory: a copy that does not wait
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = token_ids

    def result(self) -> list[int]:
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()
