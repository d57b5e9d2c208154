"""Grader for exercise 3.5 (the persistent batch: rows that join, grow and leave).

Oracle: a brute-force model of the batch, a dict from sequence to (block ids, sampling row),
replayed through random joins, growths and departures. After every operation the rows in use
must be exactly 0..n-1, each row must hold its sequence's blocks (then -1) and parameters, and
`rows` must point every sequence at its row. The checks take the class under test as an argument
so that `test_03_mutants.py` can show that they catch the usual mistakes.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from mili.engine.input_batch import SAMPLING_COLUMNS, InputBatch
from mili.engine.sampling_params import SamplingParams
from mili.engine.sequence import Request, Sequence

pytestmark = pytest.mark.exercise("3.5")

VOCAB, ROWS, WIDTH = 50, 6, 5


def make_batch(impl=InputBatch) -> InputBatch:
    return impl(max_num_seqs=ROWS, max_blocks_per_seq=WIDTH, block_size=4, vocab_size=VOCAB)


def make_seq(seq_id: int, params: SamplingParams) -> Sequence:
    return Sequence(seq_id, Request(f"r{seq_id}", None, [1, 2, 3], params))


def expected_sampling(params: SamplingParams) -> list[float]:
    top_k = min(params.top_k, VOCAB) if params.top_k > 0 else VOCAB
    values = {"temperature": 0.0 if params.is_greedy else params.temperature, "top_k": top_k}
    return [values.get(name, getattr(params, name)) for name in SAMPLING_COLUMNS]


def random_params(rng: random.Random) -> SamplingParams:
    return SamplingParams(temperature=rng.choice([0.0, 1e-7, 0.7, 1.3]), top_k=rng.choice([-1, 0, 5, 80]),
                          top_p=rng.choice([1.0, 0.9]), min_p=rng.choice([0.0, 0.1]),
                          repetition_penalty=rng.choice([1.0, 1.2]), presence_penalty=rng.choice([0.0, 0.5]),
                          frequency_penalty=rng.choice([0.0, -0.3]), seed=rng.choice([None, 7]))


def check_against_oracle(batch: InputBatch, oracle: dict[int, tuple[Sequence, list[int]]], step: str) -> None:
    n = len(oracle)
    assert batch.num_rows == n, f"after {step}: {n} sequences hold rows, but the batch has {batch.num_rows} rows"
    assert sorted(batch.rows.values()) == list(range(n)), (
        f"after {step}: rows in use are {sorted(batch.rows.values())}, expected 0..{n - 1}. "
        "hint: when a row leaves, move the last row into the hole (condense)")
    assert set(batch.rows) == set(oracle), f"after {step}: rows has {sorted(batch.rows)}, expected {sorted(oracle)}"
    for seq_id, (seq, blocks) in oracle.items():
        row = batch.rows[seq_id]
        assert batch.seqs[row] is seq, (
            f"after {step}: rows says sequence {seq_id} is in row {row}, but seqs[{row}] is sequence "
            f"{batch.seqs[row].seq_id}. hint: update rows for the sequence that moved")
        table = batch.block_tables[row].tolist()
        want = blocks + [-1] * (WIDTH - len(blocks))
        assert table == want, (
            f"after {step}: row {row} (sequence {seq_id}) has block table {table}, expected {want}. "
            "hint: a row reused by a new sequence must be padded with -1 past its blocks")
        assert int(batch.num_blocks[row]) == len(blocks), (
            f"after {step}: num_blocks[{row}] is {int(batch.num_blocks[row])}, expected {len(blocks)}")
        got, want_sampling = batch.sampling[row].tolist(), expected_sampling(seq.params)
        assert np.allclose(got, want_sampling), (
            f"after {step}: sampling row {row} (sequence {seq_id}) is {dict(zip(SAMPLING_COLUMNS, got))}, expected "
            f"{dict(zip(SAMPLING_COLUMNS, want_sampling))}. hint: greedy rows get temperature 0, and top_k -1 or 0 "
            f"means all {VOCAB} tokens")
        assert bool(batch.seeded[row]) == (seq.params.seed is not None), f"after {step}: seeded[{row}] is wrong"
        assert bool(batch.uses_penalties[row]) == seq.params.uses_penalties, f"after {step}: uses_penalties[{row}]"


def check_random_joins_growths_and_departures(impl=InputBatch, seed: int = 0, operations: int = 200) -> None:
    rng = random.Random(seed)
    batch, oracle, next_id = make_batch(impl), {}, 0
    for step in range(operations):
        op = rng.choice(["add", "add", "grow", "remove"])
        if op == "add" and len(oracle) < ROWS:
            seq = make_seq(next_id, random_params(rng))
            blocks = [rng.randrange(100) for _ in range(rng.randint(0, 3))]
            row = batch.add(seq, blocks)
            assert row == len(oracle), f"add #{step}: the new sequence must get row {len(oracle)}, got {row}"
            oracle[next_id] = (seq, blocks)
            next_id += 1
            check_against_oracle(batch, oracle, f"add of sequence {seq.seq_id} (operation {step})")
        elif op == "grow" and oracle:
            seq_id = rng.choice(sorted(oracle))
            seq, blocks = oracle[seq_id]
            more = [rng.randrange(100) for _ in range(rng.randint(1, WIDTH - len(blocks)))] if len(blocks) < WIDTH else []
            if more:
                batch.append_blocks(seq, more)
                blocks.extend(more)
                check_against_oracle(batch, oracle, f"append_blocks of {more} to sequence {seq_id} (operation {step})")
        elif op == "remove" and oracle:
            seq_id = rng.choice(sorted(oracle))
            hole, last = batch.rows[seq_id], len(oracle) - 1
            moved = batch.remove(oracle.pop(seq_id)[0])
            want = None if hole == last else (last, hole)
            assert moved == want, (
                f"remove of sequence {seq_id} from row {hole} of {last + 1}: expected {want} (which row moved where), "
                f"got {moved}")
            check_against_oracle(batch, oracle, f"remove of sequence {seq_id} (operation {step})")


def check_bad_calls_change_nothing(impl=InputBatch) -> None:
    batch = make_batch(impl)
    seqs = [make_seq(i, SamplingParams()) for i in range(ROWS + 1)]
    for seq in seqs[:ROWS]:
        batch.add(seq, [seq.seq_id])
    snapshot = batch.block_tables.copy(), dict(batch.rows)
    for call, why in [(lambda: batch.add(seqs[ROWS], [1]), "no row is free"),
                      (lambda: batch.add(seqs[0], [1]), "the sequence already has a row"),
                      (lambda: batch.append_blocks(seqs[1], list(range(WIDTH))), "the table would overflow its row"),
                      (lambda: batch.append_blocks(seqs[ROWS], [1]), "the sequence has no row"),
                      (lambda: batch.remove(seqs[ROWS]), "the sequence has no row")]:
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"expected ValueError when {why}")
        assert (batch.block_tables == snapshot[0]).all() and batch.rows == snapshot[1], (
            f"a call that raised ({why}) must leave the batch as it was")
    too_long = make_seq(99, SamplingParams())
    batch.remove(seqs[0])
    with pytest.raises(ValueError):
        batch.add(too_long, list(range(WIDTH + 1)))
    assert 99 not in batch.rows and batch.num_rows == ROWS - 1, "a rejected add must not take a row"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_joins_growths_and_departures_match_the_oracle(seed):
    check_random_joins_growths_and_departures(InputBatch, seed)


def test_bad_calls_raise_and_change_nothing():
    check_bad_calls_change_nothing(InputBatch)
