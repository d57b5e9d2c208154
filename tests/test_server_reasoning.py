"""`mili serve --reasoning-parser qwen3`: a chat answer's `<think>` block comes back as
`reasoning_content`, whole or streamed, tool calls are looked for in the answer only, and without
the flag nothing changes.

The tiny model does not think by itself, so the answers are built from written texts through the
functions the endpoint uses; one live server checks that the flag is taken and the field is there.
"""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

pytest.importorskip("fastapi")

from mili.engine.reasoning import split_reasoning
from mili.engine.sequence import CompletionOutput, RequestOutput
from mili.server import cli
from mili.server.app import _chat_stream
from mili.server.protocol import ChatCompletionRequest, chat_completion_body

THOUGHT = "<think>\nThe user wants the weather; I could call <tool_call> later.\n</think>\n\n"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
ANSWER = "It is sunny in Oslo."


def _output(texts: list[str], reasons: list[str]) -> RequestOutput:
    completions = [CompletionOutput(i, text, [7, 7], reason) for i, (text, reason) in enumerate(zip(texts, reasons))]
    return RequestOutput("chatcmpl-x", None, [1, 2, 3], completions, True)


def _messages(texts: list[str], reasons: list[str] | None = None, **parsing) -> list[dict]:
    body = chat_completion_body(_output(texts, reasons or ["stop"] * len(texts)), completion_id="chatcmpl-x",
                                model="tiny", created=1, **parsing)
    return [choice["message"] for choice in body["choices"]]


def test_the_answer_keeps_the_reasoning_apart():
    thinking, closing_only, plain, cut_off = _messages(
        [THOUGHT + ANSWER, "12 it is.\n</think>\n\n12", ANSWER, "<think>\nstill thinking"], reasoning=True)
    assert thinking == {"role": "assistant", "reasoning_content": THOUGHT[len("<think>"):-len("</think>\n\n")],
                        "content": ANSWER}
    assert closing_only == {"role": "assistant", "reasoning_content": "12 it is.\n", "content": "12"}
    assert plain == {"role": "assistant", "reasoning_content": None, "content": ANSWER}
    assert cut_off == {"role": "assistant", "reasoning_content": "\nstill thinking", "content": None}


def test_without_the_flag_the_answer_is_the_whole_text():
    assert _messages([THOUGHT + ANSWER]) == [{"role": "assistant", "content": THOUGHT + ANSWER}]


def test_tool_calls_are_read_from_the_answer_only():
    (message,) = _messages([THOUGHT + "Checking.\n" + CALL], reasoning=True, tool_calls=True)
    assert "<tool_call>" in message["reasoning_content"] and message["content"] == "Checking."
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]


def _stream(text: str, rng: random.Random, **parsing) -> list[dict]:
    """The chunks a streamed request sends when its one choice generates `text` in random pieces."""
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, min(25, len(text) - 1))))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    reasons = [None] * (len(pieces) - 1) + ["stop"]

    async def source():
        for piece, reason in zip(pieces, reasons):
            yield RequestOutput("r", None, [1], [CompletionOutput(0, piece, [5], reason)], reason is not None)

    async def collect():
        events = _chat_stream(source(), completion_id="chatcmpl-x", model="tiny", created=1, **parsing)
        return [event async for event in events]

    events = asyncio.run(collect())
    assert events[-1] == "data: [DONE]\n\n"
    return [json.loads(e[len("data: "):])["choices"][0] for e in events[:-1]]


@pytest.mark.parametrize("text", [THOUGHT + ANSWER, "12 it is.\n</think>\n\n12", ANSWER, THOUGHT],
                         ids=["thinking", "closing-tag-only", "no-tags", "no-answer"])
def test_a_stream_sends_the_reasoning_then_the_answer(text):
    rng = random.Random(text)
    for _ in range(30):
        choices = _stream(text, rng, reasoning=True)
        deltas = [c["delta"] for c in choices]
        assert deltas[0] == {"role": "assistant", "content": ""}
        assert all(set(d) in ({"reasoning_content"}, {"content"}, set()) for d in deltas[1:]), deltas
        reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
        content = "".join(d.get("content", "") for d in deltas)
        assert (reasoning, content) == split_reasoning(text)
        assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
        assert choices[-1]["finish_reason"] == "stop"


def test_a_stream_with_tools_calls_from_the_answer_only():
    rng = random.Random(7)
    for _ in range(30):
        choices = _stream(THOUGHT + CALL, rng, reasoning=True, tool_calls=True)
        deltas = [c["delta"] for c in choices]
        assert "<tool_call>" in "".join(d.get("reasoning_content", "") for d in deltas)
        calls = [call["function"]["name"] for d in deltas for call in d.get("tool_calls", [])]
        assert calls == ["get_weather"] and choices[-1]["finish_reason"] == "tool_calls"


def test_a_prompt_that_closes_the_think_block_is_not_parsed():
    request = {"messages": [{"role": "user", "content": "hi"}]}
    assert ChatCompletionRequest.model_validate(request).leaves_room_to_think()
    assert not ChatCompletionRequest.model_validate(
        {**request, "chat_template_kwargs": {"enable_thinking": False}}).leaves_room_to_think()


def test_the_flag_names_a_known_parser(capsys):
    assert cli.parse_args([]).reasoning_parser is None
    assert cli.parse_args(["--reasoning-parser", "qwen3"]).reasoning_parser == "qwen3"
    with pytest.raises(SystemExit):
        cli.parse_args(["--reasoning-parser", "deepseek"])
    assert "invalid choice" in capsys.readouterr().err


def test_a_live_server_with_the_flag_answers_with_reasoning_content(checkpoint_folder):
    from mili.server.launch import launch_server

    with launch_server(checkpoint_folder, args=["--served-model-name", "tiny", "--max-model-len", "256",
                                                "--num-kv-blocks", "64", "--reasoning-parser", "qwen3"]) as server:
        request = {"messages": [{"role": "user", "content": "Why?"}], "max_tokens": 4, "temperature": 0}
        whole = httpx.post(server.url + "/v1/chat/completions", json=request, timeout=30).json()
        message = whole["choices"][0]["message"]
        assert set(message) == {"role", "reasoning_content", "content"}, message
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**request, "stream": True},
                          timeout=30) as response:
            events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
        deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == (message["reasoning_content"] or "")
        assert "".join(d.get("content") or "" for d in deltas) == (message["content"] or "")
