"""API keys and backpressure of a live `mili serve`: 401 without the key (but /health open), 429 when full."""

from __future__ import annotations

import threading

import httpx
import pytest

openai = pytest.importorskip("openai")

from mili.server.launch import launch_server

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(checkpoint_folder):
    args = ["--api-key", KEY, "--max-num-seqs", "1", "--max-queue", "0", "--num-kv-blocks", "64"]
    with launch_server(checkpoint_folder, args=args) as running:
        yield running


def _auth(key):
    return {"Authorization": f"Bearer {key}"}


def test_health_and_metrics_stay_open_and_v1_needs_the_key(server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    for headers in ({}, _auth("wrong")):
        response = httpx.get(server.url + "/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/v1/models", headers=_auth(KEY)).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).completions.create(
            model="admission-model", prompt="hi", max_tokens=1)


def test_a_full_server_answers_429_with_retry_after_and_recovers(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    model = client.models.list().data[0].id
    started, release = threading.Event(), threading.Event()

    def long_stream():
        stream = client.completions.create(model=model, prompt=[1, 2, 3], max_tokens=60, stream=True,
                                           extra_body={"ignore_eos": True})
        for _ in stream:
            started.set()
            if release.is_set():
                break
        stream.close()

    worker = threading.Thread(target=long_stream)
    worker.start()
    try:
        assert started.wait(30)
        response = httpx.post(server.url + "/v1/completions", headers=_auth(KEY),
                              json={"model": model, "prompt": "hi", "max_tokens": 1})
        assert response.status_code == 429, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"
    finally:
        release.set()
        worker.join(30)
    answer = client.completions.create(model=model, prompt="hi", max_tokens=2)
    assert answer.usage.completion_tokens >= 1
