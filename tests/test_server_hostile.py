"""A live `mili serve` against hostile and careless clients: every bad request is a 4xx in OpenAI's
shape (never a 500 that tells internals), a request's n counts in admission, bodies and prompts are
bounded before they cost anything, the key is checked as clients send it, the spec is complete."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

openai = pytest.importorskip("openai")

from mili.server.launch import launch_server
from tests.server_helpers import metric

KEY = "sk-hostile-test"
MODEL = "tiny"
MAX_MODEL_LEN = 256
MAX_BODY = 64 * 1024
MESSAGES = [{"role": "user", "content": "What is 17 + 25?"}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.fixture(scope="module")
def server(checkpoint_folder):
    args = ["--served-model-name", MODEL, "--max-model-len", str(MAX_MODEL_LEN), "--num-kv-blocks", "128",
            "--max-num-seqs", "2", "--max-queue", "1", "--max-n", "3", "--max-body-bytes", str(MAX_BODY)]
    with launch_server(checkpoint_folder, args=args, env={"MILI_API_KEY": KEY}) as running:
        yield running


def _post(server, path, body, key=KEY, **kwargs):
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30, **kwargs)


def _get(server, path, key=KEY):
    return httpx.get(server.url + path, headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_the_gauges_hold_the_pool_before_any_request(server):
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "mili:kv_cache_blocks_total") == 128


HOSTILE = [
    (CHAT, {"messages": MESSAGES, "seed": 2**64}, "seed"),
    (CHAT, {"messages": MESSAGES, "seed": 10**100}, "seed"),
    (CHAT, {"messages": MESSAGES, "seed": -2**63 - 1}, "seed"),
    (CHAT, '{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages.0.content"),
    (COMPLETIONS, '{"prompt": "x", "stop": ["\\udfff"]}', "stop.0"),
    (CHAT, {"messages": MESSAGES, "temperature": 2.5}, "temperature"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}', "temperature"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', None),
    (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "top_p": NaN}', None),
    (CHAT, '{"messages": [], "max_tokens": ' + "9" * 5000 + "}", None),
    (CHAT, "[" * 30_000 + "]" * 30_000, None),
    (CHAT, {"messages": MESSAGES, "n": 4}, "n"),
    (CHAT, {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "a\u0000"}}]}, "tools.0.function.name"),
    (CHAT, {"messages": MESSAGES, "chat_template_kwargs": {"tools": [{"name": "add"}]}}, "chat_template_kwargs"),
    (CHAT, {"messages": MESSAGES, "tool_choice": "required"}, "tool_choice"),
    (CHAT, {"messages": MESSAGES, "functions": [{"name": "add"}]}, "functions"),
    (CHAT, {"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    (CHAT, {"messages": MESSAGES, "response_format": {"type": "json_object"}}, "response_format"),
    (CHAT, {"messages": MESSAGES, "logit_bias": {"42": 100}}, "logit_bias"),
    (CHAT, {"messages": MESSAGES, "stop": ["a"] * 17}, "stop"),
    (COMPLETIONS, {"prompt": "x", "suffix": "y"}, "suffix"),
    (COMPLETIONS, {"prompt": "x", "best_of": 2}, "best_of"),
    (COMPLETIONS, {"prompt": "x", "echo": True}, "echo"),
    (COMPLETIONS, {"prompt": "x", "top_k": -5}, "top_k"),
]


@pytest.mark.parametrize("path,body,param", HOSTILE, ids=[f"{i}-{p}" for i, (_, _, p) in enumerate(HOSTILE)])
def test_hostile_input_gets_a_400_that_names_the_field(server, path, body, param):
    response = _post(server, path, body)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert "Traceback" not in error["message"] and "Error:" not in error["message"], error


@pytest.mark.parametrize("extra", [{"tool_choice": "none"}, {"tool_choice": "auto"}, {"response_format": {"type": "text"}},
                                   {"seed": 2**63 - 1, "temperature": 2}, {"seed": -2**63, "n": 3}])
def test_what_the_server_can_honour_is_accepted(server, extra):
    response = _post(server, CHAT, {"messages": MESSAGES, "max_tokens": 2, **extra})
    assert response.status_code == 200, response.text


def test_a_body_over_the_limit_gets_413_at_once(server):
    response = _post(server, COMPLETIONS, {"prompt": "word " * MAX_BODY})
    assert response.status_code == 413 and response.json()["error"]["type"] == "invalid_request_error"
    assert str(MAX_BODY) in response.json()["error"]["message"]


def test_a_prompt_that_cannot_fit_is_refused_from_its_length(server):
    response = _post(server, COMPLETIONS, {"prompt": "word " * 10_000})  # under the body limit
    assert response.status_code == 400
    assert "50000 characters" in response.json()["error"]["message"]


def test_a_prompt_that_fills_the_context_says_so_without_max_tokens(server):
    response = _post(server, CHAT, {"messages": [{"role": "user", "content": "word " * 300}]})
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and str(MAX_MODEL_LEN) in message and "no room for the completion" in message
    tokens = int(message.split("The prompt has ")[1].split(" ")[0])
    assert tokens >= MAX_MODEL_LEN, message


def test_n_counts_its_sequences_in_admission(server):
    """Capacity is max_num_seqs 2 + max_queue 1 = 3 sequences: a running n=2 leaves room for one more."""
    started, release = threading.Event(), threading.Event()
    outcome = {}

    def hold_two():
        body = {"prompt": [1, 2, 3], "n": 2, "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", server.url + COMPLETIONS, json=body, timeout=60,
                          headers={"authorization": f"Bearer {KEY}"}) as response:
            outcome["status"] = response.status_code
            for _ in response.iter_lines():
                started.set()
                if release.is_set():
                    break

    worker = threading.Thread(target=hold_two)
    worker.start()
    try:
        assert started.wait(30), outcome
        refused = _post(server, COMPLETIONS, {"prompt": [4, 5], "n": 2, "max_tokens": 1})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text
        assert "3" in refused.json()["error"]["message"]
        admitted = _post(server, COMPLETIONS, {"prompt": [4, 5], "max_tokens": 1})
        assert admitted.status_code == 200, admitted.text
    finally:
        release.set()
        worker.join(30)
    assert outcome["status"] == 200


@pytest.mark.parametrize("authorization,status", [
    (None, 401), ("Bearer wrong", 401), (f"Basic {KEY}", 401), (f"Bearer {KEY}x", 401),
    (f"Bearer {KEY}", 200), (f"bearer {KEY}", 200), (f"BEARER  {KEY}", 200),
])
def test_the_api_key_from_the_environment_is_checked_as_clients_send_it(server, authorization, status):
    headers = {"authorization": authorization} if authorization else {}
    response = httpx.get(server.url + "/v1/models", headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"


def test_models_retrieve_works_and_shows_no_paths(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.root == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    listed = _get(server, "/v1/models").json()["data"]
    assert "/" not in json.dumps(listed), listed


def test_no_cdn_pages_and_method_errors_say_what_is_allowed(server):
    for page in ("/docs", "/redoc"):
        assert httpx.get(server.url + page).status_code == 404
    wrong = httpx.delete(server.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET" and wrong.json()["error"]["message"]
    assert httpx.get(server.url + CHAT).headers["allow"] == "POST"


def test_every_response_has_a_request_id(server):
    for response in (httpx.get(server.url + "/health"), _post(server, CHAT, "{bad json")):
        assert len(response.headers["x-request-id"]) == 32


def test_the_spec_has_request_bodies_and_metrics_as_text(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    for path, model in ((CHAT, "ChatCompletionRequest"), (COMPLETIONS, "CompletionRequest")):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        properties = spec["components"]["schemas"][model]["properties"]
        assert {"max_tokens", "temperature", "seed", "n", "stream"} <= set(properties)
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert httpx.get(server.url + "/metrics").headers["content-type"].startswith("text/plain")


def test_after_all_that_the_server_is_idle_and_answers(server):
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "mili:num_requests_running") == 0 and metric(text, "mili:kv_cache_blocks_in_use") == 0
    assert metric(text, "mili:request_failure_total") == 0
    assert _post(server, CHAT, {"messages": MESSAGES, "max_tokens": 2}).status_code == 200
    assert "Traceback" not in server.log()
