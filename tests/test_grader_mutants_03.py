"""The chapter 03 graders (3.1 sampler, 3.5 persistent batch) catch the mistakes students really make.

Each mutant is the reference with one realistic bug; its grader check must fail on it (while the
reference passes the same checks in the graders themselves).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mili.engine.input_batch import InputBatch
from solutions.engine import sampler as reference_sampler
from tests.graders import test_03_input_batch as batch_grader
from tests.graders import test_03_sampler as sampler_grader

GRADER_FAILURES = (AssertionError, pytest.fail.Exception)


class RemoveWithoutCondensing(InputBatch):
    """Frees the row and forgets it, leaving a hole."""

    def remove(self, seq):
        row = self.rows.pop(seq.seq_id)
        self.seqs.pop(row)
        for array in self.row_arrays:
            array[row:len(self.seqs)] = array[row + 1:len(self.seqs) + 1]
        return None


class MovedRowNotReindexed(InputBatch):
    """Moves the last row into the hole but leaves `rows` pointing at its old place."""

    def remove(self, seq):
        hole, last = self.rows.pop(seq.seq_id), len(self.seqs) - 1
        moved = self.seqs.pop()
        if hole != last:
            for array in self.row_arrays:
                array[hole] = array[last]
            self.seqs[hole] = moved
            return last, hole
        return None


class MovesOnlyTheBlockTable(InputBatch):
    """Condenses the block table and forgets the other per-row arrays."""

    def remove(self, seq):
        hole, last = self.rows.pop(seq.seq_id), len(self.seqs) - 1
        moved = self.seqs.pop()
        if hole == last:
            return None
        self.block_tables[hole] = self.block_tables[last]
        self.num_blocks[hole] = self.num_blocks[last]
        self.seqs[hole] = moved
        self.rows[moved.seq_id] = hole
        return last, hole


class StaleBlocksInAReusedRow(InputBatch):
    """Writes a new sequence's blocks without padding the rest of its row with -1."""

    def remove(self, seq):
        moved = super().remove(seq)
        self.block_tables[len(self.seqs)] = np.arange(self.block_tables.shape[1])  # what the row held before
        return moved

    def add(self, seq, block_ids):
        left_behind = self.block_tables[len(self.seqs)].copy() if len(self.seqs) < len(self.block_tables) else None
        row = super().add(seq, block_ids)
        self.block_tables[row, len(block_ids):] = left_behind[len(block_ids):]
        return row


class TopKZeroKeptAsIs(InputBatch):
    """Copies params.top_k into the row: -1 and 0 should mean 'every token' (vocab_size)."""

    def add(self, seq, block_ids):
        row = super().add(seq, block_ids)
        self.sampling[row, -1] = seq.params.top_k
        return row


class TinyTemperatureNotGreedy(InputBatch):
    """Writes the temperature as given: a temperature below the greedy threshold must be 0."""

    def add(self, seq, block_ids):
        row = super().add(seq, block_ids)
        self.sampling[row, 0] = seq.params.temperature
        return row


class AppendOverwrites(InputBatch):
    """Writes new blocks at the start of the table instead of after the ones it has."""

    def append_blocks(self, seq, block_ids):
        row = self.rows[seq.seq_id]
        if len(block_ids) + int(self.num_blocks[row]) > self.block_tables.shape[1]:
            raise ValueError("overflow")
        self.block_tables[row, :len(block_ids)] = block_ids
        self.num_blocks[row] += len(block_ids)


class AddTakesARowWhenFull(InputBatch):
    """Checks for a free row only after writing the sequence in."""

    def add(self, seq, block_ids):
        if len(self.seqs) < self.block_tables.shape[0]:
            return super().add(seq, block_ids)
        self.seqs.append(seq)
        self.rows[seq.seq_id] = len(self.seqs) - 1
        raise ValueError("no row is free")


@pytest.mark.parametrize("mutant", [RemoveWithoutCondensing, MovedRowNotReindexed, MovesOnlyTheBlockTable,
                                     StaleBlocksInAReusedRow, TopKZeroKeptAsIs, TinyTemperatureNotGreedy, AppendOverwrites])
def test_the_persistent_batch_grader_catches(mutant):
    with pytest.raises(GRADER_FAILURES):
        for seed in range(3):
            batch_grader.check_random_joins_growths_and_departures(mutant, seed)


def test_the_persistent_batch_grader_catches_a_full_batch_that_takes_a_row():
    with pytest.raises(GRADER_FAILURES):
        batch_grader.check_bad_calls_change_nothing(AddTakesARowWhenFull)


def sample_filtering_every_row(logits, params):
    """Restricts every row to the top-k candidates, rows without filters too."""
    scaled = logits / params.temperature.clamp_min(1e-5).unsqueeze(1)
    if params.max_top_k < logits.shape[-1]:
        candidates, ids = scaled.topk(params.max_top_k, dim=-1)
        kept = reference_sampler.apply_top_k_top_p_min_p(candidates, params.top_k.clamp(max=params.max_top_k),
                                                         params.top_p, params.min_p)
        scaled = torch.full_like(scaled, float("-inf")).scatter_(1, ids, kept)
    noise = torch.empty_like(scaled).exponential_()
    return (scaled.softmax(-1) / noise).argmax(-1)


def sample_sorting_the_vocabulary(logits, params):
    """Correct draws, but filters by sorting the whole vocabulary every step."""
    scaled = logits / params.temperature.clamp_min(1e-5).unsqueeze(1)
    filtered = reference_sampler.apply_top_k_top_p_min_p(scaled, params.top_k, params.top_p, params.min_p)
    scaled = torch.where(params.filtered_rows.unsqueeze(1), filtered, scaled)
    noise = torch.empty_like(scaled).exponential_()
    return (scaled.softmax(-1) / noise).argmax(-1)


def test_the_sampler_grader_catches_filtering_rows_that_asked_for_none():
    with pytest.raises(GRADER_FAILURES):
        sampler_grader.check_unfiltered_rows_keep_every_token(sample_filtering_every_row)


def test_the_sampler_grader_catches_a_full_vocabulary_sort(monkeypatch):
    with pytest.raises(GRADER_FAILURES):
        sampler_grader.check_no_full_vocabulary_sort_when_top_k_bounds_it(sample_sorting_the_vocabulary, monkeypatch)


def sample_clamping_the_temperature_in_place(logits, params):
    """Keeps greedy rows from dividing by zero by clamping the parameters' own temperatures."""
    params.temperature.clamp_min_(1e-5)
    return reference_sampler.sample(logits, params)


def test_the_sampler_grader_catches_a_sampler_that_changes_its_parameters():
    with pytest.raises(GRADER_FAILURES):
        sampler_grader.check_parameters_untouched(sample_clamping_the_temperature_in_place)
