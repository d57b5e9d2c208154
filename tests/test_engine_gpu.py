"""On CUDA: the engine runs the offline workload (docs/architecture.md, Benchmarks) on a
Qwen3-0.6B-shaped model with random weights (bfloat16, triton backend) and records output tokens
per second in benchmarks/ — the baseline a later performance push starts from. Also checks greedy
parity with transformers on the GPU in float32, with the torch and the triton backends.
(transformers' `generate` must be given the attention mask: without it, it takes every token
equal to pad_token_id for padding.)
"""

import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]


def _random_hf_qwen3(folder):
    """A small random transformers Qwen3 (seed 0), saved to `folder` and returned on the GPU."""
    from transformers import Qwen3Config as HFConfig
    from transformers import Qwen3ForCausalLM as HFQwen3

    torch.manual_seed(0)
    config = HFConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                      tie_word_embeddings=False, initializer_range=0.1, eos_token_id=None)
    hf = HFQwen3(config).eval()
    hf.save_pretrained(folder)
    return hf.cuda()


def _hf_greedy(hf, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.no_grad():
        ids = torch.tensor([prompt], device="cuda")
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0)[0, len(prompt):].tolist()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_engine_greedy_matches_transformers_on_cuda(tmp_path, backend):
    from mili import LLM, SamplingParams

    hf = _random_hf_qwen3(tmp_path)
    llm = LLM(str(tmp_path), dtype="float32", device="cuda", backend=backend, block_size=16, num_kv_blocks=256)
    prompts = [[(7 * i + j * 13) % 512 for j in range(5 + 9 * i)] for i in range(8)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == _hf_greedy(hf, prompt, 20)


def test_engine_batch_1_greedy_matches_transformers_through_the_fused_graph(tmp_path):
    """One request at a time: every decode step replays the batch-1 graph of the fused step."""
    from mili import LLM, SamplingParams

    hf = _random_hf_qwen3(tmp_path)
    llm = LLM(str(tmp_path), dtype="float32", device="cuda", backend="triton", block_size=16, num_kv_blocks=256)
    assert llm.engine.runner.graphs is not None and llm.engine.runner.graphs.fused_batch_1
    for prompt in ([3, 1, 4, 1, 5, 9, 2, 6], [(11 * j) % 512 for j in range(150)]):
        out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                           use_tqdm=False)[0]
        assert out.outputs[0].token_ids == _hf_greedy(hf, prompt, 40)
    assert llm.engine.runner.graphs.logits_at_batch_1 and llm.engine.runner.batch_1_inputs is not None


def test_a_launched_steps_ids_come_back_through_pinned_memory():
    """The copy of the sampled ids to the host must not wait: its destination is pinned."""
    from mili.engine.batch import LaunchedStep

    step = LaunchedStep([], torch.arange(5, device="cuda") * 3)
    assert step._host.is_pinned(), "a copy into pageable memory waits for the GPU at launch"
    assert step.result() == [0, 3, 6, 9, 12]


def test_design_workload_throughput_on_qwen3_0_6b_shapes():
    from mili.bench.throughput import print_report, run_benchmark

    num_seqs = int(os.environ.get("MILI_BENCH_NUM_SEQS", "256"))
    report = run_benchmark("Qwen3-0.6B", num_seqs=num_seqs, min_len=100, max_len=1024, compare_hf=False,
                           device="cuda", dtype="bfloat16")
    print_report(report)
    out_dir = Path(os.environ.get("MILI_BENCH_DIR", ROOT / "benchmarks"))
    out_dir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name().split()[-1].lower()
    (out_dir / f"throughput-gpu-{name}.json").write_text(json.dumps(report, indent=1))
    assert report["mili"]["output_tokens"] == report["workload"]["output_tokens"]
    assert report["mili"]["tokens_per_s"] > 100


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_nothing_compiles_after_the_servers_warm_up(prefix_caching):
    """After `mili serve`'s warm-up, a mixed workload compiles no Triton kernel: a compile in the
    middle of serving stalls every request of that step for a fraction of a second or more.
    Prompts of many lengths, many sharing a prefix (cache hits of every length), a token budget
    that chunks them, and decode batches of every size, so the block table's width, the count of
    query tiles and the batch change from step to step."""
    pytest.importorskip("uvicorn")
    from mili import LLM, SamplingParams
    from mili.bench.floors import free_memory
    from mili.kernels._triton import watch_compiles
    from mili.server.cli import warm_up

    llm = LLM("Qwen3-0.6B", dtype="bfloat16", device="cuda", max_num_seqs=64, max_num_batched_tokens=1024,
              max_model_len=2048, enable_prefix_caching=prefix_caching)
    warm_up(llm)
    compiled = []
    stop = watch_compiles(compiled.append)
    try:
        shared = [(3 * j) % 1000 for j in range(700)]
        prompts = [shared[: 17 * i + 1] + [i] * (i % 37 + 1) for i in range(40)]
        prompts += [[(i * j) % 997 for j in range(i * 29 % 900 + 1)] for i in range(1, 40)]
        params = [SamplingParams(temperature=0, max_tokens=1 + i % 24, ignore_eos=True) for i in range(len(prompts))]
        llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    finally:
        stop()
        del llm
        free_memory(torch.device("cuda"))  # the KV pool takes most of the GPU; the next case needs it
    assert not compiled, (f"compiled after the warm-up: {compiled}. A step met a specialisation the warm-up did not "
                          "cover: an integer argument that changes from step to step (mark it do_not_specialize), "
                          "a pointer that is not 16-byte aligned, or a constexpr the warm-up never used")
