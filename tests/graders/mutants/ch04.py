"""Mutants of chapter 04's references: FlashAttention prefill, paged KV writes, paged prefill, split-K decode."""

from tests.graders.mutants import mutant

MUTANTS = [
    # 4.1 FlashAttention prefill (the kernel is shared with 4.3; these run 4.1's graders)
    mutant("4.1", "no_online_rescale", "the accumulator is not rescaled when the running maximum grows",
           "acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)",
           "acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)", "test_causal_gqa_mixed_lengths[2-2-dtype0]"),
    mutant("4.1", "mask_hides_the_diagonal", "a query does not see its own key",
           "<= offs_m[:, None] + shift)", "< offs_m[:, None] + shift)", "test_causal_gqa_mixed_lengths[2-2-dtype0]"),
    mutant("4.1", "ignores_softmax_scale", "the given softmax_scale is not used",
           "        softmax_scale * LOG2E,\n", "        q.shape[2] ** -0.5 * LOG2E,\n", "test_not_causal_and_custom_scale"),
    mutant("4.1", "causal_mask_without_shift", "the causal mask assumes Lk == Lq (no shift for a prefix)",
           "    shift = seqlen_k - seqlen_q  #", "    shift = 0 * seqlen_k  #", "test_queries_are_the_last_positions"),
    # 4.2 KV write into the paged cache
    mutant("4.2", "ignores_the_row_stride", "k rows are addressed as if k were contiguous",
           "k = tl.load(k_ptr + token.to(tl.int64) * stride_kt", "k = tl.load(k_ptr + token.to(tl.int64) * num_kv_heads * head_dim",
           "test_strided_rows_and_cast_to_cache_dtype"),
    mutant("4.2", "v_written_from_k", "v_cache receives k's values",
           "tl.store(v_cache_ptr + cache_offset, v.to(", "tl.store(v_cache_ptr + cache_offset, k.to(", "test_writes_every_token_to_its_slot[1-1-64-16-dtype0]"),
    mutant("4.2", "skips_slot_zero", "slot 0 is treated as padding (slot <= 0 instead of slot < 0)",
           "    if slot < 0:\n        return", "    if slot <= 0:\n        return", "test_writes_every_token_to_its_slot[13-2-64-16-dtype0]"),
    mutant("4.2", "slot_stride_is_head_dim", "a slot is assumed to hold one head: slot * head_dim",
           "cache_offset = slot * stride_cache_slot + h * stride_cache_h + d",
           "cache_offset = slot * head_dim + h * stride_cache_h + d", "test_writes_every_token_to_its_slot[13-2-64-16-dtype0]"),
    # 4.3 paged prefill
    mutant("4.3", "ignores_the_block_table", "key position j is read from block j // block_size, not from the table",
           "page = tl.load(block_table_ptr + seq * stride_bt + n // page_size).to(tl.int64)",
           "page = (n // page_size).to(tl.int64)", "test_new_tokens_attend_to_cached_prefix[2-2-dtype0]"),
    mutant("4.3", "prefix_not_visible", "the causal shift is dropped, so new tokens do not see the cached prefix",
           "    shift = seqlen_k - seqlen_q  #", "    shift = 0 * seqlen_k  #", "test_new_tokens_attend_to_cached_prefix[2-2-dtype0]"),
    mutant("4.3", "no_online_rescale", "the accumulator is not rescaled when the running maximum grows",
           "acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)",
           "acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)", "test_new_tokens_attend_to_cached_prefix[2-2-dtype0]"),
    # 4.4 split-K decode
    mutant("4.4", "splits_averaged", "the splits' outputs are averaged instead of weighted by their log-sum-exp",
           "weight = tl.math.exp2(lse - tl.max(lse, 0))", "weight = tl.where(ok, 1.0, 0.0)", "test_mixed_context_lengths[2-2-dtype0]"),
    mutant("4.4", "misses_the_last_token", "the query does not attend to its own (last) key",
           "hi = tl.minimum(lo + tokens_per_split, context_len)", "hi = tl.minimum(lo + tokens_per_split, context_len - 1)",
           "test_mixed_context_lengths[2-2-dtype0]"),
    mutant("4.4", "natural_exp_with_exp2", "the scale is not converted to base 2 for exp2",
           "block_tables.stride(0), page_size, scale * LOG2E,",
           "block_tables.stride(0), page_size, scale,", "test_mixed_context_lengths[2-2-dtype0]"),
]
