"""A failure inside the engine for one request, against a live server (issue 8, item 3).

The server runs with a sampler that raises whenever a sequence whose prompt holds token MAGIC
has generated 3 tokens (`tests/faulty_serve.py`). Two such requests (one streaming, one not)
run among ten good ones: the bad ones get an OpenAI-shaped 500 (non-streaming) or an error event
then [DONE] (streaming) that names only a request id (the error itself is in the server log under
that id), every good one completes exactly as the offline engine answers it, and
afterwards the server is idle (0 running, all KV blocks free) and still answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from mili import LLM, SamplingParams
from mili.server.launch import launch_server
from tests.server_helpers import metric

MODEL = "tiny"
MAGIC = 977
FAULT_AFTER = 3
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def server(checkpoint_folder):
    args = ["--served-model-name", MODEL, "--max-num-seqs", "64", "--num-kv-blocks", "512", "--max-model-len", "256"]
    env = {"MILI_FAULT_TOKEN": str(MAGIC), "MILI_FAULT_AFTER": str(FAULT_AFTER)}
    with launch_server(checkpoint_folder, args=args, env=env, module="tests.faulty_serve") as running:
        yield running


def _assert_names_only_a_request_id(message: str, server) -> None:
    """A 500 tells the client no exception type or message, only the id under which the log has them."""
    assert "injected" not in message and "RuntimeError" not in message, message
    request_id = re.search(r"request id (\S+)", message).group(1)
    lines = [line for line in server.log().splitlines() if request_id in line]
    assert any("injected failure" in line for line in lines), f"no log line names {request_id} and the error"


def good_prompt(i: int) -> list[int]:
    return [(37 * i + 11 * k) % 900 + 1 for k in range(4 + i)]


BAD_PROMPT = [5, 6, MAGIC, 7, 8]


def _metrics(server) -> str:
    return httpx.get(server.url + "/metrics").text


def _wait_idle(server, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = _metrics(server)
        if all(metric(text, f"mili:{n}") == 0 for n in ("num_requests_running", "num_requests_waiting",
                                                        "kv_cache_blocks_in_use")) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


async def _complete(client, prompt, stream: bool, n: int = 1):
    """(texts per choice, finish reasons, completion tokens), or the exception the client raised."""
    kwargs = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "n": n,
              "extra_body": {"ignore_eos": True}}
    try:
        if not stream:
            out = await client.completions.create(**kwargs)
            return [c.text for c in out.choices], [c.finish_reason for c in out.choices], out.usage.completion_tokens
        texts, reasons, usage = [""] * n, [None] * n, None
        response = await client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        async for chunk in response:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                texts[choice.index] += choice.text
                reasons[choice.index] = choice.finish_reason or reasons[choice.index]
        return texts, reasons, usage.completion_tokens
    except openai.APIError as err:
        return err


def test_one_failing_request_gets_its_error_and_the_others_complete(server, checkpoint_folder):
    before = _metrics(server)
    cases = [(good_prompt(i), i % 2 == 0, 2 if i == 4 else 1) for i in range(10)]

    async def run_all():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
            return await asyncio.gather(_complete(client, BAD_PROMPT, stream=True),
                                        _complete(client, BAD_PROMPT, stream=False),
                                        *(_complete(client, p, s, n) for p, s, n in cases))

    bad_stream, bad_full, *good = asyncio.run(run_all())

    assert isinstance(bad_full, openai.InternalServerError), bad_full
    assert bad_full.status_code == 500 and bad_full.body["type"] == "internal_server_error"
    assert isinstance(bad_stream, openai.APIError), bad_stream
    for message in (bad_full.body["message"], bad_stream.message):
        _assert_names_only_a_request_id(message, server)

    llm = LLM(str(checkpoint_folder), num_kv_blocks=64, max_model_len=256)
    for (prompt, stream, n), result in zip(cases, good):
        assert not isinstance(result, Exception), (prompt, stream, result)
        offline = llm.generate({"prompt_token_ids": prompt}, SamplingParams(n=n, temperature=0, max_tokens=MAX_TOKENS,
                                                                            ignore_eos=True), use_tqdm=False)[0]
        assert result == ([c.text for c in offline.outputs], ["length"] * n, MAX_TOKENS * n), (prompt, stream)

    after = _wait_idle(server)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_blocks_in_use"):
        assert metric(after, f"mili:{name}") == 0, f"{name} is {metric(after, f'mili:{name}')} after every request ended"
    failures = metric(after, "mili:request_failure_total") - metric(before, "mili:request_failure_total")
    assert failures == 2
    assert metric(after, "mili:request_success_total", finished_reason="error") == 0, "failures are not successes"
    assert httpx.get(server.url + "/health").status_code == 200
    again = httpx.post(server.url + "/v1/completions", json={"prompt": good_prompt(3), "max_tokens": 2})
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 2


def test_a_streamed_failure_sends_the_tokens_before_it_then_an_error_event_and_done(server):
    body = {"prompt": BAD_PROMPT, "max_tokens": 20, "ignore_eos": True, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200  # the stream had begun: the error comes as an event
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == 500
    _assert_names_only_a_request_id(error["message"], server)
    chunks = [json.loads(e) for e in events[:-2]]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks), "a failed choice never reports a finish"
