"""Reasoning and answer (chapter 03, exercise 3.6): a thinking model's text split as it streams.

Qwen3 thinks before it answers, inside `<think>` ... `</think>`, then writes the answer. A client
wants the two apart (OpenAI's API: `reasoning_content` beside `content`), and a streaming client
wants them as they come, so the split is made piece by piece: `ReasoningParser.feed(delta)`
returns the (reasoning, content) each new piece of text releases. `split_reasoning` does the
same for a whole text. The server calls them with `mili serve --reasoning-parser qwen3`.
"""

from __future__ import annotations

from mili.exercise import exercise

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


@exercise("3.6", "Reasoning and answer, split as they stream")
class ReasoningParser:
    """Splits one completion's text into reasoning (inside `<think>` ... `</think>`) and content
    (the answer), fed the text in pieces as it is generated.

    The rules, for the whole text (the pieces joined):
    - `<think>` counts only at the very start; everything up to the first `</think>` is reasoning.
    - A `</think>` without an opening tag (the prompt opened the block) closes reasoning that
      began with the text.
    - No `</think>` at all: a text that opened with `<think>` is all reasoning (cut off while
      thinking), any other text is all content.
    - After `</think>`, the newlines that start the answer are dropped (Qwen3 writes "\\n\\n");
      the reasoning is kept exactly as written. Later tags are ordinary text.

    Nothing is released that a later piece could change: the start of a tag waits for the next
    piece, and so does the text of a completion that has shown no tag yet (it is reasoning if a
    `</think>` follows, content if none does).

    >>> parser = ReasoningParser()
    >>> parser.feed("<think>\\n7 + 5 = 1"), parser.feed("2\\n</thi"), parser.feed("nk>\\n\\n12")
    (('\\n7 + 5 = 1', ''), ('2\\n', ''), ('', '12'))
    >>> parser.flush()
    ('', '')
    >>> parser = ReasoningParser()  # the prompt opened the block: no tag until the end of the thought
    >>> parser.feed("12 it is.\\n</th"), parser.feed("ink>\\n\\n12"), parser.flush()
    (('', ''), ('12 it is.\\n', '12'), ('', ''))
    >>> parser = ReasoningParser()  # no tags at all: content, known only at the end
    >>> parser.feed("Paris."), parser.flush()
    (('', ''), ('', 'Paris.'))
    """

    def __init__(self) -> None:
        """A parser before the first piece."""
        raise NotImplementedError("Exercise 3.6: see chapters/03_python_integration.ipynb, section 4")

    def feed(self, delta: str) -> tuple[str, str]:
        """Take the next piece of text; return the (reasoning, content) it releases, each possibly ""."""
        raise NotImplementedError("Exercise 3.6: see chapters/03_python_integration.ipynb, section 4")

    def flush(self) -> tuple[str, str]:
        """The text ended: return the (reasoning, content) still held back."""
        raise NotImplementedError("Exercise 3.6: see chapters/03_python_integration.ipynb, section 4")


def split_reasoning(text: str) -> tuple[str, str]:
    """A whole completion's (reasoning, content), by the rules of `ReasoningParser`."""
    parser = ReasoningParser()
    reasoning, content = parser.feed(text)
    rest_reasoning, rest_content = parser.flush()
    return reasoning + rest_reasoning, content + rest_content
