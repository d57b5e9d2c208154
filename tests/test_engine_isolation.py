"""A failure inside an engine step ends only the request it belongs to (issue 8).

Faults are injected so that a step raises whenever one particular request is in the batch: in
the model's forward (its prefill), in the sampler (after a few tokens, with parallel samples
forked in the failing step), in its detokenizer (half-way through appending a batch's tokens),
or once for everyone (a transient fault), or always (the model is broken). Every other request
must produce exactly the tokens and text of a fault-free run; the culprit finishes with
finish_reason "error"; afterwards every KV block is free or held only by the prefix cache.
"""

from __future__ import annotations

import random

import pytest

from mili import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAGIC = 977  # a token id only the culprit's prompt contains
BAD = 3  # the culprit's place among the requests


def make_llm(checkpoint_folder, overlap: bool = True) -> LLM:
    return LLM(str(checkpoint_folder), dtype="float32", device="cpu", block_size=4, num_kv_blocks=256, max_model_len=128,
               overlap=overlap)


def workload(bad_n: int = 1):
    rng = random.Random(8)
    prompts, params = [], []
    for i in range(7):
        ids = [rng.randrange(1, 900) for _ in range(rng.randint(3, 20))]
        if i == BAD:
            ids[len(ids) // 2] = MAGIC
        prompts.append({"prompt_token_ids": ids})
        n = bad_n if i == BAD else (2 if i == 5 else 1)
        sampling = {"temperature": 0.9, "seed": 7} if i == 6 else {"temperature": 0}  # a seeded one must match too
        params.append(SamplingParams(n=n, max_tokens=6 + i, ignore_eos=True, **sampling))
    return prompts, params


@pytest.fixture(scope="module")
def reference(checkpoint_folder):
    """A fault-free run: (token ids, text) of every choice of every request."""
    prompts, params = workload()
    return [[(c.token_ids, c.text) for c in out.outputs] for out in make_llm(checkpoint_folder).generate(prompts, params,
                                                                                           use_tqdm=False)]


def is_bad(seq) -> bool:
    return MAGIC in seq.token_ids[:seq.num_prompt_tokens]


def fail_in_forward(llm):
    real = llm.engine.runner.run

    def run(model_input):
        if MAGIC in model_input.input_ids.tolist():
            raise RuntimeError("injected forward failure")
        return real(model_input)

    llm.engine.runner.run = run


def fail_in_sampler_after(num_tokens: int):
    def inject(llm):
        real = llm.engine.runner.sample

        def sample(seqs, logits, *rest):
            if any(is_bad(s) and s.num_output_tokens >= num_tokens for s in seqs):
                raise RuntimeError("injected sampler failure")
            return real(seqs, logits, *rest)

        llm.engine.runner.sample = sample

    return inject


def fail_inside_the_forward_after(num_tokens: int):
    """Raise half-way through the layers of a decode step that holds the culprit: the layers before
    have already written this step's K/V to the cache and extended the CPU decode copies (DecodeKV)."""
    def inject(llm):
        runner, layers = llm.engine.runner, llm.model.model.layers
        real_run, middle = runner.run, layers[len(layers) // 2]
        real_layer, culprit_inside = middle.forward, []

        def run(model_input):
            culprit_inside[:] = [any(is_bad(s) and s.num_output_tokens >= num_tokens for s in model_input.sampled_seqs)]
            return real_run(model_input)

        def layer_forward(*args, **kwargs):
            if culprit_inside[0]:
                raise RuntimeError("injected failure inside the forward")
            return real_layer(*args, **kwargs)

        runner.run, middle.forward = run, layer_forward

    return inject


def fail_in_detokenizer(llm):
    engine = llm.engine
    real = engine._new_detokenizer

    class Exploding:
        def __init__(self, inner):
            self.inner, self.count = inner, 0

        def add_token(self, token_id):
            self.count += 1
            if self.count == 4:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenizer failure")
            return self.inner.add_token(token_id)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def new_detokenizer(seq):
        detokenizer = real(seq)
        return Exploding(detokenizer) if is_bad(seq) else detokenizer

    engine._new_detokenizer = new_detokenizer


def assert_blocks_released(llm) -> None:
    bm = llm.engine.block_manager
    stats = bm.stats
    assert stats.used_blocks == stats.cached_blocks, f"blocks still held by sequences: {stats}"
    assert bm.num_free_blocks + stats.cached_blocks == bm.num_blocks, f"blocks leaked: {stats}"
    assert not llm.engine.has_unfinished_requests() and not llm.engine.requests


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "no-overlap"])
@pytest.mark.parametrize("inject,bad_n,tokens_before_error,fails_at_launch", [
    (fail_in_forward, 1, 0, True),
    (fail_in_sampler_after(3), 1, 3, True),
    (fail_in_sampler_after(0), 2, 0, True),  # fails in the step that forks its second sample
    (fail_in_detokenizer, 1, 3, False),  # fails while appending a step's tokens
    (fail_inside_the_forward_after(2), 1, 2, True),
], ids=["forward", "sampler-mid-decode", "sampler-at-fork-n2", "detokenizer-mid-append", "mid-forward-decode"])
def test_only_the_failing_request_ends_and_the_others_are_unchanged(checkpoint_folder, reference, inject, bad_n,
                                                                    tokens_before_error, fails_at_launch, overlap):
    prompts, params = workload(bad_n)
    llm = make_llm(checkpoint_folder, overlap)
    inject(llm)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for i, out in enumerate(outputs):
        if i == BAD:
            continue
        assert out.error is None and [c.finish_reason for c in out.outputs] == ["length"] * params[i].n
        got = [(c.token_ids, c.text) for c in out.outputs]
        assert got == reference[i], f"request {i} changed because request {BAD} failed beside it"
    bad = outputs[BAD]
    assert bad.finished and [c.finish_reason for c in bad.outputs] == ["error"] * bad_n
    assert "injected" in bad.error
    # with overlap, a launch that fails finds the token the step before it sampled still on its way: it is
    # kept (that step completes normally); a completion that fails is undone with the step launched after it
    kept = tokens_before_error + (1 if overlap and fails_at_launch and tokens_before_error else 0)
    assert all(len(c.token_ids) == kept for c in bad.outputs), [c.token_ids for c in bad.outputs]
    if kept:
        assert bad.outputs[0].token_ids == reference[BAD][0][0][:kept], "its tokens before the failure"
    assert_blocks_released(llm)
    assert llm.engine.stats()["preemptions"] > 0, "the failed batch was preempted (recompute)"


def test_a_transient_failure_ends_nobody(checkpoint_folder, reference):
    prompts, params = workload()
    llm = make_llm(checkpoint_folder)
    real, calls = llm.engine.runner.run, []

    def run(model_input):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a one-off failure")
        return real(model_input)

    llm.engine.runner.run = run
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [[(c.token_ids, c.text) for c in out.outputs] for out in outputs] == reference
    assert all(out.error is None for out in outputs)
    assert_blocks_released(llm)


def test_a_failing_scheduler_is_contained_too(checkpoint_folder, reference):
    prompts, params = workload()
    llm = make_llm(checkpoint_folder)
    real, calls = llm.engine.scheduler.schedule, []

    def schedule():
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("scheduler hiccup")
        return real()

    llm.engine.scheduler.schedule = schedule
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [[(c.token_ids, c.text) for c in out.outputs] for out in outputs] == reference
    assert_blocks_released(llm)


def test_a_broken_model_fails_every_request_and_the_engine_ends(checkpoint_folder):
    prompts, params = workload()
    llm = make_llm(checkpoint_folder)

    def run(model_input):
        raise RuntimeError("the device is gone")

    llm.engine.runner.run = run
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert all(out.finished and out.error == "RuntimeError: the device is gone" for out in outputs)
    assert [len(out.outputs) for out in outputs] == [p.n for p in params], "every sample gets its error"
    assert_blocks_released(llm)


def test_a_request_aborted_while_it_waits_to_be_isolated_is_forgotten(checkpoint_folder):
    llm = make_llm(checkpoint_folder)
    engine = llm.engine
    fail_in_forward(llm)
    prompts, params = workload()
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        engine.add_request(f"r{i}", prompt, p)
    engine.step()  # the batched prefill fails: everyone is preempted and becomes a suspect
    assert len(engine.isolation.suspects) == len(prompts) and not engine.scheduler.running
    engine.abort("r5")
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert sorted(done) == sorted(f"r{i}" for i in range(7) if i != 5)
    assert done[f"r{BAD}"].outputs[0].finish_reason == "error"
    assert_blocks_released(llm)


def test_stats_count_requests_as_well_as_sequences(checkpoint_folder):
    llm = LLM(str(checkpoint_folder), dtype="float32", device="cpu", block_size=4, num_kv_blocks=256, max_model_len=128,
              max_num_seqs=3)
    engine = llm.engine
    params = SamplingParams(n=2, max_tokens=4, ignore_eos=True)
    engine.add_request("a", {"prompt_token_ids": [5, 6, 7]}, params)
    engine.add_request("b", {"prompt_token_ids": [8, 9]}, params)
    engine.step()  # a and b prefill; a's second sample joins the batch, b's waits (max_num_seqs=3)
    engine.add_request("c", {"prompt_token_ids": [10, 11]}, params)
    stats = engine.stats()
    assert (stats["running"], stats["running_requests"]) == (3, 2)
    assert (stats["waiting"], stats["waiting_requests"]) == (2, 1), "b has a sample running: only c waits"
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.stats()["running_requests"] == engine.stats()["waiting_requests"] == 0


def test_an_abort_before_the_samples_fork_ends_all_n_of_them(checkpoint_folder):
    llm = LLM(str(checkpoint_folder), dtype="float32", device="cpu", block_size=4, num_kv_blocks=64, max_num_batched_tokens=4,
              max_num_seqs=4)
    engine = llm.engine
    engine.add_request("n3", {"prompt_token_ids": list(range(1, 11))}, SamplingParams(n=3, max_tokens=4))
    engine.step()  # the first 4-token chunk of the prompt: no sample exists but the first
    out = engine.abort("n3")
    assert out.finished and [(c.index, c.finish_reason, c.token_ids) for c in out.outputs] == [
        (i, "abort", []) for i in range(3)]
    assert not engine.has_unfinished_requests()
