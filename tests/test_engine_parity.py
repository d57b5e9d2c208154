"""The engine against transformers (issue 6, done-when): greedy outputs of 32 mixed requests run
together, in float32 on the CPU, equal transformers' greedy generation of each prompt alone —
with a large KV pool, a pool so small that preemption happens, prefix caching over a shared
system prompt, and chunked prefill under a small token budget. Afterwards every KV block is free
or held only by the prefix cache.
"""

import random

import pytest
import torch
from transformers import Qwen3Config as HFConfig
from transformers import Qwen3ForCausalLM as HFQwen3

from mili import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 512



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = HFConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      tie_word_embeddings=False, initializer_range=0.1, eos_token_id=None, bos_token_id=None)
    model = HFQwen3(config).eval()
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    model.save_pretrained(folder)
    return folder, model


_HF_CACHE: dict = {}


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    key = (tuple(prompt), max_new_tokens)
    if key not in _HF_CACHE:
        # transformers' forward with its own KV cache, argmax each step (what generate(do_sample=False)
        # does, without generate's per-call set-up, which dominates on a model this small)
        tokens, past, inputs = [], None, torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(max_new_tokens):
                out = model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tokens.append(int(out.logits[0, -1].argmax()))
                inputs = torch.tensor([[tokens[-1]]])
        _HF_CACHE[key] = tokens
    return _HF_CACHE[key]


def mixed_workload(seed: int, n: int = 32, prefix: list[int] = ()) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    work = []
    for i in range(n):
        suffix = [(7 * i + 1) % VOCAB] + [rng.randrange(VOCAB) for _ in range(rng.randint(0, 40))]
        work.append((list(prefix) + suffix, rng.randint(1, 24)))
    return work


def run_and_compare(llm: LLM, hf_model, work) -> list:
    prompts = [{"prompt_token_ids": p} for p, _ in work]
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for _, m in work]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for i, ((prompt, max_tokens), out) in enumerate(zip(work, outputs)):
        expected = hf_greedy(hf_model, prompt, max_tokens)
        got = out.outputs[0].token_ids
        assert got == expected, f"request {i} (prompt {len(prompt)} tokens): mili {got} != transformers {expected}"
        assert out.outputs[0].finish_reason == "length" and out.finished
    assert_all_blocks_released(llm)
    return outputs


def assert_all_blocks_released(llm: LLM) -> None:
    bm = llm.engine.block_manager
    stats = bm.stats
    assert stats.used_blocks == stats.cached_blocks, f"blocks still held by sequences: {stats}"
    assert bm.num_free_blocks + stats.cached_blocks == bm.num_blocks, f"blocks leaked: {stats}"
    assert not llm.engine.has_unfinished_requests()


def test_reference_loop_is_transformers_generate(checkpoint):
    _, hf_model = checkpoint
    prompt = mixed_workload(1)[0][0]
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert hf_greedy(hf_model, prompt, 12) == out[0, len(prompt):].tolist()


def test_32_mixed_requests_match_transformers_with_a_large_pool(checkpoint):
    folder, hf_model = checkpoint
    llm = LLM(str(folder), dtype="float32", device="cpu", block_size=4, num_kv_blocks=2048, max_num_seqs=64)
    run_and_compare(llm, hf_model, mixed_workload(1))
    assert llm.stats()["preemptions"] == 0


def test_tiny_pool_preempts_and_still_matches(checkpoint):
    folder, hf_model = checkpoint
    llm = LLM(str(folder), dtype="float32", device="cpu", block_size=4, num_kv_blocks=40, max_num_seqs=32,
              max_model_len=160, enable_prefix_caching=False)
    run_and_compare(llm, hf_model, mixed_workload(1))
    stats = llm.stats()
    assert stats["preemptions"] > 0, f"a 40-block pool must force preemption: {stats}"
    assert llm.engine.block_manager.num_free_blocks == 40


def test_prefix_caching_with_a_shared_system_prompt(checkpoint):
    folder, hf_model = checkpoint
    block = 4
    system = [random.Random(3).randrange(VOCAB) for _ in range(37)]
    work = mixed_workload(3, prefix=system)
    llm = LLM(str(folder), dtype="float32", device="cpu", block_size=block, num_kv_blocks=1024, max_num_seqs=64)
    first = run_and_compare(llm, hf_model, work[:1])[0]
    assert first.num_cached_tokens == 0
    rest = run_and_compare(llm, hf_model, work[1:])
    full_blocks = len(system) // block * block
    cached = [o.num_cached_tokens for o in rest]
    assert cached == [full_blocks] * len(rest), f"every later request reuses {full_blocks} cached tokens, got {cached}"
    assert llm.stats()["prefix_cache_hit_rate"] > 0.4


def test_chunked_prefill_under_a_small_budget(checkpoint):
    folder, hf_model = checkpoint
    llm = LLM(str(folder), dtype="float32", device="cpu", block_size=8, num_kv_blocks=512, max_num_seqs=8,
              max_num_batched_tokens=16)
    llm.engine.trace = []
    run_and_compare(llm, hf_model, mixed_workload(1))
    chunks = [t for t in llm.engine.trace if t[3] == "prefill"]
    assert max(t[4] for t in chunks) <= 16
    split = {t[1] for t in chunks if t[4] < 16} & {r for r, n in _count(chunks).items() if n > 1}
    assert split, "some prompts must have been prefilled in several chunks"


def _count(chunks) -> dict:
    counts: dict = {}
    for t in chunks:
        counts[t[1]] = counts.get(t[1], 0) + 1
    return counts
