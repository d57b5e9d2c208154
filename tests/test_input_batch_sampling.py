"""The persistent batch's sampling tensors: reused while the rows keep their parameters, rebuilt
as soon as they change, and never changed by the per-step state (seeds, penalty counts)."""

import numpy as np
import torch

from mili.engine.sampling_batch import make_generator
from mili.engine.sampling_params import SamplingParams
from tests.graders.test_03_input_batch import VOCAB, make_batch, make_seq


def _tensors(batch, seqs):
    rows = np.array([batch.rows[s.seq_id] for s in seqs], dtype=np.int64)
    return batch.sampling_tensors(rows, seqs, torch.from_numpy(rows))


def test_sampling_tensors_follow_the_rows_parameters_from_step_to_step():
    batch = make_batch()
    greedy = make_seq(1, SamplingParams(temperature=0.0))
    batch.add(greedy, [0])
    first = _tensors(batch, [greedy])
    assert first.all_greedy
    assert _tensors(batch, [greedy]) is first, "a step whose rows keep their parameters reuses the last tensors"

    sampled = make_seq(2, SamplingParams(temperature=0.8, top_k=5))
    batch.add(sampled, [1])
    both = _tensors(batch, [greedy, sampled])
    assert not both.all_greedy and both.needs_filtering and both.max_top_k == 5
    assert torch.equal(both.temperature, torch.tensor([0.0, 0.8])) and both.top_k.tolist() == [VOCAB, 5]

    batch.remove(greedy)  # the sampled row moves into row 0: same rows, other parameters
    alone = _tensors(batch, [sampled])
    assert not alone.all_greedy and alone.top_k.tolist() == [5]


def test_per_step_state_never_sticks_to_the_reused_tensors():
    batch = make_batch()
    seeded = make_seq(1, SamplingParams(temperature=0.7, seed=5))
    batch.add(seeded, [0])
    seeded.generator = make_generator(5, "cpu")
    assert _tensors(batch, [seeded]).generators == [seeded.generator]
    batch.remove(seeded)
    plain = make_seq(2, SamplingParams(temperature=0.7))  # the same parameters, so the same tensors
    batch.add(plain, [1])
    again = _tensors(batch, [plain])
    assert again.generators is None, "an unseeded row must not inherit an earlier step's generator"
