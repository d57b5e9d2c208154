"""Small random Qwen3 checkpoints made by Hugging Face `transformers`: the correctness oracle.

Norm weights are perturbed away from 1 so that a norm applied to the wrong tensor shows up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mili.exercise import repo_root

TINY_MODEL = repo_root() / "data" / "mili-tiny-qwen3"

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rope_theta=10000.0,
            tie_word_embeddings=False, rms_norm_eps=1e-6)


def make_hf_checkpoint(folder: Path, seed: int = 0, max_shard_size: str | None = None, **overrides):
    """Save a random Qwen3ForCausalLM (float32) to `folder`; returns the transformers model."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(**{**TINY, **overrides})
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return model


def copy_tiny_tokenizer(folder: Path) -> None:
    """Put the tiny model's tokenizer files beside a checkpoint, so it reads like a published folder."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_MODEL / name, folder / name)


def make_checkpoint_with_tokenizer(folder: Path, **overrides):
    """A random checkpoint whose vocabulary covers the tiny model's tokenizer, with that tokenizer
    beside it: any Hugging Face folder must work. Returns the transformers model."""
    vocab = json.loads((TINY_MODEL / "tokenizer.json").read_text())
    size = len(vocab["model"]["vocab"]) + len(vocab["added_tokens"])
    model = make_hf_checkpoint(folder, vocab_size=size + 3, **overrides)
    copy_tiny_tokenizer(folder)
    return model


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0, min_new_tokens=max_new_tokens)
    return out[0, len(prompt):].tolist()
