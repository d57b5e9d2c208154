"""Graders for exercises 1.4 (SwiGLU MLP) and 1.5 (decoder layer). Oracle: Hugging Face's Qwen3."""

import pytest
import torch
from transformers import Qwen3Config as HFConfig
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP as HFMLP

from mili.backends import torch_backend
from mili.checkpoint import load_model
from mili.config import Qwen3Config
from mili.model.layers import Qwen3MLP
from mili.model.metadata import AttentionMetadata, KVCache
from mili.testing import assert_close, randn


@pytest.mark.exercise("1.4")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlp_matches_hugging_face(dtype):
    hf = HFMLP(HFConfig(hidden_size=48, intermediate_size=80)).eval()
    config = Qwen3Config(vocab_size=8, hidden_size=48, intermediate_size=80, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=24, max_position_embeddings=8)
    mlp = Qwen3MLP(config, torch_backend())
    with torch.no_grad():
        mlp.gate_up_proj.weight.copy_(torch.cat([hf.gate_proj.weight, hf.up_proj.weight]))
        mlp.down_proj.weight.copy_(hf.down_proj.weight)
    x = randn(5, 48)
    with torch.no_grad():
        expected = hf.to(dtype)(x.to(dtype))
        got = mlp.to(dtype)(x.to(dtype))
    assert_close(got, expected, dtype=dtype, scale=2, what="Qwen3MLP.forward",
                 hint="silu is applied to the gate half (the first intermediate_size columns) only: down(silu(gate) * up)")


def _prefill(model, ids):
    n = len(ids)
    hidden = model(torch.tensor(ids), torch.arange(n), AttentionMetadata.prefill([n]))
    return model.compute_logits(hidden)


@pytest.mark.exercise("1.5")
def test_model_logits_match_hugging_face(tiny_checkpoint):
    folder, hf = tiny_checkpoint
    model = load_model(folder, dtype=torch.float32)
    ids = torch.randint(0, 320, (24,), generator=torch.Generator().manual_seed(5)).tolist()
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    assert_close(_prefill(model, ids), expected, dtype=torch.float32, scale=20, what="logits of a 24-token prompt",
                 hint="pre-norm: normalise *before* attention and MLP, add the residual after; q/k norm per head "
                      "*before* RoPE; the first layer starts with residual = the embeddings")


@pytest.mark.exercise("1.5")
def test_batch_of_sequences_is_independent(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    model = load_model(folder, dtype=torch.float32)
    a, b = list(range(3, 13)), list(range(40, 47))
    batch = model(torch.tensor(a + b), torch.tensor(list(range(10)) + list(range(7))), AttentionMetadata.prefill([10, 7]))
    logits = model.compute_logits(batch)
    assert_close(logits[10:], _prefill(model, b), scale=20, what="logits of the 2nd sequence in a batch of two",
                 hint="use the given positions and attention metadata; never mix tokens of different sequences")


@pytest.mark.exercise("1.5")
def test_cached_prefix_gives_the_same_logits(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    model = load_model(folder, dtype=torch.float32)
    ids = list(range(100, 118))
    cache = KVCache.for_config(model.config, num_blocks=4, block_size=8, dtype=torch.float32, device="cpu")
    table = [[2, 0, 3]]  # deliberately out of order: slots come from the block table
    slots = [table[0][i // 8] * 8 + i % 8 for i in range(18)]
    model(torch.tensor(ids[:11]), torch.arange(11), AttentionMetadata.prefill([11], slot_mapping=slots[:11]), cache)
    rest = model(torch.tensor(ids[11:]), torch.arange(11, 18),
                 AttentionMetadata.prefill([7], context_lens=[18], slot_mapping=slots[11:], block_tables=table), cache)
    assert_close(model.compute_logits(rest), _prefill(model, ids)[11:], scale=20,
                 what="logits of tokens 11..17 computed over a cached prefix of 11",
                 hint="k and v must be written to the cache (self.attend does it) after q/k norm and RoPE")
