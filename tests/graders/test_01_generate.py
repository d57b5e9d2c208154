"""Grader for exercise 1.7 (naive greedy generation). Oracle: Hugging Face `generate`."""

import types

import pytest
import torch

from mili.checkpoint import load_model
from mili.generate import generate_tokens
from tests.hf_oracle import hf_greedy

pytestmark = pytest.mark.exercise("1.7")


def test_greedy_tokens_match_hugging_face(tiny_checkpoint):
    folder, hf = tiny_checkpoint
    model = load_model(folder, dtype=torch.float32)
    prompt = [5, 17, 200, 3, 42, 42, 9]
    got = list(generate_tokens(model, prompt, 40))
    expected = hf_greedy(hf, prompt, 40)
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
    assert got == expected, (
        f"greedy tokens differ from transformers at new token {first}: expected {expected[:12]}..., got {got[:12]}... "
        "hint: each decode step feeds only the newest token, at position len(prompt) + step, with the KV of all "
        "earlier tokens in the cache")


def test_is_a_generator_that_stops_at_eos(tiny_checkpoint):
    folder, hf = tiny_checkpoint
    model = load_model(folder, dtype=torch.float32)
    prompt = [1, 2, 3, 4]
    expected = hf_greedy(hf, prompt, 12)
    stream = generate_tokens(model, prompt, 12, eos_token_ids={expected[5]})
    assert isinstance(stream, types.GeneratorType), "generate_tokens must yield tokens one at a time (use `yield`)"
    got = list(stream)
    cut = expected.index(expected[5]) + 1
    assert got == expected[:cut], f"expected generation to stop right after the EOS token: {expected[:cut]}, got {got}"


def test_respects_max_new_tokens_and_pick_next(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    model = load_model(folder, dtype=torch.float32)
    got = list(generate_tokens(model, [3, 1, 4], 5, pick_next=lambda logits: 7))
    assert got == [7] * 5, f"with pick_next always choosing 7 and max_new_tokens=5, expected [7]*5, got {got}"
