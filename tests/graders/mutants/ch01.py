"""Mutants of chapter 01's references: the layers of Qwen3, weight loading and naive generation."""

from tests.graders.mutants import mutant

MUTANTS = [
    # 1.1 RMSNorm
    mutant("1.1", "eps_outside_the_root", "eps is added after the square root",
           "torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)", "(torch.rsqrt(x32.pow(2).mean(-1, keepdim=True)) + eps)",
           "test_rows_are_independent"),
    mutant("1.1", "one_scale_for_all_rows", "the mean square is taken over the whole tensor, not per row",
           "x32.pow(2).mean(-1, keepdim=True)", "x32.pow(2).mean()", "test_matches_hugging_face[shape1-dtype0]"),
    mutant("1.1", "forgets_the_weight", "the normalised value is not scaled by the weight",
           "return weight * normed.to(x.dtype)", "return normed.to(x.dtype)", "test_matches_hugging_face[shape0-dtype0]"),
    mutant("1.1", "variance_like_layernorm", "the mean is subtracted, as LayerNorm does",
           "x32.pow(2).mean(-1, keepdim=True)", "x32.var(-1, keepdim=True, unbiased=False)", "test_matches_hugging_face[shape0-dtype0]"),
    # 1.2 rotary embeddings
    mutant("1.2", "pairs_neighbours", "element 2i pairs with 2i+1 (GPT-J style) instead of i with i + D/2",
           "x1, x2 = x.float().chunk(2, dim=-1)", "x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]", "test_matches_hugging_face[4-2-64-dtype0]"),
    mutant("1.2", "cache_row_by_token_index", "cos/sin are read at the token's row, not at its position",
           "cos_sin_cache[positions.long()]", "cos_sin_cache[: positions.shape[0]]", "test_matches_hugging_face[4-2-64-dtype0]"),
    mutant("1.2", "rotates_backwards", "the rotation's sine has the wrong sign",
           "torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)",
           "torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)", "test_matches_hugging_face[4-2-64-dtype0]"),
    mutant("1.2", "frequency_exponent_i_not_2i", "inv_freq uses theta ** (-i / D) instead of theta ** (-2i / D)",
           "torch.arange(0, head_dim, 2, dtype=torch.int64)", "torch.arange(0, head_dim // 2, dtype=torch.int64)", "test_cos_sin_cache_matches_the_formula"),
    mutant("1.2", "angles_in_bfloat16", "the angles are computed in bfloat16, losing long positions",
           "angles = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)",
           "angles = torch.outer(torch.arange(max_position).bfloat16(), inv_freq.bfloat16()).float()", "test_cos_sin_cache_matches_the_formula"),
    # 1.3 attention
    mutant("1.3", "mask_from_the_first_key", "the causal mask ignores the cached prefix (no Tk - Tq shift)",
           "query_pos = torch.arange(tq, device=q.device).unsqueeze(1) + (tk - tq)",
           "query_pos = torch.arange(tq, device=q.device).unsqueeze(1)", "test_matches_oracle[2-2-1-7]"),
    mutant("1.3", "kv_head_by_modulo", "query head h reads kv head h % Hkv instead of h // (Hq // Hkv)",
           "kf = k.float().repeat_interleave(group, dim=1)", "kf = k.float().repeat(1, group, 1)", "test_matches_oracle[4-2-5-5]",
           ("vf = v.float().repeat_interleave(group, dim=1)", "vf = v.float().repeat(1, group, 1)")),
    mutant("1.3", "no_scale", "the scores are not multiplied by softmax_scale",
           "kf.transpose(1, 2)) * softmax_scale", "kf.transpose(1, 2))", "test_matches_oracle[2-2-5-5]"),
    mutant("1.3", "mask_hides_the_diagonal", "a query does not see its own key",
           "key_pos > query_pos", "key_pos >= query_pos", "test_matches_oracle[2-2-5-5]"),
    # 1.4 MLP
    mutant("1.4", "silu_on_up", "silu is applied to the up half instead of the gate half",
           "return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))",
           "gate, up = self.gate_up_proj(x).chunk(2, dim=-1)\n"
           "        return self.down_proj(up * __import__('torch').sigmoid(up) * gate)", "test_mlp_matches_hugging_face[dtype0]"),
    mutant("1.4", "gelu_not_silu", "GELU instead of SiLU",
           "return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))",
           "gate, up = self.gate_up_proj(x).chunk(2, dim=-1)\n"
           "        return self.down_proj(__import__('torch').nn.functional.gelu(gate) * up)", "test_mlp_matches_hugging_face[dtype0]"),
    mutant("1.4", "sigmoid_not_silu", "sigmoid(gate) * up: silu is gate * sigmoid(gate)",
           "return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))",
           "gate, up = self.gate_up_proj(x).chunk(2, dim=-1)\n"
           "        return self.down_proj(__import__('torch').sigmoid(gate) * up)", "test_mlp_matches_hugging_face[dtype0]"),
    # 1.5 decoder layer
    mutant("1.5", "no_k_norm", "q is normalised per head, k is not",
           "q, k = self.ops.qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, positions,\n"
           "                                     self.rotary.cos_sin_cache)",
           "q, k = self.ops.apply_rope(self.q_norm(q), k, positions, self.rotary.cos_sin_cache)",
           "test_model_logits_match_hugging_face"),
    mutant("1.5", "first_residual_normalised", "the first layer's residual is the normalised embeddings",
           "            residual = hidden_states\n            hidden_states = self.input_layernorm(hidden_states)",
           "            hidden_states = self.input_layernorm(hidden_states)\n            residual = hidden_states", "test_model_logits_match_hugging_face"),
    mutant("1.5", "drops_the_incoming_residual", "the previous layers' residual is not added",
           "hidden_states, residual = self.input_layernorm(hidden_states, residual)",
           "residual = hidden_states\n            hidden_states = self.input_layernorm(hidden_states)", "test_model_logits_match_hugging_face"),
    mutant("1.5", "never_writes_the_cache", "attention ignores the KV cache (nothing written, no prefix read)",
           "        o = self.attend(q, k, v, attn_metadata, kv_cache)\n",
           "        o = self.attend(q, k, v, attn_metadata, None)\n", "test_cached_prefix_gives_the_same_logits"),
    # 1.6 checkpoint names
    mutant("1.6", "k_and_v_swapped", "k_proj fills the v rows and v_proj the k rows",
           '".self_attn.k_proj.": (".self_attn.qkv_proj.", "k")', '".self_attn.k_proj.": (".self_attn.qkv_proj.", "v")',
           "test_name_mapping[model.layers.11.self_attn.k_proj.weight]", ('".self_attn.v_proj.": (".self_attn.qkv_proj.", "v")', '".self_attn.v_proj.": (".self_attn.qkv_proj.", "k")')),
    mutant("1.6", "kv_rows_sized_like_q", "the k rows are as many as the q rows (forgetting GQA)",
           '"k": (q, q + kv), "v": (q + kv, q + 2 * kv)', '"k": (q, 2 * q), "v": (2 * q, 2 * q + kv)', "test_shard_rows"),
    mutant("1.6", "gate_and_up_swapped", "up fills the first rows of gate_up_proj",
           '"gate": (0, inter), "up": (inter, 2 * inter)', '"gate": (inter, 2 * inter), "up": (0, inter)', "test_shard_rows"),
    mutant("1.6", "unknown_shard_gives_no_rows", "an unknown shard id returns an empty slice instead of raising",
           "    if shard not in rows:\n        raise ValueError(", "    if shard not in rows:\n        return slice(0, 0)\n"
           "        raise ValueError(", "test_shard_rows"),
    # 1.7 naive generation
    mutant("1.7", "decode_position_off_by_one", "the newest token is fed at position n + 1",
           "positions = torch.tensor([n], dtype=torch.int64, device=model.device)",
           "positions = torch.tensor([n + 1], dtype=torch.int64, device=model.device)", "test_greedy_tokens_match_hugging_face"),
    mutant("1.7", "context_excludes_the_new_token", "decode attends to n tokens, not n + 1",
           "AttentionMetadata.decode([n + 1], [n], [[0]], device=model.device)",
           "AttentionMetadata.decode([n], [n], [[0]], device=model.device)", "test_is_a_generator_that_stops_at_eos"),
    mutant("1.7", "stops_before_yielding_eos", "the EOS token is not yielded",
           "        yield token\n        if token in eos:\n            return",
           "        if token in eos:\n            return\n        yield token", "test_is_a_generator_that_stops_at_eos"),
    mutant("1.7", "first_row_logits", "the next token comes from the first row's logits, not the last",
           "model.compute_logits(hidden[-1:])[0]", "model.compute_logits(hidden[:1])[0]", "test_is_a_generator_that_stops_at_eos"),
]
