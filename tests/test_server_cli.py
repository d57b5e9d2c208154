"""`mili serve`'s configuration in process: the --config file, the API key's sources, the warnings an
operator needs, flags refused before anything loads; the request-id middleware; JSON logs; the
tokenizer call that lets the event loop run."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest

pytest.importorskip("fastapi")

from mili.server import cli
from mili.server.app import _RequestIds
from mili.server.logs import REQUEST_ID, JsonFormatter, RequestIdFilter


def _parse_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err


def test_the_config_file_sets_every_flag_and_flags_override_it(tmp_path, monkeypatch):
    monkeypatch.delenv(cli.API_KEY_ENV, raising=False)
    config = tmp_path / "server.yaml"
    config.write_text("max-queue: 7\nmax_n: 2\nno-prefix-caching: true\nlog-format: json\nhost: 0.0.0.0\n"
                      "max-model-len: null\n")
    args = cli.parse_args(["--config", str(config), "--max-queue", "9"])
    assert (args.max_queue, args.max_n, args.no_prefix_caching, args.log_format, args.host) == (9, 2, True, "json",
                                                                                               "0.0.0.0")
    assert args.max_model_len is None


@pytest.mark.parametrize("text,message", [
    ("max-queues: 3\n", "unknown key 'max-queues'"),
    ("max-queue: -1\n", "must be >= 0"),
    ("port: 99999\n", "1..65535"),
    ("no-prefix-caching: 1\n", "must be true or false"),
    ("log-format: xml\n", "invalid choice"),
    ("- a list\n", "must be a mapping"),
    ("max-queue: [1, 2]\n", "single value"),
])
def test_a_bad_config_file_is_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "server.yaml"
    config.write_text(text)
    assert message in _parse_error(["--config", str(config)], capsys)


@pytest.mark.parametrize("argv,message", [
    (["--port", "99999"], "1..65535"),
    (["--port", "0"], "1..65535"),
    (["--seed", str(2**64)], "signed 64-bit integer"),
    (["--device", "quantum"], "auto, cpu, cuda or cuda:N"),
])
def test_bad_flags_are_refused_before_anything_loads(capsys, argv, message):
    assert message in _parse_error(argv, capsys)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is here")
def test_cuda_without_cuda_and_triton_without_the_interpreter_are_refused(capsys, monkeypatch):
    assert "CUDA is not available" in _parse_error(["--device", "cuda"], capsys)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in _parse_error(["--backend", "triton"], capsys)


def test_the_api_key_comes_from_the_flag_the_file_or_the_environment(tmp_path, monkeypatch, capsys):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv(cli.API_KEY_ENV, "from-env")
    assert cli.parse_args([]).api_key == "from-env"
    assert cli.parse_args(["--api-key-file", str(key_file)]).api_key == "from-file"
    assert cli.parse_args(["--api-key-file", str(key_file), "--api-key", "from-flag"]).api_key == "from-flag"
    monkeypatch.setenv(cli.API_KEY_ENV, "  ")
    assert "is empty" in _parse_error([], capsys)
    monkeypatch.delenv(cli.API_KEY_ENV)
    assert cli.parse_args([]).api_key is None
    assert "no API key" in _parse_error(["--require-api-key"], capsys)
    assert "--api-key-file" in _parse_error(["--api-key-file", str(tmp_path / "missing")], capsys)


@pytest.fixture
def main_without_serving(monkeypatch):
    """cli.main up to the point where uvicorn would start; the root logger restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(cli.DrainingServer, "run", lambda self: None)
    yield cli.main
    root.handlers[:], root.level = handlers, level


@pytest.mark.parametrize("argv,env_key,warned", [
    (["--host", "0.0.0.0"], None, True),
    (["--host", "192.0.2.7"], None, True),
    (["--host", "0.0.0.0"], "k", False),
    (["--host", "127.0.0.1"], None, False),
    (["--host", "::1"], None, False),
    (["--host", "localhost"], None, False),
])
def test_binding_beyond_loopback_without_a_key_warns(main_without_serving, monkeypatch, capsys, argv, env_key,
                                                     warned):
    if env_key:
        monkeypatch.setenv(cli.API_KEY_ENV, env_key)
    else:
        monkeypatch.delenv(cli.API_KEY_ENV, raising=False)
    assert main_without_serving(argv) == 0
    assert ("without an API key" in capsys.readouterr().err) == warned


def test_a_key_on_the_command_line_warns_that_ps_shows_it(main_without_serving, capsys):
    main_without_serving(["--api-key", "secret"])
    assert "visible to every user" in capsys.readouterr().err


def test_json_logs_carry_the_request_id():
    record = logging.LogRecord("mili.server", logging.ERROR, __file__, 1, "failed: %s", ("boom",), None)
    record.request_id = "abc123"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed: boom" and entry["request_id"] == "abc123" and entry["level"] == "ERROR"


async def _call(app, path="/x"):
    """Run an ASGI app on one GET; return the messages it sent."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
    return sent


def test_an_unhandled_error_is_a_500_that_names_only_the_request_id(caplog):
    caplog.handler.addFilter(RequestIdFilter())  # as configure_logging's handler does
    seen = {}

    async def failing(scope, receive, send):
        seen["id"] = REQUEST_ID.get()
        raise RuntimeError("secret internals")

    sent = asyncio.run(_call(_RequestIds(failing)))
    start, body = sent[0], json.loads(sent[1]["body"])
    assert start["status"] == 500 and (b"x-request-id", seen["id"].encode()) in start["headers"]
    assert "secret" not in json.dumps(body) and "RuntimeError" not in json.dumps(body)
    assert seen["id"] in body["error"]["message"]
    assert "secret internals" in caplog.text and caplog.records[-1].request_id == seen["id"]


def test_a_request_cancelled_by_a_stopping_server_gets_json_not_text(caplog):
    async def cancelled(scope, receive, send):
        raise asyncio.CancelledError

    sent = asyncio.run(_call(_RequestIds(cancelled)))
    assert sent[0]["status"] == 503 and json.loads(sent[1]["body"])["error"]["type"] == "service_unavailable"
    assert "Traceback" not in caplog.text


def test_tokenizing_a_long_prompt_lets_other_threads_run():
    from mili.exercise import repo_root
    from mili.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(repo_root() / "data" / "mili-tiny-qwen3")
    text = "What is 17 + 25? The answer is 42. " * 12_000
    assert tokenizer.encode_releasing_gil(text[:5000]) == tokenizer.encode(text[:5000])
    ticks, done = [], threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.005)

    thread = threading.Thread(target=ticker)
    thread.start()
    started = time.perf_counter()
    tokenizer.encode_releasing_gil(text)
    elapsed = time.perf_counter() - started
    done.set()
    thread.join()
    during = [t for t in ticks if started < t < started + elapsed]
    assert len(during) >= min(10, elapsed / 0.005 / 4), (
        f"only {len(during)} ticks in {elapsed:.2f} s of tokenizing: the tokenizer held the GIL")
