"""The Qwen3 causal language model over one flat batch (docs/architecture.md, "The batch contract").

One class serves every use: prefill and decode, one sequence or many, any backend.
    hidden = model(input_ids [T], positions [T], attn_metadata, kv_cache) -> [T, hidden]
    logits = model.compute_logits(hidden[rows]) -> [rows, vocab] float32
Computing logits only for the rows that are sampled (the last token of each sequence) saves
a [T, vocab] matrix product during prefill.

Given a `ModelShard` (tensor parallelism, chapter 06) the model is one rank's part: `config` is
that rank's view (`ModelShard.local_config`), the vocabulary is split, and compute_logits returns
the gathered logits on rank 0 and None on the other ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mili.backends import Backend, get_backend
from mili.config import Qwen3Config
from mili.model.layers import Qwen3DecoderLayer, RMSNorm, RotaryEmbedding
from mili.model.metadata import AttentionMetadata, KVCache
from mili.model.parallel import ParallelLMHead, VocabParallelEmbedding
from mili.model.shard import ModelShard


class Qwen3Model(nn.Module):
    def __init__(self, config: Qwen3Config, ops: Backend, shard: ModelShard | None = None):
        super().__init__()
        if shard is None:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        else:
            self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, group=shard.group)
        rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, rotary, ops, shard)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)

    def forward(self, input_ids: Tensor, positions: Tensor, attn_metadata: AttentionMetadata,
                kv_cache: KVCache | None = None) -> Tensor:
        hidden_states, residual = self.embed_tokens(input_ids), None
        for index, layer in enumerate(self.layers):
            layer_cache = kv_cache.layer(index) if kv_cache is not None else None
            hidden_states, residual = layer(positions, hidden_states, residual, attn_metadata, layer_cache)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class Qwen3ForCausalLM(nn.Module):
    def __init__(self, config: Qwen3Config, backend: Backend | str = "auto", device: torch.device | str = "cpu",
                 shard: ModelShard | None = None):
        super().__init__()
        if shard is not None and shard.config != config:
            raise ValueError("the shard was planned for another config")
        self.config = config if shard is None else shard.local_config
        self.shard = shard
        self.backend = backend if isinstance(backend, Backend) else get_backend(backend, device)
        self.model = Qwen3Model(self.config, self.backend, shard)
        if shard is None:
            # cuBLAS, not the backend's one-row kernel: at 151,936 rows it already streams the weight
            # at ~2.8 TB/s on an H100, and the LM head runs outside the CUDA graph, where launching
            # an autotuned Triton kernel costs the host about 0.1 ms per step
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, group=shard.group)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(self, input_ids: Tensor, positions: Tensor, attn_metadata: AttentionMetadata,
                kv_cache: KVCache | None = None) -> Tensor:
        check_flat_inputs(input_ids, positions)
        return self.model(input_ids, positions, attn_metadata, kv_cache)

    @torch.inference_mode()
    def compute_logits(self, hidden_states: Tensor) -> Tensor | None:
        logits = self.lm_head(hidden_states)
        return None if logits is None else logits.float()

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype


def check_flat_inputs(input_ids: Tensor, positions: Tensor) -> None:
    """The batch contract's token inputs: both flat [T], of the same shape."""
    if input_ids.dim() != 1 or positions.shape != input_ids.shape:
        raise ValueError(f"input_ids and positions must both be flat [T], got {tuple(input_ids.shape)} "
                         f"and {tuple(positions.shape)}")
