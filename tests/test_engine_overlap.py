"""The engine's hot path on the CPU: overlap gives the tokens of completing each step first, and
a prompt's full blocks are shared with requests that arrive while it still runs."""

from __future__ import annotations

import random

import pytest

from mili import LLM, SamplingParams
from mili.engine.sampling_params import RequestOutputKind
from tests.hf_oracle import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mixed_workload():
    prompts = [f"What is {5 * i + 2} + {11 * i % 40}?" for i in range(24)]
    kinds = [dict(temperature=0), dict(temperature=0.8, seed=1, top_k=20, top_p=0.9),
             dict(temperature=1.0, seed=2, min_p=0.05, repetition_penalty=1.3, frequency_penalty=0.5),
             dict(temperature=0.7, seed=7, n=3, top_p=0.8)]
    params = [SamplingParams(max_tokens=6 + 5 * (i % 5), ignore_eos=i % 2 == 0, stop=["9"] if i % 7 == 3 else None,
                             **kinds[i % 4]) for i in range(24)]
    return prompts, params


def run(overlap: bool, persistent_batch: bool = True, num_kv_blocks: int = 512):
    llm = LLM(str(TINY_MODEL), dtype="float32", device="cpu", num_kv_blocks=num_kv_blocks, block_size=4,
              max_num_seqs=16, overlap=overlap, persistent_batch=persistent_batch)
    outputs = llm.generate(*mixed_workload(), use_tqdm=False)
    return [[(c.token_ids, c.text, c.finish_reason) for c in o.outputs] for o in outputs], llm


def test_overlap_and_the_persistent_batch_change_no_token():
    """Greedy, seeded sampling with filters and penalties, parallel samples and stop strings; a
    small KV pool forces preemptions too. A stop seen late (its next step already launched) must
    not feed a finished detokenizer."""
    reference, _ = run(overlap=False, persistent_batch=False, num_kv_blocks=40)
    for overlap, persistent in ((False, True), (True, True)):
        got, llm = run(overlap, persistent, num_kv_blocks=40)
        assert llm.engine.stats()["preemptions"] > 0, "the small pool should preempt"
        for i, (a, b) in enumerate(zip(got, reference)):
            assert a == b, f"request {i}: overlap={overlap}, persistent batch={persistent} gave {a}, the plain step {b}"
        assert llm.engine.block_manager.num_free_blocks + llm.engine.block_manager.stats.cached_blocks == 40


def test_delta_outputs_add_up_to_the_cumulative_ones():
    llm = LLM(str(TINY_MODEL), dtype="float32", device="cpu", num_kv_blocks=256, block_size=4)
    engine = llm.engine
    prompt = {"prompt_token_ids": list(range(20, 40))}
    for kind in (RequestOutputKind.DELTA, RequestOutputKind.CUMULATIVE, RequestOutputKind.FINAL_ONLY):
        engine.add_request(kind.value, prompt, SamplingParams(n=2, temperature=0, max_tokens=9, ignore_eos=True,
                                                              output_kind=kind))
    seen = {kind.value: [] for kind in RequestOutputKind}
    while engine.has_unfinished_requests():
        for output in engine.step():
            seen[output.request_id].append(output)
    final = seen["cumulative"][-1]
    assert len(seen["final_only"]) == 1 and seen["final_only"][0].finished, "FINAL_ONLY: one output, at the end"
    assert seen["final_only"][0].outputs == final.outputs
    for index in range(2):
        tokens = [t for o in seen["delta"] for c in o.outputs if c.index == index for t in c.token_ids]
        text = "".join(c.text for o in seen["delta"] for c in o.outputs if c.index == index)
        assert tokens == final.outputs[index].token_ids and text == final.outputs[index].text
    assert all(c.finish_reason is None for o in seen["delta"][:-1] for c in o.outputs), "finished only at the end"


def test_an_aborted_delta_request_ends_with_only_what_is_new():
    engine = LLM(str(TINY_MODEL), dtype="float32", device="cpu", num_kv_blocks=64, block_size=4).engine
    engine.add_request("r", {"prompt_token_ids": list(range(20, 30))},
                       SamplingParams(temperature=0, max_tokens=50, ignore_eos=True, output_kind=RequestOutputKind.DELTA))
    seen = [c.token_ids for _ in range(4) for o in engine.step() for c in o.outputs]
    last = engine.abort("r").outputs[0]
    # overlap may leave the last sampled token on the device: the abort drops it, so nothing is new
    assert sum(map(len, seen)) >= 2 and (last.token_ids, last.text, last.finish_reason) == ([], "", "abort")

def test_a_shared_system_prompt_is_reused_while_its_first_request_decodes():
    rng = random.Random(5)
    system = [rng.randrange(1, 1400) for _ in range(320)]  # 80 full blocks of 4
    first, second = system + [11, 12, 13], system + [21, 22]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

    def solo(prompt):
        llm = LLM(str(TINY_MODEL), dtype="float32", device="cpu", num_kv_blocks=512, block_size=4)
        return llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0].outputs[0].token_ids

    llm = LLM(str(TINY_MODEL), dtype="float32", device="cpu", num_kv_blocks=512, block_size=4)
    engine, outputs = llm.engine, {}
    engine.add_request("first", {"prompt_token_ids": first}, params)
    for _ in range(3):  # its prefill, then decodes
        engine.step()
    assert engine.requests["first"].seqs[0].num_output_tokens >= 1, "the first request should be decoding by now"
    engine.add_request("second", {"prompt_token_ids": second}, params)
    while engine.has_unfinished_requests():
        outputs.update((o.request_id, o) for o in engine.step() if o.finished)
    assert outputs["second"].num_cached_tokens == len(system), (
        f"the second request reused {outputs['second'].num_cached_tokens} of the {len(system)} tokens of the system "
        "prompt the first one had computed: its full blocks must enter the prefix cache as soon as they are computed")
    assert outputs["first"].outputs[0].token_ids == solo(first)
    assert outputs["second"].outputs[0].token_ids == solo(second)
