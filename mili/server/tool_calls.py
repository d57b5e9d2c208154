"""Tool calls in Qwen3's output, the hermes format its chat template asks for:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

`ToolCallParser` reads one completion's text piece by piece as it is generated and splits it
into content (text outside the blocks) and `ToolCall`s; `parse_tool_calls` does the same for a
whole text. A piece of text that may be the start of `<tool_call>` is held back until the next
piece tells. A block whose JSON does not parse, or that names no function, stays content exactly
as the model wrote it, and so does a block still open when the text ends.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (what OpenAI's clients expect)
    id: str = field(default_factory=_call_id)

    def as_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallParser:
    """Content and tool calls from one completion's text, fed in pieces: `feed(piece)` returns what
    is decided so far, `finish()` the rest. Each returns a list of strings (content, never empty,
    never two in a row) and ToolCalls, in the order of the text."""

    def __init__(self):
        self._held = ""  # outside a block: the end of the text so far, if it may begin OPEN_TAG
        self._block: list[str] | None = None  # inside a block: its text so far, after OPEN_TAG
        self._tail = ""  # inside a block: its last characters, where a closing tag may have begun

    def feed(self, text: str) -> list[str | ToolCall]:
        pieces: list[str | ToolCall] = []
        text, self._held = self._held + text, ""
        while text:
            if self._block is None:
                start = text.find(OPEN_TAG)
                if start < 0:
                    cut = len(text) - _partial_tag_length(text)
                    pieces.append(text[:cut])
                    self._held = text[cut:]
                    break
                pieces.append(text[:start])
                self._block, self._tail, text = [], "", text[start + len(OPEN_TAG):]
            else:
                text = self._close_block(text, pieces)
        return _merged(pieces)

    def finish(self) -> list[str | ToolCall]:
        rest = self._held if self._block is None else OPEN_TAG + "".join(self._block)
        self._held, self._block = "", None
        return [rest] if rest else []

    def _close_block(self, text: str, pieces: list) -> str:
        """Add `text` to the open block; if that closes it, append its call (or its text) to
        `pieces` and return what follows the block, else return ""."""
        window = self._tail + text
        end = window.find(CLOSE_TAG)
        if end < 0:
            self._block.append(text)
            self._tail = window[-(len(CLOSE_TAG) - 1):]
            return ""
        block = "".join(self._block) + text
        end += len(block) - len(window)
        self._block = None
        call = _tool_call(block[:end])
        pieces.append(call if call is not None else OPEN_TAG + block[:end] + CLOSE_TAG)
        return block[end + len(CLOSE_TAG):]


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """A whole completion's content (the text outside the calls) and its tool calls."""
    parser = ToolCallParser()
    pieces = parser.feed(text) + parser.finish()
    return "".join(p for p in pieces if isinstance(p, str)), [p for p in pieces if isinstance(p, ToolCall)]


def tool_calls_finish_reason(finish_reason: str | None) -> str | None:
    """The finish reason of a choice that called tools: the model stopped so that they run ("length"
    and "abort" still say that the answer was cut short)."""
    return "tool_calls" if finish_reason == "stop" else finish_reason


def _tool_call(body: str) -> ToolCall | None:
    """The call a block's JSON describes, or None if it is not `{"name": str, "arguments": {...}}`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    arguments = data.get("arguments", {})
    if not isinstance(arguments, dict):
        return None
    return ToolCall(data["name"], json.dumps(arguments, ensure_ascii=False))


def _partial_tag_length(text: str) -> int:
    """The length of the longest end of `text` that OPEN_TAG begins with (0 if none)."""
    for length in range(min(len(OPEN_TAG) - 1, len(text)), 0, -1):
        if text.endswith(OPEN_TAG[:length]):
            return length
    return 0


def _merged(pieces: list[str | ToolCall]) -> list[str | ToolCall]:
    merged: list[str | ToolCall] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        elif piece != "":
            merged.append(piece)
    return merged
