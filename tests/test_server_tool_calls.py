"""Tool calls: Qwen3's `<tool_call>` blocks parsed from a text however it arrives in pieces, the answer
and the stream built from them, the tools and the tool turns rendered into the prompt, and a live
server that accepts what it supports and refuses the rest with a 400 that says why.

The tiny model does not call tools by itself, so the parsing is tested on written texts, through the
same functions the endpoint uses.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from types import SimpleNamespace

import httpx
import pytest

openai = pytest.importorskip("openai")

from mili.engine.sequence import CompletionOutput, RequestOutput
from mili.server.app import _chat_prompt, _chat_stream
from mili.server.protocol import ChatCompletionRequest, chat_completion_body
from mili.server.tool_calls import ToolCall, ToolCallParser, parse_tool_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
MESSAGES = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
TWO_CALLS = ('Let me look.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo, ° ☃"}}\n</tool_call>')
EXPECTED_CALLS = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo, ° ☃"})]


def _feed(pieces: list[str]) -> list[str | ToolCall]:
    parser, out = ToolCallParser(), []
    for piece in pieces:
        out += parser.feed(piece)
    return out + parser.finish()


def _split(text: str, rng: random.Random, parts: int) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), parts - 1))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def _calls(pieces) -> list[tuple[str, dict]]:
    return [(p.name, json.loads(p.arguments)) for p in pieces if isinstance(p, ToolCall)]


# ---------------------------------------------------------------- the parser

def test_a_whole_text_gives_its_content_and_calls_in_order():
    content, calls = parse_tool_calls(TWO_CALLS)
    assert content == "Let me look.\n\n\n" and [(c.name, json.loads(c.arguments)) for c in calls] == EXPECTED_CALLS
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in calls) and calls[0].id != calls[1].id
    assert calls[0].as_openai() == {"id": calls[0].id, "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_every_split_into_pieces_gives_the_same_result():
    rng = random.Random(13)
    splits = [[TWO_CALLS[:k], TWO_CALLS[k:]] for k in range(1, len(TWO_CALLS))]
    splits += [_split(TWO_CALLS, rng, rng.randint(3, 40)) for _ in range(300)]
    splits.append(list(TWO_CALLS))  # one character at a time
    for pieces in splits:
        out = _feed(pieces)
        assert _calls(out) == EXPECTED_CALLS, pieces
        assert "".join(p for p in out if isinstance(p, str)) == "Let me look.\n\n\n", pieces
        assert all(p != "" for p in out), "no empty content pieces"


def test_a_possible_opening_tag_is_held_back_until_the_text_tells():
    parser = ToolCallParser()
    assert parser.feed("The answer <tool") == ["The answer "]
    assert parser.feed("box> is here <") == ["<toolbox> is here "]
    assert parser.finish() == ["<"]
    parser = ToolCallParser()
    assert parser.feed("<tool_") == [] and parser.feed("call>") == []  # inside a block: nothing is decided
    assert _calls(parser.feed('{"name": "f", "arguments": {}}</tool_')) == []
    assert _calls(parser.feed("call>")) == [("f", {})] and parser.finish() == []


@pytest.mark.parametrize("block", [
    '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>',  # JSON cut short
    '<tool_call>\nnot json at all\n</tool_call>',
    '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>',  # arguments not an object
    '<tool_call>\n["f", {}]\n</tool_call>',
    '<tool_call>\n' + "[" * 5000 + "]" * 5000 + '\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n',  # never closed: the text ended
])
def test_a_malformed_block_stays_content_as_written(block):
    text = f"before {block} after" if block.endswith("</tool_call>") else f"before {block}"
    for pieces in ([text], list(text)):
        out = _feed(pieces)
        assert _calls(out) == [] and "".join(out) == text


def test_a_malformed_block_does_not_hide_a_good_one_after_it():
    text = '<tool_call>{"name": oops}</tool_call>\n<tool_call>{"name": "g", "arguments": {"x": [1]}}</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == '<tool_call>{"name": oops}</tool_call>\n' and [(c.name, c.arguments) for c in calls] == [
        ("g", '{"x": [1]}')]


def test_a_call_without_arguments_has_empty_ones():
    assert [(c.name, c.arguments) for c in parse_tool_calls('<tool_call>{"name": "now"}</tool_call>')[1]] == [
        ("now", "{}")]


# ---------------------------------------------------------------- the answer and the stream the endpoint builds

def _output(texts: list[str], reasons: list[str], token_ids: list[list[int]] | None = None) -> RequestOutput:
    token_ids = token_ids or [[7] * 3 for _ in texts]
    completions = [CompletionOutput(i, text, ids, reason) for i, (text, ids, reason) in
                   enumerate(zip(texts, token_ids, reasons))]
    return RequestOutput("chatcmpl-x", None, [1, 2, 3], completions, True)


def _body(output: RequestOutput, tool_calls: bool = True) -> dict:
    return chat_completion_body(output, completion_id="chatcmpl-x", model="tiny", created=1, tool_calls=tool_calls)


def test_the_answer_carries_the_calls_and_the_text_around_them():
    body = _body(_output([TWO_CALLS, "No tool needed.", '<tool_call>{"name": "f", "arguments": 3}</tool_call>'],
                         ["stop", "stop", "stop"]))
    called, plain, malformed = (c for c in body["choices"])
    assert called["finish_reason"] == "tool_calls" and called["message"]["content"] == "Let me look."
    calls = called["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", *call) for call in EXPECTED_CALLS]
    assert plain == {"index": 1, "message": {"role": "assistant", "content": "No tool needed."}, "logprobs": None,
                     "finish_reason": "stop"}
    assert malformed["message"] == {"role": "assistant", "content": '<tool_call>{"name": "f", "arguments": 3}</tool_call>'}
    assert malformed["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == 9


def test_only_calls_means_null_content_and_a_cut_answer_keeps_length():
    only = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n'
    cut = only + "<tool_call>\n{\"name\": \"g\", \"argum"
    first, second = _body(_output([only, cut], ["stop", "length"]))["choices"]
    assert first["message"]["content"] is None and first["finish_reason"] == "tool_calls"
    assert second["finish_reason"] == "length" and len(second["message"]["tool_calls"]) == 1
    assert second["message"]["content"] == '<tool_call>\n{"name": "g", "argum'


def test_without_tools_the_answer_is_left_as_generated():
    body = _body(_output([TWO_CALLS], ["stop"]), tool_calls=False)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": TWO_CALLS}
    assert body["choices"][0]["finish_reason"] == "stop"


def _deltas(text: str, rng: random.Random, finish_reason: str) -> list[RequestOutput]:
    """The engine's delta outputs of one choice that generates `text` in random pieces."""
    pieces = _split(text, rng, rng.randint(2, 30))
    reasons = [None] * (len(pieces) - 1) + [finish_reason]
    return [RequestOutput("r", None, [1, 2, 3], [CompletionOutput(0, piece, [5], reason)], reason is not None)
            for piece, reason in zip(pieces, reasons)]


def _stream(outputs: list[RequestOutput]) -> list[dict]:
    async def source():
        for output in outputs:
            yield output

    async def collect():
        events = _chat_stream(source(), tool_calls=True, completion_id="chatcmpl-x", model="tiny", created=1,
                                              include_usage=True)
        return [event async for event in events]

    events = asyncio.run(collect())
    assert events[-1] == "data: [DONE]\n\n"
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def test_a_stream_sends_the_content_then_each_call_whole_and_finishes_with_tool_calls():
    rng = random.Random(3)
    for _ in range(40):
        outputs = _deltas(TWO_CALLS + "\n", rng, "stop")
        *chunks, usage = _stream(outputs)
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(outputs)
        deltas = [c["choices"][0]["delta"] for c in chunks]
        reasons = [c["choices"][0]["finish_reason"] for c in chunks]
        assert deltas[0] == {"role": "assistant", "content": ""} and reasons[-1] == "tool_calls"
        assert reasons.count("tool_calls") == 1 and all(r is None for r in reasons[:-1])
        content = "".join(d.get("content") or "" for d in deltas)
        assert content == "Let me look.\n\n\n\n" and "<" not in content
        calls = [call for d in deltas for call in d.get("tool_calls", [])]
        assert [c["index"] for c in calls] == [0, 1] and all(c["id"].startswith("call_") for c in calls)
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == EXPECTED_CALLS
        assert all(set(d) in ({"content"}, {"tool_calls"}, {"role", "content"}, set()) for d in deltas)


def test_a_stream_without_calls_is_the_plain_stream():
    text = "Plain <b>text</b> with a < sign and <tool but no call."
    chunks = _stream(_deltas(text, random.Random(4), "length"))[:-1]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == text
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["length"]


def test_a_stream_with_a_malformed_block_sends_it_as_content():
    text = 'Try: <tool_call>\n{"name": "f", "arguments": {oops}}\n</tool_call>'
    chunks = _stream(_deltas(text, random.Random(5), "stop"))[:-1]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# ---------------------------------------------------------------- the prompt

@pytest.fixture(scope="module")
def tokenizer():
    from mili.tokenizer import Tokenizer
    from tests.hf_oracle import TINY_MODEL

    return Tokenizer.from_pretrained(TINY_MODEL)


def _prompt(tokenizer, **request) -> str:
    state = SimpleNamespace(tokenizer=tokenizer, max_prompt_chars=10**6)
    return _chat_prompt(state, ChatCompletionRequest.model_validate({"messages": MESSAGES, **request}))["prompt"]


def test_the_tools_are_listed_in_the_prompt_unless_tool_choice_is_none(tokenizer):
    prompt = _prompt(tokenizer, tools=[WEATHER])
    tools = prompt.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert json.loads(tools) == WEATHER and "<tool_call>" in prompt
    assert _prompt(tokenizer, tools=[WEATHER], tool_choice="none") == _prompt(tokenizer)
    assert "<tools>" not in _prompt(tokenizer)


def test_an_earlier_call_and_its_result_are_rendered_as_qwen3_was_trained(tokenizer):
    history = [*MESSAGES,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18 °C, sunny"}]
    prompt = _prompt(tokenizer, messages=history, tools=[WEATHER])
    assert prompt.endswith('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
                           "\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n18 °C, sunny\n"
                           "</tool_response><|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------- a live server

TOOL = {"type": "function", "function": {"name": "get_weather"}}  # the tools block alone is 300 tiny-model tokens


@pytest.fixture(scope="module")
def server(checkpoint_folder):
    from mili.server.launch import launch_server

    with launch_server(checkpoint_folder, args=["--served-model-name", "tiny", "--max-model-len", "512",
                                                "--num-kv-blocks", "128"]) as running:
        yield running


def _post(server, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3, **body},
                      timeout=30)


def test_a_request_with_tools_is_served_streaming_or_not(server):
    plain = _post(server, {}).json()
    with_tools = _post(server, {"tools": [TOOL]}).json()
    assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 40  # the tools are in the prompt
    unlisted = _post(server, {"tools": [TOOL], "tool_choice": "none"}).json()
    assert unlisted["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3, stream=True,
                                                 tools=[TOOL], tool_choice="auto"))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_conversation_with_tool_turns_is_served(server):
    history = [*MESSAGES,
               {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                     "function": {"name": "get_weather", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]}]
    response = _post(server, {"messages": history, "tools": [TOOL]})
    assert response.status_code == 200, response.text


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
REFUSED = [
    ({"tools": [TOOL], "tool_choice": "required"}, "tool_choice", "constrained decoding"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice",
     "constrained decoding"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice", "'auto' or 'none'"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type", None),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools.0.function.name", None),
    ({"tools": [{"type": "function", "function": {"name": "has spaces"}}]}, "tools.0.function.name", None),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "tools.0.function.parameters", None),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}, "tools.0.function.strict",
     "constrained decoding"),
    ({"tools": [TOOL] * 129}, "tools", None),
    ({"chat_template_kwargs": {"tools": [TOOL]}}, "chat_template_kwargs", "'tools' field"),
    ({"functions": [{"name": "f"}]}, "functions", "send tools instead"),
    ({"messages": [*MESSAGES, {"role": "tool", "content": "sunny"}]}, "messages.1", "tool_call_id"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": [CALL]}]}, "messages.0", "only assistant"),
    ({"messages": [*MESSAGES, {"role": "assistant", "tool_calls": [
        {**CALL, "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages.1.tool_calls.0.function.arguments", "JSON object"),
    ({"messages": [*MESSAGES, {"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}]},
     "messages.1.tool_calls.0.type", None),
]


@pytest.mark.parametrize("body,param,words", REFUSED, ids=[f"{i}-{p}" for i, (_, p, _) in enumerate(REFUSED)])
def test_what_cannot_be_honoured_gets_a_400_that_says_why(server, body, param, words):
    response = _post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert words is None or words in error["message"], error
