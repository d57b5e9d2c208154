"""The Qwen3 model gives the same logits with the triton backend (chapter 02 kernels) as with torch.

On a CPU the kernels run in the Triton interpreter on a tiny model; on CUDA (marked gpu) at
Qwen3-0.6B shapes with random weights.
"""

import pytest
import torch

from mili.backends import triton_backend
from mili.checkpoint import random_model
from mili.config import Qwen3Config, preset
from mili.model.metadata import AttentionMetadata

TINY = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)


def logits_of(config, backend, dtype, device, seq_lens):
    model = random_model(config, seed=0, dtype=dtype, device=device, backend=backend)
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, config.vocab_size, (sum(seq_lens),), generator=g).to(device)
    positions = torch.cat([torch.arange(n) for n in seq_lens]).to(device)
    metadata = AttentionMetadata.prefill(seq_lens, device=device)
    with torch.no_grad():
        return model.compute_logits(model(input_ids, positions, metadata, kv_cache=None)).float()


def test_triton_backend_takes_the_chapter_02_kernels():
    modules = triton_backend().describe()  # the student's module, or its mirror in solutions/
    assert modules["rms_norm"].endswith("kernels.rmsnorm")
    assert modules["fused_add_rms_norm"].endswith("kernels.rmsnorm")
    assert modules["apply_rope"].endswith("kernels.rope")
    assert modules["qk_norm_rope"].endswith("kernels.qk_norm_rope")
    assert modules["silu_and_mul"].endswith("kernels.activation")


def test_tiny_model_logits_match_torch_backend():
    device = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU the kernels run in the interpreter
    expected = logits_of(TINY, "torch", torch.float32, device, [5, 3])
    got = logits_of(TINY, "triton", torch.float32, device, [5, 3])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen3_0_6b_shapes_logits_match_torch_backend(dtype):
    config = preset("0.6B")
    expected = logits_of(config, "torch", dtype, "cuda", [300, 17])
    got = logits_of(config, "triton", dtype, "cuda", [300, 17])
    rel = (got - expected).norm() / expected.norm()
    assert rel < (1e-4 if dtype == torch.float32 else 5e-2), f"relative logit error {rel:.3g} ({dtype})"
