"""Greedy generation with the triton backend's attention (chapter 04) matches the torch backend.

Each run goes through every attention path of the model: a first prefill chunk (contiguous K/V,
written to the paged cache), a second chunk over the cached prefix (paged prefill), then decode
steps (paged decode). On a CPU the kernels run in the Triton interpreter on a tiny model; on
CUDA (marked gpu) at Qwen3-0.6B shapes with random weights.
"""

import pytest
import torch

from mili.backends import triton_backend
from mili.checkpoint import random_model
from mili.config import Qwen3Config, preset
from mili.model.metadata import AttentionMetadata, KVCache

TINY = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)


class PagedRun:
    """Block tables for a few sequences (shuffled blocks), and the metadata of each step."""

    def __init__(self, prompt_lens, max_len, block_size, device):
        per_seq = -(-max_len // block_size)
        order = torch.randperm(per_seq * len(prompt_lens), generator=torch.Generator().manual_seed(3)).tolist()
        self.tables = [order[i * per_seq:(i + 1) * per_seq] for i in range(len(prompt_lens))]
        self.block_size, self.device = block_size, device

    def slots(self, seq, positions):
        return [self.tables[seq][p // self.block_size] * self.block_size + p % self.block_size for p in positions]


def greedy_tokens(config, backend, dtype, device, prompt_lens=(11, 4), split=6, steps=4, block_size=4):
    model = random_model(config, seed=0, dtype=dtype, device=device, backend=backend)
    cache = KVCache.for_config(config, num_blocks=len(prompt_lens) * (-(-(max(prompt_lens) + steps) // block_size)),
                               block_size=block_size, dtype=dtype, device=device)
    run = PagedRun(prompt_lens, max(prompt_lens) + steps, block_size, device)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in prompt_lens]

    def step(tokens, positions, metadata, last_rows):
        ids = torch.tensor([t for seq in tokens for t in seq], device=device)
        pos = torch.tensor([p for seq in positions for p in seq], device=device)
        hidden = model(ids, pos, metadata, cache)
        return model.compute_logits(hidden[last_rows]).argmax(-1).tolist()

    # chunk 1: the first `split` tokens of sequence 0 and all of sequence 1 (no cached prefix)
    first = [prompts[0][:split], prompts[1]]
    pos1 = [list(range(len(t))) for t in first]
    md = AttentionMetadata.prefill([len(t) for t in first], slot_mapping=run.slots(0, pos1[0]) + run.slots(1, pos1[1]),
                                   device=device)
    last = step(first, pos1, md, torch.tensor([len(first[0]) - 1, len(first[0]) + len(first[1]) - 1]))
    # chunk 2: the rest of sequence 0 over its cached prefix (paged prefill)
    rest, pos2 = prompts[0][split:], list(range(split, prompt_lens[0]))
    md = AttentionMetadata.prefill([len(rest)], context_lens=[prompt_lens[0]], slot_mapping=run.slots(0, pos2),
                                   block_tables=[run.tables[0]], device=device)
    out = [step([rest], [pos2], md, torch.tensor([len(rest) - 1]))[0], last[1]]
    generated = [[t] for t in out]
    lengths = list(prompt_lens)
    for _ in range(steps):  # decode: one token per sequence over its whole paged context
        positions = [[n] for n in lengths]
        lengths = [n + 1 for n in lengths]
        md = AttentionMetadata.decode(lengths, [run.slots(i, p)[0] for i, p in enumerate(positions)], run.tables,
                                      device=device)
        out = step([[t] for t in out], positions, md, torch.arange(len(out)))
        for seq, t in zip(generated, out):
            seq.append(t)
    return generated


def test_triton_backend_takes_the_chapter_04_kernels():
    modules = triton_backend().describe()
    assert modules["store_kvcache"].endswith("kernels.kv_store")
    assert modules["flash_attn_varlen"].endswith("kernels.flash_attn")
    assert modules["paged_decode_attention"].endswith("kernels.decode_attention")


def test_tiny_model_greedy_tokens_match_torch_backend():
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter only runs without CUDA
    expected = greedy_tokens(TINY, "torch", torch.float32, device)
    got = greedy_tokens(TINY, "triton", torch.float32, device)
    assert got == expected, f"triton backend generated {got}, torch backend {expected}"


@pytest.mark.gpu
def test_qwen3_0_6b_greedy_tokens_match_torch_backend():
    config = preset("0.6B")
    kwargs = dict(prompt_lens=(300, 45), split=200, steps=8, block_size=16)
    expected = greedy_tokens(config, "torch", torch.float32, "cuda", **kwargs)
    got = greedy_tokens(config, "triton", torch.float32, "cuda", **kwargs)
    assert got == expected, f"triton backend generated {got}, torch backend {expected}"
