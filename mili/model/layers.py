"""Qwen3's building blocks as modules (chapter 01, exercises 1.4 and 1.5).

Every op goes through `self.ops` (a `mili.backends.Backend`), so the same modules run the
plain-PyTorch ops of chapter 01 or the Triton kernels of chapters 02 and 04.
Weights are stored fused, as loaded (`mili/checkpoint.py`): `qkv_proj` = [q; k; v] rows and
`gate_up_proj` = [gate; up] rows.

Under tensor parallelism (`shard`, chapter 06) `config` is one rank's view (its heads, its
intermediate features): qkv_proj and gate_up_proj hold this rank's rows and need nothing else;
o_proj and down_proj become row-parallel (one all-reduce each). Without a shard nothing changes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mili.backends import Backend
from mili.config import Qwen3Config
from mili.exercise import exercise
from mili.model.metadata import AttentionMetadata
from mili.model.parallel import RowParallelLinear
from mili.model.rope import rope_cos_sin_cache
from mili.model.shard import ModelShard


class Linear(nn.Linear):
    """A linear layer without bias whose product is the backend's `linear` op (on the triton
    backend, a matrix-vector kernel when there is one row: a batch-1 decode step)."""

    def __init__(self, in_features: int, out_features: int, ops: Backend):
        super().__init__(in_features, out_features, bias=False)
        self.ops = ops

    def forward(self, x: Tensor) -> Tensor:
        return self.ops.linear(x, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, ops: Backend):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.ops = ops

    def forward(self, x: Tensor, residual: Tensor | None = None):
        """rms_norm(x) or, given a residual, (rms_norm(x + residual), x + residual)."""
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.fused_add_rms_norm(x, residual, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Holds the float32 cos/sin cache once; every attention layer shares this module."""

    def __init__(self, head_dim: int, max_position: int, theta: float):
        super().__init__()
        self.register_buffer("cos_sin_cache", rope_cos_sin_cache(head_dim, max_position, theta), persistent=False)


class Qwen3Attention(nn.Module):
    def __init__(self, config: Qwen3Config, rotary: RotaryEmbedding, ops: Backend, shard: ModelShard | None = None):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        self.scaling = self.head_dim ** -0.5
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, ops)
        if shard is None:
            self.o_proj = Linear(self.q_size, config.hidden_size, ops)
        else:
            self.o_proj = RowParallelLinear(shard.config.q_size, config.hidden_size, group=shard.group,
                                            cols=shard.q_columns, ops=ops)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ops)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ops)
        self.rotary = rotary
        self.ops = ops

    @exercise("1.5", "Decoder layer (attention block + pre-norm layer)")
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
        raise NotImplementedError("Exercise 1.5: see chapters/01_project_overview.ipynb, section 4")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, md: AttentionMetadata,
               kv_cache: tuple[Tensor, Tensor] | None) -> Tensor:
        """Write this step's k, v to the paged cache, then attend (prefill or decode)."""
        ops = self.ops
        if kv_cache is not None and md.slot_mapping is not None:
            ops.store_kvcache(k, v, kv_cache[0], kv_cache[1], md.slot_mapping)
        if not md.is_prefill:
            return ops.paged_decode_attention(q, kv_cache[0], kv_cache[1], md.context_lens, md.block_tables,
                                              softmax_scale=self.scaling)
        if md.block_tables is not None:  # a cached prefix or an earlier chunk: read K/V from the cache
            k, v = kv_cache
        return ops.flash_attn_varlen(q, k, v, md.cu_seqlens_q, md.cu_seqlens_k, md.max_seqlen_q, md.max_seqlen_k,
                                     causal=True, softmax_scale=self.scaling, block_table=md.block_tables)


class Qwen3MLP(nn.Module):
    def __init__(self, config: Qwen3Config, ops: Backend, shard: ModelShard | None = None):
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, ops)
        if shard is None:
            self.down_proj = Linear(config.intermediate_size, config.hidden_size, ops)
        else:
            self.down_proj = RowParallelLinear(shard.config.intermediate_size, config.hidden_size, group=shard.group,
                                               cols=shard.intermediate, ops=ops)
        self.ops = ops

    @exercise("1.4", "SwiGLU MLP")
    def forward(self, x: Tensor) -> Tensor:
        """SwiGLU feed-forward: down_proj(silu(gate) * up), where [gate | up] = gate_up_proj(x).

        x: [T, hidden] · returns [T, hidden]. gate_up_proj: hidden -> 2*intermediate (gate rows
        first, then up); down_proj: intermediate -> hidden. Apply the activation with
        self.ops.silu_and_mul (it takes [T, 2I], returns [T, I]) so chapter 02's kernel can replace it.
        """
        raise NotImplementedError("Exercise 1.4: see chapters/01_project_overview.ipynb, section 4")


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, config: Qwen3Config, rotary: RotaryEmbedding, ops: Backend, shard: ModelShard | None = None):
        super().__init__()
        self.self_attn = Qwen3Attention(config, rotary, ops, shard)
        self.mlp = Qwen3MLP(config, ops, shard)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)

    @exercise("1.5")
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
        raise NotImplementedError("Exercise 1.5: see chapters/01_project_overview.ipynb, section 4")
