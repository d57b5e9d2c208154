"""The engine's attention ops (batched on a GPU, DecodeKV on the CPU) give the torch backend's
per-sequence results, across steps, re-admissions and failed steps."""

import pytest
import torch

from mili.backends import torch_ops
from mili.engine import batched_attention
from mili.engine.decode_kv import DecodeKV
from mili.model.metadata import pad_block_tables
from mili.testing import assert_close, randn

BLOCK, KV_HEADS, HEADS, DIM = 4, 2, 8, 16


def paged(name: str, lengths: list[int]):
    num_blocks = sum(-(-n // BLOCK) for n in lengths) + 3
    k_cache, v_cache = randn(num_blocks, BLOCK, KV_HEADS, DIM, name=name + "k"), randn(num_blocks, BLOCK, KV_HEADS, DIM, name=name + "v")
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(len(lengths))).tolist()
    tables, start = [], 0
    for n in lengths:
        count = -(-n // BLOCK)
        tables.append(order[start:start + count])
        start += count
    return k_cache, v_cache, pad_block_tables(tables, "cpu")


@pytest.mark.parametrize("decode", ["padded", "decode_kv"])
@pytest.mark.parametrize("lengths", [[1, 5, 13, 8, 32], [3 * i % 41 + 1 for i in range(37)]])
def test_decode_matches_the_per_sequence_loop(lengths, decode):
    k_cache, v_cache, tables = paged("decode", lengths)
    q = randn(len(lengths), HEADS, DIM)
    context = torch.tensor(lengths, dtype=torch.int32)
    op = batched_attention.paged_decode_attention if decode == "padded" else DecodeKV().paged_decode_attention
    got = op(q, k_cache, v_cache, context, tables)
    assert_close(got, torch_ops.paged_decode_attention(q, k_cache, v_cache, context, tables), what=f"{decode} decode")


def test_decode_kv_answers_in_the_querys_dtype():
    """A bfloat16 model on the CPU: the copies and matmuls are float32, the answer is q's dtype."""
    lengths = [1, 6, 11]
    k_cache, v_cache, tables = paged("bf16", lengths)
    k_cache, v_cache = k_cache.bfloat16(), v_cache.bfloat16()
    q = randn(len(lengths), HEADS, DIM).bfloat16()
    context = torch.tensor(lengths, dtype=torch.int32)
    got = DecodeKV().paged_decode_attention(q, k_cache, v_cache, context, tables)
    assert got.dtype == torch.bfloat16
    assert_close(got, torch_ops.paged_decode_attention(q, k_cache, v_cache, context, tables), dtype=torch.bfloat16,
                 what="DecodeKV on bfloat16 caches")


def _write_next_token(cache, table: list[int], position: int, name: str) -> None:
    cache[table[position // BLOCK], position % BLOCK] = randn(KV_HEADS, DIM, name=name)


def test_decode_kv_follows_sequences_across_steps():
    """Three sequences decode for 9 steps (crossing block boundaries); at step 4 sequence 'b' is
    re-admitted with new blocks and new contents; at step 6 'c' leaves the batch and 'd' joins.
    Every step must equal attention over the paged cache as it is now."""
    k_cache, v_cache, _ = paged("steps", [80])
    free = iter(torch.randperm(k_cache.shape[0], generator=torch.Generator().manual_seed(7)).tolist())
    tables = {key: [next(free) for _ in range(4)] for key in "abc"}
    lengths = {"a": 3, "b": 7, "c": 1}
    decode_kv = DecodeKV()
    for step in range(9):
        if step == 4:
            tables["b"] = [next(free) for _ in range(4)]
            for pos in range(lengths["b"] - 1):
                _write_next_token(k_cache, tables["b"], pos, f"k b {pos}")
                _write_next_token(v_cache, tables["b"], pos, f"v b {pos}")
        if step == 6:
            del lengths["c"]
            tables["d"], lengths["d"] = [next(free) for _ in range(4)], 5
        keys = list(lengths)
        for key in keys:  # this step's token: written by store_kvcache before attention runs
            _write_next_token(k_cache, tables[key], lengths[key] - 1, f"k {key} {step}")
            _write_next_token(v_cache, tables[key], lengths[key] - 1, f"v {key} {step}")
        block_tables = pad_block_tables([tables[key][:-(-lengths[key] // BLOCK)] for key in keys], "cpu")
        context = torch.tensor([lengths[key] for key in keys], dtype=torch.int32)
        q = randn(len(keys), HEADS, DIM, name=f"q {step}")
        with decode_kv.step(keys, block_tables):
            got = decode_kv.paged_decode_attention(q, k_cache, v_cache, context, block_tables)
        expected = torch_ops.paged_decode_attention(q, k_cache, v_cache, context, block_tables)
        assert_close(got, expected, what=f"DecodeKV at step {step} (rows {keys})",
                     hint="a sequence whose block table changed must be copied afresh, not extended")
        lengths = {key: n + 1 for key, n in lengths.items()}


def test_decode_kv_forgets_everything_after_a_failed_step():
    k_cache, v_cache, tables = paged("failed", [6, 9])
    context = torch.tensor([6, 9], dtype=torch.int32)
    decode_kv = DecodeKV()
    with decode_kv.step(["x", "y"], tables):
        decode_kv.paged_decode_attention(randn(2, HEADS, DIM), k_cache, v_cache, context, tables)
    with pytest.raises(RuntimeError), decode_kv.step(["x", "y"], tables):
        raise RuntimeError("a layer failed")
    k_cache[tables[0, 0], 0] += 1.0  # what a recomputed prefill may leave behind
    q = randn(2, HEADS, DIM, name="after")
    with decode_kv.step(["x", "y"], tables):
        got = decode_kv.paged_decode_attention(q, k_cache, v_cache, context, tables)
    assert_close(got, torch_ops.paged_decode_attention(q, k_cache, v_cache, context, tables),
                 what="DecodeKV after a failed step")


def test_mixed_step_maps_decode_rows_to_their_sequences():
    q_lens, k_lens = [1, 4, 1], [9, 6, 5]
    cu_q = torch.tensor([0, 1, 5, 6], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 15, 20], dtype=torch.int32)
    k, v, tables = paged("mixed", k_lens)
    q = randn(sum(q_lens), HEADS, DIM)
    decode_kv = DecodeKV()
    args = (q, k, v, cu_q, cu_k, max(q_lens), max(k_lens))
    with decode_kv.step(["first", None, "last"], tables):
        got = batched_attention.flash_attn_varlen(*args, block_table=tables, decode=decode_kv.paged_decode_attention)
    assert_close(got, torch_ops.flash_attn_varlen(*args, block_table=tables), what="mixed step with DecodeKV")
    assert decode_kv._sequences.keys() == {"first", "last"}


@pytest.mark.parametrize("paged_prefix", [False, True])
def test_varlen_prefill_matches_the_per_sequence_loop(paged_prefix):
    q_lens = [3, 1, 7, 2]
    k_lens = [5, 1, 13, 2] if paged_prefix else q_lens
    cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32)
    q = randn(sum(q_lens), HEADS, DIM)
    if paged_prefix:
        k, v, tables = paged("prefill", k_lens)
    else:
        k, v, tables = randn(sum(k_lens), KV_HEADS, DIM, name="k"), randn(sum(k_lens), KV_HEADS, DIM, name="v"), None
    args = (q, k, v, cu_q, cu_k, max(q_lens), max(k_lens))
    got = batched_attention.flash_attn_varlen(*args, block_table=tables)
    assert_close(got, torch_ops.flash_attn_varlen(*args, block_table=tables), what="batched varlen prefill")


def test_engine_backend_swaps_only_the_torch_attention():
    cpu = batched_attention.engine_backend("torch", "cpu")
    assert isinstance(batched_attention.decode_kv_of(cpu), DecodeKV)
    assert cpu.rms_norm is torch_ops.rms_norm
    gpu = batched_attention.engine_backend("torch", "cuda")
    assert gpu.paged_decode_attention is batched_attention.paged_decode_attention
    assert batched_attention.decode_kv_of(gpu) is None
    assert batched_attention.engine_backend("torch", "cpu").paged_decode_attention.__self__ is not \
        cpu.paged_decode_attention.__self__, "each engine needs its own DecodeKV"
