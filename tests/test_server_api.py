"""The OpenAI-compatible server against a live `mili serve` on a free loopback port.

The official `openai` client talks to it; answers are checked against the offline engine on the
same weights (temperature 0, one request at a time, so the computation is the same).
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from mili import LLM, SamplingParams
from mili.server.launch import launch_server
from tests.server_helpers import metric

MODEL = "tiny"
MAX_MODEL_LEN = 512
MESSAGES = [{"role": "user", "content": "What is 17 + 25?"}]


@pytest.fixture(scope="module")
def server(checkpoint_folder):
    args = ["--served-model-name", MODEL, "--max-num-seqs", "128", "--num-kv-blocks", "1024",
            "--max-model-len", str(MAX_MODEL_LEN)]
    with launch_server(checkpoint_folder, args=args) as running:
        yield running


@pytest.fixture(scope="module")
def llm(checkpoint_folder):
    return LLM(str(checkpoint_folder), num_kv_blocks=64, max_model_len=MAX_MODEL_LEN)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _metrics(server) -> str:
    return httpx.get(server.url + "/metrics").text


def test_models_lists_the_served_model_with_its_context(server):
    data = httpx.get(server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in data] == [MODEL] and data[0]["max_model_len"] == MAX_MODEL_LEN


def test_chat_stream_joins_to_the_full_answer_and_matches_the_offline_engine(client, llm):
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [full.choices[0].finish_reason]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert chunks[-1].choices == [] and [getattr(chunks[-1].usage, k) for k in counts] == [
        getattr(full.usage, k) for k in counts]
    # the stream's prompt is the full answer's: its full blocks came from the prefix cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == full.usage.prompt_tokens // 16 * 16

    offline = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0].outputs[0]
    assert full.choices[0].message.content == offline.text
    assert full.choices[0].finish_reason == offline.finish_reason
    prompt_ids = llm.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    assert full.usage.prompt_tokens == len(prompt_ids)
    assert full.usage.completion_tokens == len(offline.token_ids)
    assert full.usage.total_tokens == len(prompt_ids) + len(offline.token_ids)


def test_enable_thinking_goes_through_chat_template_kwargs(client, llm):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1, temperature=0,
                                            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    ids = llm.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, enable_thinking=False)
    assert answer.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("prompt", ["The capital of France is", [5, 17, 300, 42, 9, 1000]])
def test_completions_stream_and_full_agree_with_the_offline_engine(client, llm, prompt):
    params = dict(model=MODEL, prompt=prompt, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**params)
    chunks = list(client.completions.create(**params, stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
    engine_prompt = prompt if isinstance(prompt, str) else {"prompt_token_ids": prompt}
    offline = llm.generate(engine_prompt, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                           use_tqdm=False)[0]
    assert full.choices[0].text == offline.outputs[0].text
    assert full.usage.completion_tokens == 10 and full.usage.prompt_tokens == len(offline.prompt_token_ids)


def test_n_choices_each_finish_exactly_once(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0, n=2,
                                                 stream=True, extra_body={"ignore_eos": True}))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert [c.finish_reason for c in mine if c.finish_reason] == ["length"]
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=3, temperature=0,
                                          n=2, extra_body={"ignore_eos": True})
    assert [c.index for c in full.choices] == [0, 1] and full.usage.completion_tokens == 6


def _post(server, path, body, **kwargs):
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, **kwargs)


def _with_log(server, response) -> str:
    """A failure message: the response, and the end of the server's log (a 500 names only a request id)."""
    return f"{response.text}\nthe server's log ends:\n{server.log()[-3000:]}"


CHAT = "/v1/chat/completions"
BAD_INPUTS = [
    (CHAT, "{not json", 400, None),
    (CHAT, "[1, 2]", 400, None),
    (CHAT, {"model": MODEL}, 400, "messages"),
    (CHAT, {"messages": []}, 400, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    (CHAT, {"messages": MESSAGES, "temperature": "hot"}, 400, "temperature"),
    (CHAT, {"messages": MESSAGES, "max_tokens": True}, 400, "max_tokens"),
    (CHAT, {"messages": MESSAGES, "top_p": 0}, 400, "top_p"),
    (CHAT, {"messages": MESSAGES, "n": 0}, 400, "n"),
    (CHAT, {"messages": MESSAGES, "logprobs": True}, 400, "logprobs"),
    (CHAT, {"messages": MESSAGES, "max_tokens": 600}, 400, "max_tokens"),
    (CHAT, {"messages": MESSAGES, "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 99999]}, 400, "prompt"),
    ("/v1/completions", {"prompt": 7}, 400, "prompt"),
    ("/v1/no-such-endpoint", {}, 404, None),
]


@pytest.mark.parametrize("path,body,status,param", BAD_INPUTS, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(server, path, body, status, param):
    response = _post(server, path, body)
    assert response.status_code == status, _with_log(server, response)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    ok = _post(server, "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 2})
    assert ok.status_code == 200, _with_log(server, ok)
    assert ok.json()["usage"]["completion_tokens"] >= 1


def test_context_window_error_states_both_numbers(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=600)
    message = err.value.body["message"]
    assert str(MAX_MODEL_LEN) in message and "600 in the completion" in message


def test_metrics_are_present_and_increase(server, client):
    names = ["mili:num_requests_running", "mili:num_requests_waiting", "mili:kv_cache_usage_perc",
             "mili:prefix_cache_queries_total", "mili:prefix_cache_hits_total", "mili:num_preemptions_total",
             "mili:prompt_tokens_total", "mili:generation_tokens_total", "mili:request_success_total",
             "mili:time_to_first_token_seconds_count", "mili:time_per_output_token_seconds_count",
             "mili:inter_token_latency_seconds_count", "mili:e2e_request_latency_seconds_count"]
    before = _metrics(server)
    client.completions.create(model=MODEL, prompt=list(range(40)), max_tokens=4, extra_body={"ignore_eos": True})
    client.completions.create(model=MODEL, prompt=list(range(40)), max_tokens=4, extra_body={"ignore_eos": True})
    after = _metrics(server)
    for name in names:
        assert f"\n{name}{{" in after, f"{name} missing from /metrics"
    assert metric(after, "mili:prompt_tokens_total") - metric(before, "mili:prompt_tokens_total") == 80
    assert metric(after, "mili:generation_tokens_total") - metric(before, "mili:generation_tokens_total") == 8
    assert metric(after, "mili:request_success_total", finished_reason="length") - metric(
        before, "mili:request_success_total", finished_reason="length") == 2
    for name in ("time_to_first_token_seconds", "time_per_output_token_seconds", "e2e_request_latency_seconds"):
        assert metric(after, f"mili:{name}_count") - metric(before, f"mili:{name}_count") == 2
    assert metric(after, "mili:inter_token_latency_seconds_count") - metric(
        before, "mili:inter_token_latency_seconds_count") == 6
    # the second request found the first one's two full blocks (32 tokens) in the prefix cache
    assert metric(after, "mili:prefix_cache_hits_total") - metric(before, "mili:prefix_cache_hits_total") >= 32


def test_request_gauges_count_requests_not_samples(server, client):
    stream = client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=480, n=2, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    try:
        next(iter(stream))  # both samples are running once the first token is out
        running = metric(_metrics(server), "mili:num_requests_running")
    finally:
        stream.close()
    assert running == 1, f"one request with n=2 counts once, got {running}"


def _wait_idle(server, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = _metrics(server)
        idle = all(metric(text, f"mili:{n}") == 0
                   for n in ("num_requests_running", "num_requests_waiting", "kv_cache_blocks_in_use"))
        if idle or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_a_disconnect_aborts_the_request_within_a_step(server, client):
    before = _metrics(server)
    stream = client.completions.create(model=MODEL, prompt=[1, 2, 3, 4], max_tokens=400, stream=True,
                                       extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    after = _wait_idle(server, timeout=3.0)
    assert metric(after, "mili:num_requests_running") == 0 and metric(after, "mili:kv_cache_blocks_in_use") == 0
    generated = metric(after, "mili:generation_tokens_total") - metric(before, "mili:generation_tokens_total")
    assert generated < 200, f"the aborted request kept generating ({generated} of 400 tokens)"
    assert metric(after, "mili:request_success_total", finished_reason="abort") - metric(
        before, "mili:request_success_total", finished_reason="abort") == 1


def test_100_concurrent_streams_with_a_third_cancelled(server):
    rng = random.Random(8)
    cancelled = set(rng.sample(range(100), 33))
    before = _metrics(server)

    async def one(client, i):
        prompt = [rng.randrange(1, 1300) for _ in range(rng.randint(4, 24))]
        # A busy client reads its first chunk long after the server sent it: a stream to be cancelled
        # asks for many tokens, so that it is still generating when the disconnect arrives (with 16,
        # the server could finish it first, and it would end "length", not "abort").
        max_tokens = 400 if i in cancelled else 16
        stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True})
        text, reasons, usage = "", [], None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.text
                reasons += [choice.finish_reason] if choice.finish_reason else []
            if i in cancelled and text:
                await stream.close()
                return None
        return text, reasons, usage

    async def run_all():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
            return await asyncio.gather(*(one(client, i) for i in range(100)))

    results = asyncio.run(run_all())
    for i, result in enumerate(results):
        if i in cancelled:
            continue
        text, reasons, usage = result
        assert text and reasons == ["length"] and usage.completion_tokens == 16, (i, text, reasons, usage)
    after = _wait_idle(server, timeout=60.0)  # returns as soon as the server is idle
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_blocks_in_use"):
        assert metric(after, f"mili:{name}") == 0, f"{name} is {metric(after, f'mili:{name}')} after every request ended"
    aborted = metric(after, "mili:request_success_total", finished_reason="abort") - metric(
        before, "mili:request_success_total", finished_reason="abort")
    assert aborted == len(cancelled)


def test_bench_serve_runs_against_the_server(server, tmp_path):
    from mili.bench.serve import main

    out = tmp_path / "serve.json"
    code = main(["--url", server.url, "--num-prompts", "12", "--max-concurrency", "4", "--dataset", "shared-prefix",
                 "--input-len", "40", "--prefix-len", "32", "--output-len", "4", "--json", str(out),
                 "--goodput", "ttft:600000", "tpot:600000"])
    result = json.loads(out.read_text())
    assert code == 0 and result["summary"]["completed"] == 12 and result["summary"]["errors"] == 0
    assert result["summary"]["prefix_cache_hit_rate"] > 0.5
    assert result["summary"]["ttft_ms"]["p99"] >= result["summary"]["ttft_ms"]["median"] > 0
    assert result["environment"]["git_commit"]
    assert len(result["summary"]["per_request"]) == 12
    assert result["summary"]["goodput"]["requests_met"] == 12  # ten minutes: every request meets it
