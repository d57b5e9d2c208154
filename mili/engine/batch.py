"""What passes between the scheduler and the model runner each step.

`SchedulerOutput` lists the sequences to run and how many of their uncomputed tokens each runs
(a decode runs 1, a prompt chunk up to the token budget). `ModelInput` is that list turned into
the flat batch of DESIGN.md §3, ready for the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
