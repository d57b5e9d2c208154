"""The batch-1 decode step on a GPU, six kernels per layer instead of eleven.

At batch 1 the step of a small model is bound neither by bytes nor by flops but by its chain of
kernels: every kernel, however little it does, costs a launch and a few dependent trips to memory
(on an H100, taking all the small kernels out of Qwen3-0.6B's step saved a fifth of it,
benchmarks/kernel-removal-h100-qwen3-0.6b.json), and each node of a CUDA graph costs the host
time to launch. So the engine records its batch-1 graph from this forward, which runs the
model's own modules and weights with fused kernels:

    layer, as the modules run it                    here
    add + RMSNorm, qkv GEMV                         rms_norm_linear (mili/kernels/linear.py); under
                                                      tensor parallelism site_add_rms_norm, which
                                                      sums the pushed parts, then linear,
                                                      which empties the site
    q/k norm + RoPE, K/V store, decode attention    attend_new_token (mili/kernels/decode_step.py):
      and its combine                                 one kernel, and one that merges the splits
    o GEMV (+ all-reduce under tensor parallelism)  the module; under tensor parallelism
                                                      linear_to_sum, which pushes the partial sums
    add + RMSNorm, gate_up GEMV, SiLU-and-mul       rms_norm_linear(output="silu_and_mul"); under
                                                      tensor parallelism site_add_rms_norm, then
                                                      linear_silu_and_mul
    down GEMV (+ all-reduce)                        the module, or linear_to_sum as o (the last
                                                      layer's summed by the final norm)

What each fusion bought, and what was measured and left out, is in benchmarks/fused-step-ab-h100.json
and benchmarks/batch-1-fusions-ab-h100.json: SiLU in the down GEMV's input recomputes the
activation in every program (at Qwen3-8B that cost more than the kernel it saved), where in the
gate_up GEMV's output it costs nothing; attention that combines its own splits in its last program
was slower than a separate combine, and raced inside CUDA graphs; with a GPU-wide fence in every
thread it was right, and still slower (benchmarks/attention-merge-in-kernel-ab-h200/). The numbers
are those of the modules' forward up to the order of the norm's sum of squares
(tests/test_fused_step.py). Every other step (prefill, batches of two and more, the CPU) runs the
modules' forward: the exercises' code. `MILI_FUSED_STEP=0` records the modules' forward at batch 1 too.

Under tensor parallelism (one process per GPU, with the sum buffers of mili/distributed/one_shot.py)
the all-reduce kernels after the embedding and the o and down GEMVs go too: those kernels push
their parts into every rank's memory and the next norm adds them up (mili/kernels/pushed_sums.py).
The sums are the one-shot all-reduce's, bit for bit. `MILI_FUSED_ALL_REDUCE=0` keeps the
all-reduce kernels.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from mili.distributed import one_shot
from mili.kernels.decode_step import attend_new_token, takes_heads
from mili.kernels.linear import linear, linear_silu_and_mul, linear_to_sum, rms_norm_linear
from mili.kernels.pushed_sums import SumSite, embedding_to_sum, site_add_rms_norm
from mili.model.metadata import AttentionMetadata, KVCache
from mili.model.parallel import RowParallelLinear, VocabParallelEmbedding


def can_fuse(model) -> bool:
    """Whether `FusedDecodeStep` can run this model: the triton backend (on a GPU, or in Triton's
    interpreter), heads that attend_new_token takes (power-of-two counts, D/2 a power of two), and
    `MILI_FUSED_STEP` not 0."""
    config = model.config
    return (os.environ.get("MILI_FUSED_STEP", "1") != "0" and model.backend.name == "triton"
            and takes_heads(config.num_attention_heads, config.num_key_value_heads, config.head_dim))


class FusedDecodeStep:
    """hidden [1, H] = step(input_ids [1], positions [1], attn_metadata, kv_cache): the model's
    forward for one decoding sequence, with the fused kernels."""

    def __init__(self, model):
        if not can_fuse(model):
            raise ValueError("the fused decode step needs the triton backend and power-of-two head counts and "
                             "head size (and MILI_FUSED_STEP not 0)")
        self.model = model.model
        self.sum_sites = _sum_sites(self.model, model.dtype)

    @torch.inference_mode()
    def __call__(self, input_ids: Tensor, positions: Tensor, md: AttentionMetadata, kv_cache: KVCache) -> Tensor:
        if input_ids.shape != (1,) or md.is_prefill:
            raise ValueError(f"the fused decode step runs one decoding sequence, got input_ids {tuple(input_ids.shape)}")
        sites = iter(self.sum_sites or ())
        embed = self.model.embed_tokens
        if self.sum_sites:
            hidden = embedding_to_sum(input_ids, embed.weight, embed.rows.start, next(sites))
        else:
            hidden = embed(input_ids)
        residual = None
        for index, layer in enumerate(self.model.layers):
            k_cache, v_cache = kv_cache.layer(index)
            attn, mlp, norm = layer.self_attn, layer.mlp, layer.input_layernorm
            qkv, residual = _normed_linear(hidden, residual, norm, attn.qkv_proj.weight)
            o = attend_new_token(qkv, attn.q_norm.weight, attn.k_norm.weight, attn.q_norm.eps, positions,
                                 attn.rotary.cos_sin_cache, k_cache, v_cache, md.slot_mapping, md.context_lens,
                                 md.block_tables, attn.scaling)
            hidden = _row_parallel(attn.o_proj, o.view(1, -1), next(sites, None))
            norm = layer.post_attention_layernorm
            act, residual = _normed_linear(hidden, residual, norm, mlp.gate_up_proj.weight, output="silu_and_mul")
            hidden = _row_parallel(mlp.down_proj, act, next(sites, None))
        norm = self.model.norm
        if isinstance(hidden, SumSite):
            return site_add_rms_norm(hidden, residual, norm.weight, norm.eps)[0]
        return norm(hidden, residual)[0]


def _normed_linear(hidden: Tensor | SumSite, residual: Tensor | None, norm, weight: Tensor,
                   output: str = "plain") -> tuple[Tensor, Tensor]:
    """(weight · norm(hidden + residual), the new residual), output as rms_norm_linear's. A row
    pushed to a sum site is summed and normalised by one small kernel, then the GEMV reads it:
    a GEMV that summed as it read had every program read every rank's part of the row, which at
    Qwen3-32B shapes cost more than the kernel (mili/kernels/pushed_sums.py)."""
    if not isinstance(hidden, SumSite):
        return rms_norm_linear(hidden, residual, norm.weight, norm.eps, weight, output=output)
    x, residual = site_add_rms_norm(hidden, residual, norm.weight, norm.eps, empty=False)
    gemv = linear_silu_and_mul if output == "silu_and_mul" else linear
    return gemv(x, weight, empties=hidden), residual


def _row_parallel(module, x: Tensor, site: SumSite | None) -> Tensor | SumSite:
    """The module's output, or where there is a sum site the site its partial products go to."""
    return module(x) if site is None else linear_to_sum(x, module.weight, site)


def _sum_sites(model, dtype: torch.dtype) -> list[SumSite] | None:
    """The sum sites of a tensor-parallel shard's embedding and its o and down projections, in the
    order the step runs them (the last down's is summed by the final norm); None in one process,
    or where the group has no sum buffers (the CPU, MILI_ALL_REDUCE=nccl, MILI_FUSED_ALL_REDUCE=0)."""
    projections = [m for layer in model.layers for m in (layer.self_attn.o_proj, layer.mlp.down_proj)]
    embed = model.embed_tokens
    if (dtype.itemsize != 2 or not isinstance(embed, VocabParallelEmbedding) or embed.group.process_group is not None
            or not all(isinstance(m, RowParallelLinear) and m.bias is None and m.group.process_group is None
                       for m in projections)):
        return None
    return one_shot.sum_sites(embed.weight.shape[1], 1 + len(projections))
