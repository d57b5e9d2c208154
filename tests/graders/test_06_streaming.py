"""Grader for exercise 6.1 (streaming chat completions: engine outputs -> SSE chunks).

Oracle: the OpenAI chunk format, checked field by field on scripted delta outputs (random text
in random pieces, several choices finishing at different steps and still listed afterwards,
steps where a choice has nothing new). The stream is parsed here independently and rebuilt into
each choice's text.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random

import pytest

from mili.engine.sequence import CompletionOutput, RequestOutput
from mili.server.streaming import chat_completion_stream
from mili.testing import seed_from

pytestmark = pytest.mark.exercise("6.1")

PIECES = ["Hello", " world", "!", " 42", " é", "你好", " 🙂", "\n", " the", " end"]
PROMPT = [5, 6, 7, 8, 9]


def script(name: str, n: int = 1, steps: int = 6, reasons=("stop", "length")) -> list[RequestOutput]:
    """Delta outputs of a request with n choices, each finishing at a random step (and listed
    afterwards with no text and its finish reason, as the engine does)."""
    rng = random.Random(seed_from(name))
    ends = [rng.randint(1, steps) for _ in range(n)]
    done = [None] * n
    outputs = []
    for step in range(1, steps + 1):
        completions = []
        for i in range(n):
            if done[i]:
                completions.append(CompletionOutput(i, "", [], done[i]))
                continue
            # sometimes a token adds no text yet (half a character held back)
            text = rng.choice(PIECES) if rng.random() < 0.75 else ""
            if step == ends[i]:
                done[i] = rng.choice(reasons)
            completions.append(CompletionOutput(i, text, [rng.randrange(1000)], done[i]))
        outputs.append(RequestOutput("req-1", None, PROMPT, completions, all(done), num_cached_tokens=0))
        if all(done):
            break
    return outputs


def whole(outputs: list[RequestOutput], index: int) -> tuple[str, str | None]:
    """Choice `index`'s whole text and its finish reason."""
    choices = [c for o in outputs for c in o.outputs if c.index == index]
    return "".join(c.text for c in choices), choices[-1].finish_reason


def run(outputs: list[RequestOutput], include_usage: bool = False) -> list[str]:
    async def source():
        for output in outputs:
            yield output

    async def collect():
        stream = chat_completion_stream(source(), completion_id="chatcmpl-abc", model="tiny", created=1700000000,
                                        include_usage=include_usage)
        if inspect.iscoroutine(stream):
            await stream  # a function that is not an async generator (the stub raises here)
            raise AssertionError("chat_completion_stream must be an async generator (use `yield`)")
        return [event async for event in stream]

    return asyncio.run(collect())


def parse(events: list[str]) -> list[dict | str]:
    parsed = []
    for k, event in enumerate(events):
        assert isinstance(event, str) and event.startswith("data: ") and event.endswith("\n\n"), (
            f"event {k} is {event!r}: every event must be 'data: <json>' followed by a blank line ('\\n\\n')")
        body = event[len("data: "):-2]
        parsed.append(body if body == "[DONE]" else json.loads(body))
    assert parsed and parsed[-1] == "[DONE]", "the stream must end with 'data: [DONE]\\n\\n'"
    assert "[DONE]" not in parsed[:-1], "'[DONE]' must come once, at the very end"
    return parsed[:-1]


def rebuild(chunks: list[dict]) -> dict[int, dict]:
    """Per choice: the text joined from the deltas, the finish reasons seen, the role chunk position."""
    choices: dict[int, dict] = {}
    for k, chunk in enumerate(chunks):
        if not chunk["choices"]:
            continue
        assert len(chunk["choices"]) == 1, f"chunk {k} has {len(chunk['choices'])} choices: send one per chunk"
        choice = chunk["choices"][0]
        state = choices.setdefault(choice["index"], {"text": "", "reasons": [], "first": choice["delta"]})
        state["text"] += choice["delta"].get("content") or ""
        if choice["finish_reason"] is not None:
            state["reasons"].append(choice["finish_reason"])
    return choices


@pytest.mark.parametrize("n", [1, 3])
def test_joined_deltas_rebuild_each_choice_and_finish_once(n):
    outputs = script(f"rebuild-{n}", n=n, steps=8)
    choices = rebuild(parse(run(outputs)))
    assert sorted(choices) == list(range(n)), f"expected chunks for choices 0..{n - 1}, got {sorted(choices)}"
    for index in range(n):
        got, (text, reason) = choices[index], whole(outputs, index)
        assert got["first"] == {"role": "assistant", "content": ""}, (
            f"choice {index}: its first chunk must have delta {{'role': 'assistant', 'content': ''}}, got {got['first']}")
        assert got["text"] == text, (f"choice {index}: the deltas join to {got['text']!r}, expected {text!r}. "
                                     "Send each output's new text of that choice, once.")
        assert got["reasons"] == [reason], (
            f"choice {index}: finish_reason values {got['reasons']}, expected exactly one: [{reason!r}] (a finished "
            "choice is still listed in later outputs)")


def test_every_chunk_has_the_openai_fields():
    for chunk in parse(run(script("fields", n=2))):
        assert set(chunk) >= {"id", "object", "created", "model", "choices"}, f"missing fields in {chunk}"
        assert (chunk["id"], chunk["object"], chunk["created"], chunk["model"]) == (
            "chatcmpl-abc", "chat.completion.chunk", 1700000000, "tiny"), f"wrong header fields in {chunk}"
        for choice in chunk["choices"]:
            assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}, f"choice fields: {set(choice)}"
            assert choice["logprobs"] is None


def test_no_chunk_without_news():
    outputs = script("no-news", n=2, steps=10)
    chunks = parse(run(outputs))
    expected = 2  # one role chunk per choice
    finished = set()
    for output in outputs:
        for c in output.outputs:
            if c.index in finished:
                continue
            if c.text or c.finish_reason is not None:
                expected += 1
            if c.finish_reason is not None:
                finished.add(c.index)
    assert len(chunks) == expected, (f"got {len(chunks)} chunks, expected {expected}: one role chunk per choice, then "
                                     "one per output in which a choice has new text or finishes, and nothing else")


def test_a_request_aborted_before_any_text():
    outputs = [RequestOutput("req-1", None, PROMPT, [CompletionOutput(0, "", [], "abort")], True)]
    chunks = parse(run(outputs))
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks]
    assert deltas == [({"role": "assistant", "content": ""}, None), ({}, "abort")], (
        f"got {deltas}: the role chunk, then an empty delta {{}} carrying finish_reason 'abort'")


def test_usage_chunk_only_when_asked():
    outputs = script("usage", n=2)
    plain = parse(run(outputs))
    assert all("usage" not in c or c["usage"] is None for c in plain) and all(c["choices"] for c in plain), (
        "without include_usage there is no usage chunk")
    chunks = parse(run(outputs, include_usage=True))
    *body, last = chunks
    assert all(c["usage"] is None for c in body), "with include_usage every chunk before the last has 'usage': null"
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": len(PROMPT), "completion_tokens": completion, "total_tokens": len(PROMPT) + completion,
        "prompt_tokens_details": {"cached_tokens": 0}}, (
        f"the usage chunk is {last}; completion_tokens counts the new token ids of every output, every choice")
