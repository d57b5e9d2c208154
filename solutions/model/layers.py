"""Reference for exercises 1.4 and 1.5 (mirrors mili/model/layers.py).

Each class holds only the exercise methods; `mili.exercise` installs them on mili's classes.
"""

from __future__ import annotations

from torch import Tensor

from mili.model.metadata import AttentionMetadata


class Qwen3Attention:
    def forward(self, positions: Tensor, hidden_states: Tensor, attn_metadata: AttentionMetadata,
                kv_cache: tuple[Tensor, Tensor] | None) -> Tensor:
        """Self-attention of Qwen3 for a flat batch of tokens.

        positions: [T] · hidden_states: [T, hidden] · kv_cache: this layer's (k_cache, v_cache),
        each [num_blocks, block_size, Hkv, D], or None · returns [T, hidden].
        1. qkv = self.qkv_proj(hidden_states), split into q [T, Hq*D], k, v [T, Hkv*D]; view as heads.
        2. q/k norm: RMSNorm over head_dim of every q head (self.q_norm) and k head (self.k_norm).
        3. RoPE: self.ops.apply_rope(q, k, positions, self.rotary.cos_sin_cache) (use its return values).
           Steps 2 and 3 in one launch (what the reference does, for speed): self.ops.qk_norm_rope(q, k,
           self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, positions, self.rotary.cos_sin_cache).
        4. o = self.attend(q, k, v, attn_metadata, kv_cache) -> [T, Hq, D] (provided: writes the cache, runs attention).
        5. return self.o_proj(o flattened to [T, Hq*D]).
        """
        tokens = hidden_states.shape[0]
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        q, k = self.ops.qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, positions,
                                     self.rotary.cos_sin_cache)
        o = self.attend(q, k, v, attn_metadata, kv_cache)
        return self.o_proj(o.reshape(tokens, self.q_size))


class Qwen3MLP:
    def forward(self, x: Tensor) -> Tensor:
        """SwiGLU feed-forward: down_proj(silu(gate) * up), where [gate | up] = gate_up_proj(x).

        x: [T, hidden] · returns [T, hidden]. gate_up_proj: hidden -> 2*intermediate (gate rows
        first, then up); down_proj: intermediate -> hidden. Apply the activation with
        self.ops.silu_and_mul (it takes [T, 2I], returns [T, I]) so chapter 02's kernel can replace it.
        """
        return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))


class Qwen3DecoderLayer:
    def forward(self, positions: Tensor, hidden_states: Tensor, residual: Tensor | None,
                attn_metadata: AttentionMetadata, kv_cache: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """One pre-norm transformer block, with the residual stream carried separately.

        hidden_states: [T, hidden], the previous layer's output (its MLP output, not yet added);
        residual: [T, hidden], the running sum before it — or None for the first layer, whose
        hidden_states are the embeddings. Returns (mlp_output, residual) for the next layer:
            residual = hidden_states (+ residual);  h = self_attn(input_layernorm(residual))
            residual = h + residual;                h = mlp(post_attention_layernorm(residual))
        Use the norms' fused form `norm(x, residual) -> (normed, x + residual)` where a residual
        exists, so chapter 02's fused add+RMSNorm kernel can replace it.
        """
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, attn_metadata, kv_cache)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual
