"""Decode steps replayed from CUDA graphs (docs/architecture.md, Engine): which batch sizes are
recorded, when the engine records at all, and (on CUDA) that replayed steps give exactly the eager
engine's tokens."""

import pytest
import torch

from mili import LLM, SamplingParams
from mili.engine.cuda_graphs import MAX_GRAPH_BATCH, graph_batch_sizes
from tests.hf_oracle import TINY_MODEL


@pytest.mark.parametrize("max_num_seqs", [1, 3, 8, 9, 20, 256, 300, 2000])
def test_every_batch_the_engine_can_run_has_a_graph_to_pad_up_to(max_num_seqs):
    sizes = graph_batch_sizes(max_num_seqs)
    assert sizes == sorted(set(sizes)) and sizes[0] == 1
    for batch in range(1, min(max_num_seqs, MAX_GRAPH_BATCH) + 1):
        padded = next((s for s in sizes if s >= batch), None)
        assert padded is not None, f"no graph holds a batch of {batch} (sizes {sizes})"
        assert padded - batch < max(16, batch), f"a batch of {batch} pads to {padded}: too much wasted work"
    assert sizes[-1] <= max(MAX_GRAPH_BATCH, 8)


def test_the_cpu_engine_runs_eagerly():
    llm = LLM(str(TINY_MODEL), dtype="float32", device="cpu", num_kv_blocks=64, max_num_seqs=4)
    assert llm.engine.runner.graphs is None


@pytest.mark.gpu
def test_replayed_decode_steps_give_the_eager_tokens():
    """13 requests of mixed lengths: decode batches of 13 down to 1 sequences, padded to 16, 8, 4, 2, 1."""
    prompts = [f"What is {3 * i + 1} + {7 * i % 50}?" if i % 2 else "Copy: " + " ".join("abcdefg"[: 1 + i % 7])
               for i in range(13)]
    params = [SamplingParams(temperature=0, max_tokens=4 + 3 * i, ignore_eos=True) for i in range(13)]
    results = {}
    for eager in (True, False):
        llm = LLM(str(TINY_MODEL), dtype="float32", device="cuda", backend="triton", num_kv_blocks=512,
                  max_num_seqs=16, enforce_eager=eager)
        assert (llm.engine.runner.graphs is None) == eager
        results[eager] = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        del llm
        torch.cuda.empty_cache()
    for i, (replayed, eager) in enumerate(zip(results[False], results[True])):
        assert replayed == eager, f"request {i}: CUDA-graph decode gave {replayed}, eager decode {eager}"


@pytest.mark.gpu
def test_graphs_recorded_in_one_thread_replay_in_another():
    """mili serve builds the engine in a loader thread and steps it in the engine thread."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def build(eager: bool) -> LLM:
        return LLM(str(TINY_MODEL), dtype="float32", device="cuda", num_kv_blocks=512, max_num_seqs=32,
                   enforce_eager=eager)

    prompts = [f"What is {i * 7 % 90} + {i * 13 % 50}?" for i in range(20)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    with ThreadPoolExecutor(1) as pool:
        llm = pool.submit(build, False).result()
    assert llm.engine.runner.graphs is not None
    replayed = {}

    def engine_thread():
        for i, prompt in enumerate(prompts):
            llm.engine.add_request(str(i), prompt, params)
        while llm.engine.has_unfinished_requests():
            replayed.update({int(o.request_id): o.outputs[0].token_ids for o in llm.engine.step() if o.finished})

    thread = threading.Thread(target=engine_thread)
    thread.start()
    thread.join()
    del llm
    torch.cuda.empty_cache()
    eager = [o.outputs[0].token_ids for o in build(True).generate(prompts, params, use_tqdm=False)]
    for i, tokens in enumerate(eager):
        assert replayed.get(i) == tokens, f"request {i}: replayed from another thread {replayed.get(i)}, eager {tokens}"


@pytest.mark.gpu
def test_overlap_gives_the_same_tokens_as_completing_each_step_first():
    """On the GPU the host schedules step t+1 while step t runs: greedy, seeded sampling with filters
    and penalties, parallel samples and stop strings must come out as without overlap."""
    prompts = [f"What is {5 * i + 2} + {11 * i % 40}?" for i in range(24)]
    params = []
    for i in range(24):
        kinds = [dict(temperature=0), dict(temperature=0.8, seed=i, top_k=20, top_p=0.9),
                 dict(temperature=1.0, seed=100 + i, min_p=0.05, repetition_penalty=1.3, frequency_penalty=0.5),
                 dict(temperature=0.7, seed=7, n=3, top_p=0.8)]
        params.append(SamplingParams(max_tokens=6 + 5 * (i % 5), ignore_eos=i % 2 == 0, stop=["9"] if i % 7 == 3 else None,
                                     **kinds[i % 4]))
    results = {}
    for overlap in (True, False):
        llm = LLM(str(TINY_MODEL), dtype="float32", device="cuda", num_kv_blocks=512, max_num_seqs=16, overlap=overlap)
        results[overlap] = [[(c.token_ids, c.text, c.finish_reason) for c in o.outputs]
                            for o in llm.generate(prompts, params, use_tqdm=False)]
        del llm
        torch.cuda.empty_cache()
    for i, (with_overlap, without) in enumerate(zip(results[True], results[False])):
        assert with_overlap == without, f"request {i} ({params[i]}): overlap gave {with_overlap}, without {without}"


def test_a_decode_of_one_sequence_staged_in_the_batch_1_graphs_inputs_is_the_plain_step():
    """On a GPU a step of one decoding sequence is written straight into the batch-1 graph's own
    buffer (`Batch1Inputs`) with one copy. Here on the CPU the same staging feeds the eager
    forward: every staged step must hold what the general `prepare` builds (ids, positions, slots,
    lengths, block table), and the tokens must be the plain engine's, through batches of two that
    shrink to one (the survivor's pending token sits in row 1 of the previous step), seeded
    sampling, and contexts that cross blocks."""
    import math

    from mili.engine.cuda_graphs import Batch1Inputs

    prompts = [{"prompt_token_ids": list(range(5, 5 + 9 + 4 * i))} for i in range(4)]
    params = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.9, seed=3, top_k=12, max_tokens=30, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=14, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=25, ignore_eos=True)]
    settings = dict(dtype="float32", device="cpu", num_kv_blocks=64, block_size=4, max_num_seqs=2)
    plain = [o.outputs[0].token_ids for o in LLM(str(TINY_MODEL), **settings).generate(prompts, params, use_tqdm=False)]

    llm = LLM(str(TINY_MODEL), **settings)
    runner = llm.engine.runner
    runner.batch_1_inputs = inputs = Batch1Inputs(math.ceil(llm.engine.max_model_len / 4), "cpu")
    for name in ("input_ids", "positions", "slot_mapping", "logits_indices", "context_lens", "block_tables"):
        offset = getattr(inputs, name).data_ptr() - inputs.buffer.data_ptr()
        assert offset % 16 == 0, f"Batch1Inputs.{name} starts {offset} bytes in: Triton compiles apart for unaligned pointers"
    staged_steps = []
    prepare = runner.prepare

    def checked_prepare(scheduled, batch, previous):
        model_input = prepare(scheduled, batch, previous)
        if model_input.input_ids.data_ptr() == runner.batch_1_inputs.input_ids.data_ptr():
            staged_steps.append(model_input)
            runner.batch_1_inputs, inputs = None, runner.batch_1_inputs
            expected = prepare(scheduled, batch, previous)
            runner.batch_1_inputs = inputs
            md, want = model_input.attn_metadata, expected.attn_metadata
            width = want.block_tables.shape[1]
            for name, got, wanted in (("input_ids", model_input.input_ids, expected.input_ids),
                                      ("positions", model_input.positions, expected.positions),
                                      ("slot_mapping", md.slot_mapping, want.slot_mapping),
                                      ("context_lens", md.context_lens, want.context_lens),
                                      ("block table", md.block_tables[:, :width], want.block_tables),
                                      ("logits_indices", model_input.logits_indices, expected.logits_indices)):
                assert got.tolist() == wanted.tolist(), f"staged {name} {got.tolist()} != the plain step's {wanted.tolist()}"
            assert (md.is_prefill, md.max_seqlen_k, model_input.sampled_seqs) == (
                want.is_prefill, want.max_seqlen_k, expected.sampled_seqs)
        return model_input

    runner.prepare = checked_prepare
    staged = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert len(staged_steps) >= 20, f"only {len(staged_steps)} steps of one sequence were staged"
    assert staged == plain
