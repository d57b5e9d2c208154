"""The offline API and the engine core: validation, abort, parallel samples, seeds, stop rules, chat."""

import pytest
import torch
from transformers import Qwen3Config as HFConfig
from transformers import Qwen3ForCausalLM as HFQwen3

from mili import LLM, SamplingParams
from tests.hf_oracle import TINY_MODEL, copy_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    if not (TINY_MODEL / "tokenizer.json").exists():
        pytest.skip("data/mili-tiny-qwen3/tokenizer.json is missing")
    torch.manual_seed(1)
    config = HFConfig(vocab_size=1408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      tie_word_embeddings=True, initializer_range=0.1)
    path = tmp_path_factory.mktemp("tiny-with-tokenizer")
    HFQwen3(config).eval().save_pretrained(path)
    copy_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def llm(folder):
    return LLM(str(folder), dtype="float32", device="cpu", block_size=4, num_kv_blocks=512, max_model_len=200)


def blocks_held_by_sequences(llm) -> int:
    stats = llm.engine.block_manager.stats
    return stats.used_blocks - stats.cached_blocks


@pytest.mark.parametrize("kwargs,error", [
    ({"n": 0}, ValueError), ({"temperature": -0.1}, ValueError), ({"top_p": 0.0}, ValueError),
    ({"top_p": 1.5}, ValueError), ({"top_k": -2}, ValueError), ({"min_p": 1.1}, ValueError),
    ({"repetition_penalty": 0.0}, ValueError), ({"presence_penalty": 3.0}, ValueError),
    ({"frequency_penalty": -2.5}, ValueError), ({"max_tokens": 0}, ValueError), ({"seed": 1.5}, TypeError),
    ({"stop": [""]}, TypeError), ({"stop": 3}, TypeError), ({"stop_token_ids": [-1]}, ValueError),
    ({"temperature": "hot"}, TypeError), ({"ignore_eos": 1}, TypeError),
    ({"temperature": float("inf")}, ValueError), ({"temperature": float("nan")}, ValueError),
    ({"temperature": 101}, ValueError), ({"top_p": float("nan")}, ValueError),
    ({"presence_penalty": float("-inf")}, ValueError), ({"seed": 2**63}, ValueError), ({"seed": -2**63 - 1}, ValueError),
])
def test_sampling_params_reject_bad_fields(kwargs, error):
    field = next(iter(kwargs))
    with pytest.raises(error, match=field):
        SamplingParams(**kwargs)


def test_a_too_long_prompt_is_rejected_without_disturbing_others(llm):
    engine = llm.engine
    engine.add_request("ok-1", {"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=4, ignore_eos=True))
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request("too-long", {"prompt_token_ids": [5] * 300}, SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("empty", {"prompt_token_ids": []}, SamplingParams())
    engine.add_request("ok-2", "hello", SamplingParams(max_tokens=3, ignore_eos=True))
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert sorted(done) == ["ok-1", "ok-2"]
    assert [len(done[r].outputs[0].token_ids) for r in ("ok-1", "ok-2")] == [4, 3]
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate(["x", {"prompt_token_ids": [1] * 250}], use_tqdm=False)
    assert not engine.has_unfinished_requests(), "a rejected generate call leaves nothing queued"


def test_abort_frees_blocks_at_once(llm):
    engine = llm.engine
    for i in range(3):
        engine.add_request(f"a{i}", {"prompt_token_ids": list(range(10, 40))}, SamplingParams(max_tokens=50, ignore_eos=True))
    for _ in range(3):
        engine.step()
    held = blocks_held_by_sequences(llm)
    out = engine.abort("a1")
    assert out.outputs[0].finish_reason == "abort"
    assert blocks_held_by_sequences(llm) < held, "abort must give the request's blocks back immediately"
    assert all(s.request.request_id != "a1" for s in engine.scheduler.running)
    engine.abort("a0"), engine.abort("a2"), engine.abort("unknown")
    assert blocks_held_by_sequences(llm) == 0 and not engine.has_unfinished_requests()


def test_parallel_samples_share_the_prompt_blocks(llm):
    forks = llm.engine.block_manager.stats.forks
    greedy = llm.generate("a shared prompt", SamplingParams(n=3, temperature=0, max_tokens=6, ignore_eos=True),
                          use_tqdm=False)[0]
    assert [c.index for c in greedy.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in greedy.outputs}) == 1, "greedy samples of one prompt are identical"
    assert llm.engine.block_manager.stats.forks == forks + 2, "n=3 forks the first sequence twice"
    sampled = llm.generate("a shared prompt", SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=3,
                                                             ignore_eos=True), use_tqdm=False)[0]
    assert len({tuple(c.token_ids) for c in sampled.outputs}) > 1, "random samples should differ"
    assert blocks_held_by_sequences(llm) == 0


def test_a_seed_reproduces_whatever_shares_the_batch(llm):
    mine = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    alone = llm.generate("roll the dice", mine, use_tqdm=False)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=0.8, max_tokens=n, ignore_eos=True) for n in range(3, 12)]
    crowd = llm.generate(["x y", "roll the dice", *[f"p{i}" for i in range(8)]], [others[0], mine, *others[1:]],
                         use_tqdm=False)
    assert crowd[1].outputs[0].token_ids == alone


def test_stop_strings_and_stop_token_ids(llm):
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    free = llm.generate("The quick brown fox", params, use_tqdm=False)[0].outputs[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 30
    assert free.text == llm.tokenizer.decode(free.token_ids, skip_special_tokens=True)
    stop = free.text[len(free.text) // 2:][:3]
    start = free.text.find(stop)
    cut = llm.generate("The quick brown fox", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop and cut.text == free.text[:start]
    by_id = llm.generate("The quick brown fox", SamplingParams(temperature=0, max_tokens=30,
                                                               stop_token_ids=[free.token_ids[5]]),
                         use_tqdm=False)[0].outputs[0]
    first = free.token_ids.index(free.token_ids[5])
    assert by_id.token_ids == free.token_ids[:first + 1] and by_id.finish_reason == "stop"


def test_chat_applies_the_template_and_stats_report(llm, capsys):
    out = llm.chat([{"role": "user", "content": "What is 2 + 3?"}], SamplingParams(temperature=0, max_tokens=5),
                   use_tqdm=True)[0]
    expected = llm.tokenizer.encode(llm.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}]))
    assert out.prompt_token_ids == expected and out.prompt.startswith("<|im_start|>user")
    assert "Processed prompts" in capsys.readouterr().err, "the progress bar is shown"
    stats = llm.stats()
    for key in ("preemptions", "prefix_cache_hit_rate", "kv_cache_usage"):
        assert key in stats


def test_a_step_of_prompt_chunks_only_samples_nothing(folder):
    llm = LLM(str(folder), dtype="float32", device="cpu", block_size=4, num_kv_blocks=64, max_num_seqs=2,
              max_num_batched_tokens=4)
    llm.engine.add_request("long", {"prompt_token_ids": list(range(1, 11))}, SamplingParams(max_tokens=2, ignore_eos=True))
    assert llm.engine.step() == [], "the first chunk of a 10-token prompt under a 4-token budget samples nothing"
    while llm.engine.has_unfinished_requests():
        llm.engine.step()
    assert llm.engine.block_manager.stats.used_blocks == llm.engine.block_manager.stats.cached_blocks
