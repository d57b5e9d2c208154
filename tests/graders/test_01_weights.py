"""Grader for exercise 1.6 (checkpoint names -> fused parameters). Oracle: a hand-written table
and the Hugging Face model the checkpoint came from."""

import pytest
import torch

from mili.checkpoint import load_model
from mili.config import Qwen3Config
from mili.model.metadata import AttentionMetadata
from mili.model.weights import checkpoint_name_to_param, shard_rows
from mili.testing import assert_close

pytestmark = pytest.mark.exercise("1.6")

TABLE = {
    "model.layers.0.self_attn.q_proj.weight": ("model.layers.0.self_attn.qkv_proj.weight", "q"),
    "model.layers.11.self_attn.k_proj.weight": ("model.layers.11.self_attn.qkv_proj.weight", "k"),
    "model.layers.2.self_attn.v_proj.weight": ("model.layers.2.self_attn.qkv_proj.weight", "v"),
    "model.layers.3.mlp.gate_proj.weight": ("model.layers.3.mlp.gate_up_proj.weight", "gate"),
    "model.layers.3.mlp.up_proj.weight": ("model.layers.3.mlp.gate_up_proj.weight", "up"),
    "model.layers.3.mlp.down_proj.weight": ("model.layers.3.mlp.down_proj.weight", None),
    "model.layers.0.self_attn.o_proj.weight": ("model.layers.0.self_attn.o_proj.weight", None),
    "model.layers.0.self_attn.q_norm.weight": ("model.layers.0.self_attn.q_norm.weight", None),
    "model.embed_tokens.weight": ("model.embed_tokens.weight", None),
    "lm_head.weight": ("lm_head.weight", None),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_name_mapping(name):
    got = checkpoint_name_to_param(name)
    assert tuple(got) == TABLE[name], (
        f"checkpoint_name_to_param({name!r}) returned {got!r}, expected {TABLE[name]!r}. "
        "hint: q_norm is not q_proj — match '.q_proj.' as a whole component")


def test_shard_rows():
    config = Qwen3Config(vocab_size=10, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=16)
    expected = {"q": (0, 128), "k": (128, 192), "v": (192, 256), "gate": (0, 96), "up": (96, 192)}
    for shard, (start, stop) in expected.items():
        got = shard_rows(shard, config)
        assert (got.start, got.stop) == (start, stop), (
            f"shard_rows({shard!r}) gave rows [{got.start}, {got.stop}), expected [{start}, {stop}) for "
            "4 query heads and 2 kv heads of head_dim 32 (q_size 128, kv_size 64), intermediate 96")
    with pytest.raises(ValueError):
        shard_rows("o", config)


def test_loaded_model_reproduces_hugging_face(tiny_checkpoint):
    folder, hf = tiny_checkpoint
    model = load_model(folder, dtype=torch.float32)
    ids = list(range(7, 30))
    logits = model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids)), AttentionMetadata.prefill([len(ids)])))
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    assert_close(logits, expected, scale=20, what="logits after loading the checkpoint",
                 hint="each of q/k/v (gate/up) must land in its own rows of the fused weight")
