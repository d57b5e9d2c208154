"""Render a Jinja chat template exactly the way Hugging Face `transformers` does.

A chat template turns a list of messages into the one prompt string the model was trained
on. Templates come from model folders, so they are untrusted code: they run in Jinja's
immutable sandbox. The environment copies `transformers.utils.chat_template_utils`:
trim_blocks + lstrip_blocks, the loopcontrols extension (break/continue), a `tojson` filter
that keeps non-ASCII text and does not HTML-escape, `raise_exception(msg)`, `strftime_now(fmt)`,
and a `{% generation %}` block (transformers uses it to find assistant tokens; here it just
renders its body). Variables: messages, tools, documents, add_generation_prompt, the named
special tokens (bos_token, eos_token, ...) and any extra keyword such as enable_thinking.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Older names clients use for an assistant's reasoning; templates read `reasoning_content`.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """The chat template is broken, or it refused the conversation (its raise_exception)."""


class _GenerationBlock(Extension):
    tags = frozenset({"generation"})

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _render_body(caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format):
    return datetime.now().strftime(format)


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ChatTemplateError(
            f"the chat template does not parse (line {err.lineno}): {err.message}"
        ) from err


def select_template(templates: str | dict[str, str], *, has_tools: bool) -> str:
    """The template to use: the only one, else 'tool_use' when tools are given, else 'default'."""
    if isinstance(templates, str):
        return templates
    if has_tools and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    raise ChatTemplateError(
        f"this model has several chat templates ({sorted(templates)}) and none named 'default'"
    )


def validate_messages(messages: Any) -> list[dict]:
    """Check the conversation's shape; return copies without None fields, reasoning aliased.

    Like recent transformers (5.24; 5.17 still passed messages through as given): keys whose
    value is None are dropped (OpenAI clients send content=None next to tool_calls), and
    reasoning sent as `thinking`/`reasoning` is also offered as `reasoning_content` (and the
    reverse under `thinking`).
    """
    if not isinstance(messages, (list, tuple)):
        raise TypeError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    cleaned = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(
                f"messages[{i}] must be a dict with 'role' and 'content', got {message!r}"
            )
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise ValueError(
                f"messages[{i}] needs a 'role' string (system, user, assistant, tool), "
                f"got {message!r}"
            )
        if "content" not in message and "tool_calls" not in message:
            raise ValueError(f"messages[{i}] ({message['role']}) has no 'content'")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise TypeError(
                f"messages[{i}]['content'] must be a string or a list of content parts, "
                f"got {type(content).__name__}"
            )
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in REASONING_FIELDS if key in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        cleaned.append(message)
    return cleaned


def render_chat_template(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **variables,
) -> str:
    """The prompt text. `messages` should come from validate_messages."""
    if tools is not None and not all(isinstance(tool, dict) for tool in tools):
        raise TypeError("tools must be a list of JSON-schema dicts")
    try:
        return compile_template(template).render(
            messages=messages,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.exceptions.TemplateError as err:
        raise ChatTemplateError(f"the chat template failed: {err}") from err
