"""The engine's batch-1 decode step (mili/engine/fused_step.py) and its fused kernels
(attend_new_token of mili/kernels/decode_step.py, rms_norm_linear of mili/kernels/linear.py)
give the numbers of the modules' forward with the reference kernels they replace: exactly in
Triton's interpreter, up to the order of the norm's sum of squares on a GPU.

On a CPU the kernels run in the interpreter on tiny shapes; on CUDA the same tests run on the
GPU, and (marked gpu) the step runs at Qwen3-0.6B's shapes. tests/test_engine_gpu.py holds the
engine's batch-1 greedy tokens through the fused graph against transformers.
"""

import pytest
import torch

from mili.checkpoint import random_model
from mili.config import Qwen3Config, preset
from mili.engine.fused_step import FusedDecodeStep, can_fuse
from mili.kernels.decode_step import attend_new_token
from mili.kernels.linear import linear, rms_norm_linear
from mili.model.metadata import AttentionMetadata, KVCache
from mili.model.rope import rope_cos_sin_cache
from mili.testing import assert_close
from solutions.kernels.activation import silu_and_mul
from solutions.kernels.decode_attention import paged_decode_attention
from solutions.kernels.kv_store import store_kvcache
from solutions.kernels.qk_norm_rope import qk_norm_rope
from solutions.kernels.rmsnorm import fused_add_rms_norm, rms_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU the kernels run in the interpreter
TINY = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)


def _randn(*shape, dtype, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)


def _assert_same(got, expected, dtype, what):
    """Equal in the interpreter; on a GPU the norm's sum of squares may add in another order."""
    if DEVICE == "cpu":
        assert torch.equal(got, expected), what
    else:
        assert_close(got, expected, dtype=dtype, scale=2.0, what=what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(6, 96), (5, 200)])
def test_rms_norm_linear_gives_the_norm_then_the_gemv(n, k, dtype):
    gen = torch.Generator().manual_seed(n + k)
    x, residual = _randn(1, k, dtype=dtype, gen=gen), _randn(1, k, dtype=dtype, gen=gen)
    norm_weight = (1 + _randn(k, dtype=torch.float32, gen=gen, scale=0.1)).to(dtype)
    weight = _randn(n, k, dtype=dtype, gen=gen, scale=k ** -0.5)

    y, residual_out = rms_norm_linear(x, residual, norm_weight, 1e-6, weight)
    normed, expected_residual = fused_add_rms_norm(x, residual, norm_weight, 1e-6)
    assert torch.equal(residual_out, expected_residual), "residual_out must be x + residual, rounded to x's dtype"
    _assert_same(y, linear(normed, weight), dtype, "rms_norm_linear must equal fused_add_rms_norm then linear")

    y, residual_out = rms_norm_linear(x, None, norm_weight, 1e-6, weight)
    assert residual_out is x, "without a residual the next residual is x itself (the embedding)"
    _assert_same(y, linear(rms_norm(x, norm_weight, 1e-6), weight), dtype,
                 "rms_norm_linear without a residual must equal rms_norm then linear")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(6, 96), (5, 200)])
def test_rms_norm_linear_can_end_in_silu_and_mul(n, k, dtype):
    """The MLP's gate_up with its activation: program p takes rows of both halves of [W_gate; W_up]."""
    gen = torch.Generator().manual_seed(n * k)
    x, residual = _randn(1, k, dtype=dtype, gen=gen), _randn(1, k, dtype=dtype, gen=gen)
    norm_weight = (1 + _randn(k, dtype=torch.float32, gen=gen, scale=0.1)).to(dtype)
    weight = _randn(2 * n, k, dtype=dtype, gen=gen, scale=k ** -0.5)

    y, residual_out = rms_norm_linear(x, residual, norm_weight, 1e-6, weight, output="silu_and_mul")
    normed, expected_residual = fused_add_rms_norm(x, residual, norm_weight, 1e-6)
    assert y.shape == (1, n), f"silu_and_mul halves the {2 * n} rows of gate_up, got {tuple(y.shape)}"
    assert torch.equal(residual_out, expected_residual)
    _assert_same(y, silu_and_mul(linear(normed, weight)), dtype,
                 "rms_norm_linear(output='silu_and_mul') must equal the norm, the GEMV, then silu_and_mul")


def test_rms_norm_linear_rejects_what_it_does_not_take():
    weight = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="one contiguous row"):
        rms_norm_linear(torch.randn(2, 8, device=DEVICE), None, torch.ones(8, device=DEVICE), 1e-6, weight)
    with pytest.raises(ValueError, match="features"):
        rms_norm_linear(torch.randn(1, 6, device=DEVICE), None, torch.ones(6, device=DEVICE), 1e-6, weight)
    with pytest.raises(ValueError, match="norm_weight"):
        rms_norm_linear(torch.randn(1, 8, device=DEVICE), None, torch.ones(4, device=DEVICE), 1e-6, weight)
    with pytest.raises(ValueError, match="residual"):
        rms_norm_linear(torch.randn(1, 8, device=DEVICE), torch.randn(1, 4, device=DEVICE),
                        torch.ones(8, device=DEVICE), 1e-6, weight)
    with pytest.raises(ValueError, match="even number of rows"):
        rms_norm_linear(torch.randn(1, 8, device=DEVICE), None, torch.ones(8, device=DEVICE), 1e-6,
                        torch.randn(5, 8, device=DEVICE), output="silu_and_mul")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # the interpreter's tl.dot is wrong in bfloat16
@pytest.mark.parametrize("context_len,table_width", [(1, 40), (37, 40), (150, 40), (11, 4)])
def test_attend_new_token_equals_norm_rope_then_store_then_decode_attention(context_len, table_width, dtype):
    """The three exercise kernels it replaces, in turn. Contexts of one token, of splits left
    empty, of two tiles per split, and of a single split; the new token's slot holds stale
    numbers, which the kernel must not use."""
    gen = torch.Generator().manual_seed(context_len)
    num_q_heads, num_kv_heads, head_dim, block_size = 8, 2, 16, 4
    num_blocks = table_width + 3
    qkv = _randn(1, (num_q_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, gen=gen)
    q_weight, k_weight = ((1 + _randn(head_dim, dtype=torch.float32, gen=gen, scale=0.1)).to(dtype) for _ in range(2))
    cos_sin = rope_cos_sin_cache(head_dim, 256, 10000.0).to(DEVICE)
    table = (torch.randperm(num_blocks, generator=gen)[:table_width] if table_width > 4
             else torch.tensor([5, 0, 6, 2]))[None].to(DEVICE, torch.int32)
    new = context_len - 1
    slots = (table[0, new // block_size] * block_size + new % block_size).view(1).long()
    positions, context_lens = torch.tensor([new], device=DEVICE), torch.tensor([context_len], dtype=torch.int32,
                                                                               device=DEVICE)
    cache = [_randn(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, gen=gen) for _ in range(2)]
    expected_cache = [c.clone() for c in cache]
    scale = head_dim ** -0.5

    q_end, k_end = num_q_heads * head_dim, (num_q_heads + num_kv_heads) * head_dim
    q, k = qk_norm_rope(qkv[:, :q_end].clone().view(1, num_q_heads, head_dim),
                        qkv[:, q_end:k_end].clone().view(1, num_kv_heads, head_dim),
                        q_weight, k_weight, 1e-6, positions, cos_sin)
    store_kvcache(k, qkv[:, k_end:].view(1, num_kv_heads, head_dim), *expected_cache, slots)
    expected = paged_decode_attention(q, *expected_cache, context_lens, table, softmax_scale=scale)
    got = attend_new_token(qkv, q_weight, k_weight, 1e-6, positions, cos_sin, *cache, slots, context_lens, table,
                           scale)
    assert torch.equal(cache[0], expected_cache[0]) and torch.equal(cache[1], expected_cache[1]), \
        "the new token's normalised, rotated k and its v must land in its slot, and nothing else may change"
    _assert_same(got, expected, dtype, "attend_new_token must equal qk_norm_rope, store_kvcache, then "
                 "paged_decode_attention")

    attend_new_token(qkv + 1, q_weight, k_weight, 1e-6, positions, cos_sin, *cache, torch.tensor([-1], device=DEVICE),
                     context_lens, table, scale)
    assert torch.equal(cache[0], expected_cache[0]) and torch.equal(cache[1], expected_cache[1]), \
        "slot -1 (a padding row) must store nothing"


def test_attend_new_token_rejects_what_it_does_not_take():
    qkv = torch.randn(1, 12 * 16, device=DEVICE)
    cache = torch.zeros(4, 4, 2, 16, device=DEVICE)
    args = (torch.ones(16, device=DEVICE), torch.ones(16, device=DEVICE), 1e-6, torch.tensor([0], device=DEVICE),
            rope_cos_sin_cache(16, 8, 10000.0).to(DEVICE), cache, cache.clone(), torch.tensor([0], device=DEVICE))
    one = torch.tensor([1], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="one sequence"):
        attend_new_token(qkv, *args, torch.tensor([1, 1], dtype=torch.int32, device=DEVICE),
                         torch.zeros(2, 4, dtype=torch.int32, device=DEVICE), 0.25)
    with pytest.raises(ValueError, match="power-of-two"):
        attend_new_token(torch.randn(1, 10 * 16, device=DEVICE), *args, one,
                         torch.zeros(1, 4, dtype=torch.int32, device=DEVICE), 0.25)


def test_the_fused_step_gives_the_models_decode_step():
    """A prefill of 9 tokens, then a decode step run by the model and by the fused step: the same
    hidden state and the same K/V in the cache."""
    model = random_model(TINY, seed=0, dtype=torch.float32, device=DEVICE, backend="triton")
    assert can_fuse(model)
    caches = [KVCache.for_config(TINY, 4, 8, dtype=torch.float32, device=DEVICE) for _ in range(2)]
    prompt = torch.tensor([5, 17, 3, 88, 41, 9, 60, 2, 33], device=DEVICE)
    prefill = AttentionMetadata.prefill([9], slot_mapping=list(range(8, 17)), device=DEVICE)
    decode = AttentionMetadata(is_prefill=False, max_seqlen_q=1, max_seqlen_k=10,
                               slot_mapping=torch.tensor([17], device=DEVICE),
                               context_lens=torch.tensor([10], dtype=torch.int32, device=DEVICE),
                               block_tables=torch.tensor([[1, 2, 0, 0]], dtype=torch.int32, device=DEVICE))
    token, position = torch.tensor([71], device=DEVICE), torch.tensor([9], device=DEVICE)
    outputs = []
    for cache, step in zip(caches, (model, FusedDecodeStep(model))):
        model(prompt, torch.arange(9, device=DEVICE), prefill, cache)
        outputs.append(step(token, position, decode, cache))
    exact = DEVICE == "cpu"  # a GPU may add the norm's sum of squares in another order
    for got, expected, what in ((outputs[1], outputs[0], "hidden state"), (caches[1].k, caches[0].k, "keys"),
                                (caches[1].v, caches[0].v, "values")):
        torch.testing.assert_close(got, expected, atol=0 if exact else 1e-5, rtol=0 if exact else 1e-5,
                                   msg=lambda m, what=what: f"the fused step's {what} differ from the model's: {m}")


def test_the_fused_step_can_be_switched_off_and_refuses_odd_heads(monkeypatch):
    model = random_model(TINY, seed=0, dtype=torch.float32, device=DEVICE, backend="triton")
    monkeypatch.setenv("MILI_FUSED_STEP", "0")
    assert not can_fuse(model)
    with pytest.raises(ValueError, match="MILI_FUSED_STEP"):
        FusedDecodeStep(model)
    monkeypatch.delenv("MILI_FUSED_STEP")
    odd = Qwen3Config(**{**TINY.__dict__, "num_attention_heads": 6, "num_key_value_heads": 3})
    assert not can_fuse(random_model(odd, seed=0, dtype=torch.float32, device=DEVICE, backend="triton"))
    assert not can_fuse(random_model(TINY, seed=0, dtype=torch.float32, device=DEVICE, backend="torch"))


@pytest.mark.gpu
def test_fused_step_at_qwen3_0_6b_shapes_matches_the_modules():
    config = preset("0.6B")
    model = random_model(config, seed=0, dtype=torch.bfloat16, device="cuda", backend="triton")
    caches = [KVCache.for_config(config, 64, 16, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (300,), generator=gen).cuda()
    prefill = AttentionMetadata.prefill([300], slot_mapping=list(range(16, 316)), device="cuda")
    decode = AttentionMetadata(is_prefill=False, max_seqlen_q=1, max_seqlen_k=301,
                               slot_mapping=torch.tensor([316], device="cuda"),
                               context_lens=torch.tensor([301], dtype=torch.int32, device="cuda"),
                               block_tables=torch.arange(1, 64, dtype=torch.int32, device="cuda")[None])
    outputs = []
    for cache, step in zip(caches, (model, FusedDecodeStep(model))):
        model(prompt, torch.arange(300, device="cuda"), prefill, cache)
        outputs.append(step(torch.tensor([7], device="cuda"), torch.tensor([300], device="cuda"), decode, cache))
    rel = ((outputs[1].float() - outputs[0].float()).norm() / outputs[0].float().norm()).item()
    assert rel < 1e-2, f"fused step's hidden state is {rel:.3g} away from the modules' (relative)"
