"""Reference for exercise 3.5: the persistent batch's rows."""

from __future__ import annotations

from mili.engine.sequence import Sequence


class InputBatch:
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
        if seq.seq_id in self.rows:
            raise ValueError(f"sequence {seq.seq_id} already has row {self.rows[seq.seq_id]}")
        if len(self.seqs) == self.block_tables.shape[0]:
            raise ValueError(f"all {len(self.seqs)} rows are in use")
        if len(block_ids) > self.block_tables.shape[1]:
            raise ValueError(f"{len(block_ids)} blocks do not fit a row of {self.block_tables.shape[1]}")
        row = len(self.seqs)
        self.seqs.append(seq)
        self.rows[seq.seq_id] = row
        self.block_tables[row] = -1
        self.block_tables[row, :len(block_ids)] = block_ids
        self.num_blocks[row] = len(block_ids)
        p = seq.params
        top_k = min(p.top_k, self.vocab_size) if p.top_k > 0 else self.vocab_size
        self.sampling[row] = [0.0 if p.is_greedy else p.temperature, p.top_p, p.min_p, p.repetition_penalty,
                              p.presence_penalty, p.frequency_penalty, top_k]
        self.seeded[row] = p.seed is not None
        self.uses_penalties[row] = p.uses_penalties
        return row

    def append_blocks(self, seq: Sequence, block_ids: list[int]) -> None:
        """Write block_ids after the sequence's num_blocks blocks, and count them.

        ValueError (and nothing changes) when the sequence has no row or the table would
        overflow its row."""
        if seq.seq_id not in self.rows:
            raise ValueError(f"sequence {seq.seq_id} has no row")
        row = self.rows[seq.seq_id]
        start = int(self.num_blocks[row])
        end = start + len(block_ids)
        if end > self.block_tables.shape[1]:
            raise ValueError(f"{end} blocks do not fit a row of {self.block_tables.shape[1]}")
        self.block_tables[row, start:end] = block_ids
        self.num_blocks[row] = end

    def remove(self, seq: Sequence) -> tuple[int, int] | None:
        """Free the sequence's row and keep the rows dense: the last row moves into the hole.

        Moving a row copies row `last` of every array in self.row_arrays into row `hole` and
        updates seqs and rows for the sequence that moved. Returns (last, hole) when a row moved
        (the caller moves state kept elsewhere, e.g. on the device), None when the removed row
        was the last one. ValueError when the sequence has no row.
        """
        if seq.seq_id not in self.rows:
            raise ValueError(f"sequence {seq.seq_id} has no row")
        hole = self.rows.pop(seq.seq_id)
        last = len(self.seqs) - 1
        moved = self.seqs.pop()
        if hole == last:
            return None
        for array in self.row_arrays:
            array[hole] = array[last]
        self.seqs[hole] = moved
        self.rows[moved.seq_id] = hole
        return last, hole
