"""Grader for exercise 3.4 (the engine step: batch building and finishing).

Oracle: the flat batch (docs/architecture.md, the batch contract) written out by hand for a mixed step (a fresh prompt, a
later chunk of a long prompt, decodes), over block tables fixed here.
"""

import pytest
import torch

from mili.engine.batch import ScheduledSeq
from mili.engine.model_runner import append_tokens, build_batch
from mili.engine.sampling_params import SamplingParams
from mili.engine.sequence import Request, Sequence

pytestmark = pytest.mark.exercise("3.4")

BLOCK = 4


class FixedTables:
    """Block tables set by the test; slots follow table[p // 4] * 4 + p % 4."""

    def __init__(self, tables: dict[int, list[int]]):
        self.tables = tables

    def block_table(self, seq_id):
        return list(self.tables[seq_id])

    def slot_mapping(self, seq_id, start, end):
        return [self.tables[seq_id][p // BLOCK] * BLOCK + p % BLOCK for p in range(start, end)]


def make_seq(seq_id: int, prompt: list[int], generated: list[int] = (), computed: int = 0, max_tokens=16) -> Sequence:
    request = Request(f"r{seq_id}", None, prompt, SamplingParams(max_tokens=max_tokens))
    seq = Sequence(seq_id, request, token_ids=prompt + list(generated))
    seq.num_computed_tokens = computed
    return seq


def test_mixed_step_builds_the_flat_batch():
    fresh = make_seq(0, [11, 12, 13])  # a new prompt, all 3 tokens now
    chunk = make_seq(1, list(range(20, 30)), computed=4)  # tokens 4..7 of a 10-token prompt: not done yet
    decode = make_seq(2, [40, 41, 42, 43, 44], generated=[45], computed=5)  # token 45 at position 5
    tables = FixedTables({0: [7], 1: [2, 5, 9], 2: [3, 8]})
    batch = build_batch([ScheduledSeq(fresh, 3), ScheduledSeq(chunk, 4), ScheduledSeq(decode, 1)], tables)
    md = batch.attn_metadata

    def check(name, got, expected, hint):
        got = got.tolist() if isinstance(got, torch.Tensor) else got
        assert got == expected, f"{name}: expected {expected}, got {got}. hint: {hint}"

    check("input_ids", batch.input_ids, [11, 12, 13, 24, 25, 26, 27, 45],
          "each sequence contributes token_ids[num_computed : num_computed + n]")
    check("positions", batch.positions, [0, 1, 2, 4, 5, 6, 7, 5], "positions continue from num_computed_tokens")
    assert batch.input_ids.dtype == torch.int64 and batch.positions.dtype == torch.int64, "ids and positions are int64"
    assert md.is_prefill, "a step with prompt tokens uses prefill metadata (decodes are rows of query length 1)"
    check("cu_seqlens_q", md.cu_seqlens_q, [0, 3, 7, 8], "query lengths are the scheduled token counts 3, 4, 1")
    check("cu_seqlens_k", md.cu_seqlens_k, [0, 3, 11, 17], "context lengths are num_computed + n: 3, 8, 6")
    check("slot_mapping", md.slot_mapping, [28, 29, 30, 20, 21, 22, 23, 33],
          "slot = block_table[p // block_size] * block_size + p % block_size, via block_manager.slot_mapping")
    assert md.block_tables is not None, "sequences with earlier tokens in the cache need block_tables"
    check("block_tables", md.block_tables[:, :3], [[7, -1, -1], [2, 5, 9], [3, 8, -1]], "one row per sequence")
    check("logits_indices", batch.logits_indices, [2, 7],
          "sample the last row of each sequence whose tokens are all computed; a partial chunk is not sampled")
    assert batch.sampled_seqs == [fresh, decode], "sampled_seqs lists the sampled sequences in batch order"


def test_decode_step_uses_decode_metadata():
    seqs = [make_seq(i, [1, 2, 3, 4, 5, 6][: 2 + i], generated=[9], computed=2 + i) for i in range(3)]
    tables = FixedTables({0: [4], 1: [6, 1], 2: [0, 2]})
    batch = build_batch([ScheduledSeq(s, 1) for s in seqs], tables)
    md = batch.attn_metadata
    assert not md.is_prefill, "a step where every sequence runs one token is a decode step"
    assert md.context_lens.tolist() == [3, 4, 5], f"context_lens count the new token too; got {md.context_lens.tolist()}"
    assert md.slot_mapping.tolist() == [18, 27, 8], f"slots of positions 2, 3, 4; got {md.slot_mapping.tolist()}"
    assert batch.positions.tolist() == [2, 3, 4] and batch.logits_indices.tolist() == [0, 1, 2]


def test_fresh_prompts_need_no_block_tables():
    seqs = [make_seq(0, [5, 6, 7, 8, 9]), make_seq(1, [3, 4])]
    batch = build_batch([ScheduledSeq(seqs[0], 5), ScheduledSeq(seqs[1], 2)], FixedTables({0: [1, 2], 1: [0]}))
    md = batch.attn_metadata
    assert md.is_prefill and md.block_tables is None, (
        "without cached tokens attention reads this step's keys directly: pass block_tables=None")
    assert md.cu_seqlens_k.tolist() == [0, 5, 7] and batch.logits_indices.tolist() == [4, 6]


class ScriptedDetokenizer:
    """Emits '<id>' per token, finishes on id 0, flushes '|'."""

    def __init__(self):
        self.finished, self.stop_reason, self.flushed = False, None, 0

    def add_token(self, token_id):
        if token_id == 0:
            self.finished, self.stop_reason = True, 0
            return ""
        return f"<{token_id}>"

    def flush(self):
        self.flushed += 1
        return "|"


def test_append_tokens_finishes_for_the_right_reason():
    seqs = [make_seq(0, [1, 2], max_tokens=5), make_seq(1, [1, 2], generated=[7], max_tokens=2),
            make_seq(2, [1, 2, 3], max_tokens=None), make_seq(3, [4, 4], max_tokens=8)]
    for s in seqs:
        s.detokenizer = ScriptedDetokenizer()
    finished = append_tokens(seqs, [0, 8, 9, 5], max_model_len=4)
    assert [s.token_ids[-1] for s in seqs] == [0, 8, 9, 5], "every sampled token is appended to its sequence"
    got = [(s.seq_id, reason) for s, reason in finished]
    assert got == [(0, "stop"), (1, "length"), (2, "length")], (
        f"expected seq 0 to stop (EOS), seq 1 to hit max_tokens=2, seq 2 to fill max_model_len=4 and seq 3 to go on; "
        f"got {got}")
    assert seqs[0].stop_reason == 0 and seqs[0].text == "", "a stop copies the detokenizer's stop_reason"
    assert seqs[1].text == "<8>|" and seqs[2].text == "<9>|", "a length finish adds detokenizer.flush() to the text"
    assert seqs[3].text == "<5>" and seqs[3].detokenizer.flushed == 0, "a running sequence is not flushed"
    assert all(s.status.value == "waiting" for s in seqs), "append_tokens must not change seq.status"
