"""mili's Qwen3 against Hugging Face `transformers` on the same weights.

Tolerances (also in docs/architecture.md): float32 logits within 1e-4 absolute; bfloat16 logits
within 0.15 absolute of transformers run in bfloat16 (both are compared to a float32 run, and
mili must be no further from it than 1.5x transformers' own bfloat16 error); greedy tokens in
float32 identical for 32 new tokens.
"""

from __future__ import annotations

import pytest
import torch

from mili.checkpoint import load_model
from mili.generate import generate_tokens
from mili.model.metadata import AttentionMetadata
from tests.hf_oracle import hf_greedy, make_hf_checkpoint

VARIANTS = {
    "gqa1-d64-tied": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=64, tie_word_embeddings=True),
    "gqa2-d128-untied": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=128),
    "gqa4-d64-untied": dict(num_attention_heads=8, num_key_value_heads=2, head_dim=64),
    "gqa2-d64-sharded": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_shard_size="100KB"),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, make_hf_checkpoint(folder, seed=3, **VARIANTS[request.param])


def _logits(model, ids):
    hidden = model(torch.tensor(ids, device=model.device), torch.arange(len(ids), device=model.device),
                   AttentionMetadata.prefill([len(ids)], device=model.device))
    return model.compute_logits(hidden).cpu()


def test_sharded_variant_really_is_sharded(checkpoint):
    name, folder, _ = checkpoint
    if "sharded" in name:
        assert (folder / "model.safetensors.index.json").exists()
        assert len(list(folder.glob("model-*.safetensors"))) > 1


def test_float32_logits_and_greedy_tokens(checkpoint):
    _, folder, hf = checkpoint
    model = load_model(folder, dtype=torch.float32)
    ids = torch.randint(0, 320, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    diff = (_logits(model, ids) - expected).abs().max().item()
    assert diff < 1e-4, f"float32 logits differ from transformers by {diff:.3g} (tolerance 1e-4)"
    assert list(generate_tokens(model, ids[:9], 32)) == hf_greedy(hf, ids[:9], 32)


def test_bfloat16_logits(checkpoint):
    _, folder, hf = checkpoint
    ids = list(range(11, 43))
    with torch.no_grad():
        exact = hf(torch.tensor([ids])).logits[0]
        hf_bf16 = hf.to(torch.bfloat16)(torch.tensor([ids])).logits[0].float()
        hf.float()
    mine = _logits(load_model(folder, dtype=torch.bfloat16), ids)
    theirs_err = (hf_bf16 - exact).abs().max().item()
    mine_err = (mine - exact).abs().max().item()
    assert (mine - hf_bf16).abs().max().item() < 0.15
    assert mine_err <= 1.5 * theirs_err + 1e-3, (
        f"bfloat16 logits are {mine_err:.3g} from float32 truth; transformers in bfloat16 is {theirs_err:.3g}")
