"""The persistent batch (chapter 03, exercise 3.5): the running sequences' rows, kept across steps.

Most of a step's inputs do not change from one step to the next: a decoding sequence keeps its
block table (it gains a block every `block_size` tokens), its sampling parameters never change.
Rebuilding them from Python lists every step, and copying each list to the GPU with a blocking
`torch.tensor(list)`, is what made the engine host-bound. So, like vLLM's `InputBatch`, the
engine keeps one row per running sequence in preallocated arrays and changes only what changed:

- a sequence joins (`add`): its block table and sampling parameters are written into a free row;
- it grows (`append_blocks`): the blocks the block manager added are written after its others;
- it leaves (`remove`): the last row moves into its place, so rows 0..n-1 stay dense ("condense").

The arrays live on the host (numpy, first axis = row); a step gathers the rows it needs with
array indexing and sends them to the device in one non-blocking copy (`model_runner.py`).
Sampling state that must stay on the device (the penalty counts) follows the rows there.

    batch = InputBatch(max_num_seqs=256, max_blocks_per_seq=64, block_size=16, vocab_size=V, device=dev)
    batch.sync(scheduled, block_manager)  # rows join, grow and leave to match this step's sequences
    batch.block_tables[batch.rows[seq.seq_id], :batch.num_blocks[row]]  # seq's block table
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
import torch

from mili.engine.batch import ScheduledSeq
from mili.engine.sampling_batch import FLOAT_COLUMNS, SamplingTensors, token_counts
from mili.engine.sequence import Sequence, SequenceStatus
from mili.exercise import exercise

SAMPLING_COLUMNS = (*FLOAT_COLUMNS, "top_k")  # the columns of `InputBatch.sampling`, in order


class InputBatch:
    """Rows of the running sequences: block tables and sampling parameters, dense in rows 0..n-1.

    seqs: the sequence of each row, len(seqs) == number of rows in use.
    rows: seq_id -> its row.
    block_tables: [max_num_seqs, max_blocks_per_seq] int32, -1 after a row's blocks.
    num_blocks: [max_num_seqs] int32, how many blocks of a row's table are set.
    sampling: [max_num_seqs, 7] float32, one column per SAMPLING_COLUMNS entry (temperature 0 for
        greedy rows, top_k = vocab_size when the request keeps every token).
    seeded, uses_penalties: [max_num_seqs] bool.
    admitted_after: [max_num_seqs] int64, the sequence's num_preemptions when its row was written.
    row_arrays: every per-row array above: moving a row moves row r of each.
    """

    def __init__(self, *, max_num_seqs: int, max_blocks_per_seq: int, block_size: int, vocab_size: int,
                 device: torch.device | str = "cpu"):
        self.max_num_seqs, self.block_size, self.vocab_size = max_num_seqs, block_size, vocab_size
        self.device = torch.device(device)
        self.seqs: list[Sequence] = []
        self.rows: dict[int, int] = {}
        self.block_tables = np.full((max_num_seqs, max_blocks_per_seq), -1, dtype=np.int32)
        self.num_blocks = np.zeros(max_num_seqs, dtype=np.int32)
        self.sampling = np.zeros((max_num_seqs, len(SAMPLING_COLUMNS)), dtype=np.float32)
        self.seeded = np.zeros(max_num_seqs, dtype=bool)
        self.uses_penalties = np.zeros(max_num_seqs, dtype=bool)
        self.admitted_after = np.zeros(max_num_seqs, dtype=np.int64)  # the row's seq.num_preemptions when it joined
        self.row_arrays = [self.block_tables, self.num_blocks, self.sampling, self.seeded, self.uses_penalties,
                           self.admitted_after]
        self._prompt_mask: torch.Tensor | None = None  # [max_num_seqs, V] bool on the device, once needed
        self._output_counts: torch.Tensor | None = None  # [max_num_seqs, V] int32 on the device, once needed
        self._last_sampling: tuple[bytes, SamplingTensors] | None = None  # (parameter rows, their tensors)

    @property
    def num_rows(self) -> int:
        return len(self.seqs)

    # ------------------------------------------------------------------ exercise 3.5

    @exercise("3.5", "Persistent batch: rows that join, grow and leave")
    def add(self, seq: Sequence, block_ids: list[int]) -> int:
        """Give a sequence the first free row (row n when n rows are in use); returns the row.

        Writes seqs, rows, its block table (block_ids then -1 to the end of the row), num_blocks,
        and its sampling parameters: each column of SAMPLING_COLUMNS from seq.params, except
        temperature (0.0 when params.is_greedy) and top_k (self.vocab_size when params.top_k is
        -1 or 0, else min(top_k, vocab_size)); seeded (params.seed is not None) and
        uses_penalties (params.uses_penalties).
        ValueError (and nothing changes) when the sequence already has a row, no row is free, or
        block_ids is longer than a row of block_tables.
        """
        raise NotImplementedError("Exercise 3.5: see chapters/03_python_integration.ipynb, section 7")

    @exercise("3.5", "Persistent batch: rows that join, grow and leave")
    def append_blocks(self, seq: Sequence, block_ids: list[int]) -> None:
        """Write block_ids after the sequence's num_blocks blocks, and count them.

        ValueError (and nothing changes) when the sequence has no row or the table would
        overflow its row."""
        raise NotImplementedError("Exercise 3.5: see chapters/03_python_integration.ipynb, section 7")

    @exercise("3.5", "Persistent batch: rows that join, grow and leave")
    def remove(self, seq: Sequence) -> tuple[int, int] | None:
        """Free the sequence's row and keep the rows dense: the last row moves into the hole.

        Moving a row copies row `last` of every array in self.row_arrays into row `hole` and
        updates seqs and rows for the sequence that moved. Returns (last, hole) when a row moved
        (the caller moves state kept elsewhere, e.g. on the device), None when the removed row
        was the last one. ValueError when the sequence has no row.
        """
        raise NotImplementedError("Exercise 3.5: see chapters/03_python_integration.ipynb, section 7")

    # ------------------------------------------------------------------ keeping the rows in step

    def sync(self, scheduled: Iterable[ScheduledSeq], block_manager) -> None:
        """Match the rows to this step: sequences that stopped running leave, scheduled sequences
        without a row join, and rows whose sequence gained blocks get them. A sequence preempted
        and admitted again since its row was written has a new block table: it joins afresh."""
        for row, seq in reversed(list(enumerate(self.seqs))):
            if seq.status is not SequenceStatus.RUNNING or seq.num_preemptions != self.admitted_after[row]:
                self._remove(seq)
        for item in scheduled:
            self.ensure_row(item.seq, block_manager)

    def ensure_row(self, seq: Sequence, block_manager) -> int:
        """The sequence's row, after writing any blocks it gained (or the row it joins with)."""
        row = self.rows.get(seq.seq_id)
        if row is None:
            row = self.add(seq, block_manager.block_table(seq.seq_id))
            self.admitted_after[row] = seq.num_preemptions
            if self.uses_penalties[row]:
                self._start_penalties(row, seq)
            return row
        needed = math.ceil(block_manager.num_tokens(seq.seq_id) / self.block_size)
        have = int(self.num_blocks[row])
        if needed > have:  # once every block_size tokens: the table copy is amortised
            self.append_blocks(seq, block_manager.block_table(seq.seq_id)[have:])
        return row

    def _remove(self, seq: Sequence) -> None:
        moved = self.remove(seq)
        if moved is not None and self._output_counts is not None:
            last, hole = moved
            self._prompt_mask[hole] = self._prompt_mask[last]
            self._output_counts[hole] = self._output_counts[last]

    # ------------------------------------------------------------------ sampling state

    def sampling_tensors(self, rows: np.ndarray, seqs: list[Sequence], rows_on_device: torch.Tensor) -> SamplingTensors:
        """The sampler's view of rows (host indices, and the same on the device) of sequences seqs.

        A step whose rows hold the same parameters as the last step's (most decode steps) reuses
        the last step's tensors: packing them is a dozen small ops, a sizeable part of a batch-1
        step's host time. The cache is keyed by the parameters themselves, so it cannot go stale."""
        table = self.sampling[rows]
        key = table.tobytes()
        if self._last_sampling is None or self._last_sampling[0] != key:
            self._last_sampling = key, SamplingTensors.from_columns(torch.from_numpy(table), self.vocab_size, self.device)
        tensors = self._last_sampling[1]
        seeded, penalised = self.seeded[rows].any(), self.uses_penalties[rows].any()
        if not (seeded or penalised):
            return tensors
        per_step = {"generators": [s.generator for s in seqs]} if seeded else {}
        if penalised:
            per_step.update(prompt_mask=self._prompt_mask[rows_on_device], output_counts=self._output_counts[rows_on_device])
        return dataclasses.replace(tensors, **per_step)

    @property
    def has_device_state(self) -> bool:
        """Some request used penalties: their counts live on the device, indexed by row."""
        return self._output_counts is not None

    def count_sampled(self, rows_on_device: torch.Tensor, token_ids: torch.Tensor) -> None:
        """After sampling: each row's new token counts towards its frequency/presence penalties."""
        if self._output_counts is not None:
            self._output_counts.index_put_((rows_on_device, token_ids), torch.ones_like(token_ids, dtype=torch.int32),
                                           accumulate=True)

    def _start_penalties(self, row: int, seq: Sequence) -> None:
        if self._output_counts is None:
            shape = (self.max_num_seqs, self.vocab_size)
            self._prompt_mask = torch.zeros(shape, dtype=torch.bool, device=self.device)
            self._output_counts = torch.zeros(shape, dtype=torch.int32, device=self.device)
        prompt, output = seq.token_ids[:seq.num_prompt_tokens], seq.output_token_ids
        self._prompt_mask[row] = token_counts([prompt], self.vocab_size, self.device)[0] > 0
        self._output_counts[row] = token_counts([output], self.vocab_size, self.device)[0]
