"""SIGTERM on a live `mili serve`: stop admitting (503), let short requests finish, abort the rest, exit 0;
a second signal aborts everything at once, and every client still gets a clean answer."""

from __future__ import annotations

import json
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from mili.server.launch import launch_server
from tests.server_helpers import metric
from tests.hf_oracle import make_checkpoint_with_tokenizer

SHUTDOWN_TIMEOUT_S = 3.0  # the window in which the test sees 503s; a busy 2-core machine needs it


def _stream(url: str, max_tokens: int, result: dict, first_chunk: threading.Event) -> None:
    body = {"prompt": [1, 2, 3, 4], "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            first_chunk.set()
            if line == "data: [DONE]":
                result["done"] = True
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                if choice["finish_reason"]:
                    result.setdefault("finish_reasons", []).append(choice["finish_reason"])
            if chunk.get("usage"):
                result["completion_tokens"] = chunk["usage"]["completion_tokens"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A long context, so that a request can still be generating when the signal comes."""
    path = tmp_path_factory.mktemp("model")
    make_checkpoint_with_tokenizer(path, max_position_embeddings=4096)
    return path


def test_sigterm_drains_then_aborts_and_exits_0(folder):
    args = ["--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S), "--max-model-len", "4096", "--num-kv-blocks", "600"]
    with launch_server(folder, args=args) as server:
        short, long = {}, {}
        events = [threading.Event(), threading.Event()]
        threads = [threading.Thread(target=_stream, args=(server.url, 40, short, events[0])),
                   threading.Thread(target=_stream, args=(server.url, 4000, long, events[1]))]
        for thread in threads:
            thread.start()
        assert all(e.wait(30) for e in events)
        signalled = time.monotonic()
        server.process.terminate()
        time.sleep(0.3)
        assert httpx.get(server.url + "/health").status_code == 503
        refused = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1})
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert server.process.wait(30) == 0
        elapsed = time.monotonic() - signalled
        for thread in threads:
            thread.join(10)
    assert not server.log_path.exists(), "launch_server leaves no log file behind"
    assert short == {"finish_reasons": ["length"], "completion_tokens": 40, "done": True}
    assert long["finish_reasons"] == ["abort"] and long["done"] and long["completion_tokens"] < 4000
    assert SHUTDOWN_TIMEOUT_S <= elapsed < SHUTDOWN_TIMEOUT_S + 10


def test_a_second_signal_exits_at_once_and_every_client_gets_a_clean_answer(folder):
    args = ["--shutdown-timeout", "60", "--max-model-len", "4096", "--num-kv-blocks", "600", "--log-level", "info"]
    with launch_server(folder, args=args) as server:
        streamed, first_chunk, full = {}, threading.Event(), {}

        def non_streaming():
            body = {"prompt": [1, 2, 3], "max_tokens": 4000, "ignore_eos": True}
            response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
            full.update(status=response.status_code, type=response.headers["content-type"], body=response.json())

        threads = [threading.Thread(target=_stream, args=(server.url, 4000, streamed, first_chunk)),
                   threading.Thread(target=non_streaming)]
        for thread in threads:
            thread.start()
        assert first_chunk.wait(30)
        deadline = time.monotonic() + 30
        while metric(httpx.get(server.url + "/metrics").text, "mili:num_requests_running") < 2:
            assert time.monotonic() < deadline, "the non-streaming request never started"
            time.sleep(0.05)
        server.process.terminate()
        time.sleep(0.5)
        signalled = time.monotonic()
        server.process.terminate()
        assert server.process.wait(30) == 0
        elapsed = time.monotonic() - signalled
        for thread in threads:
            thread.join(10)
        log = server.log()
    assert elapsed < 5, f"the second signal took {elapsed:.1f} s to stop the server:\n{log}"
    assert streamed["finish_reasons"] == ["abort"] and streamed["done"]
    assert full["status"] == 200 and full["type"] == "application/json", full
    assert full["body"]["choices"][0]["finish_reason"] == "abort"
    assert "second signal" in log and "Traceback" not in log and "CancelledError" not in log, log
