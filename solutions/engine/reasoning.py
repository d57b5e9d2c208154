"""Reference for exercise 3.6: reasoning and answer, split as the text streams."""

from __future__ import annotations

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


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
        self._state = "start"  # start, reasoning, undecided (no tag seen yet), content
        self._held: list[str] = []  # text not yet released, in pieces
        self._answer_started = False  # a character other than a newline was released as content

    def feed(self, delta: str) -> tuple[str, str]:
        """Take the next piece of text; return the (reasoning, content) it releases, each possibly ""."""
        if self._state == "start":
            text = "".join(self._held) + delta
            if len(text) < len(OPEN_TAG) and OPEN_TAG.startswith(text):
                self._held = [text]
                return "", ""
            self._held = []
            if text.startswith(OPEN_TAG):
                self._state, delta = "reasoning", text[len(OPEN_TAG):]
            else:
                self._state, delta = "undecided", text
        if self._state == "content":
            return "", self._answer(delta)
        return self._until_close(delta)

    def flush(self) -> tuple[str, str]:
        """The text ended: return the (reasoning, content) still held back."""
        held, self._held = "".join(self._held), []
        return (held, "") if self._state == "reasoning" else ("", held)

    def _until_close(self, delta: str) -> tuple[str, str]:
        """Reasoning, or no tag yet: look for the closing tag in the text held and `delta`."""
        # the held text was searched already: a tag that ends in `delta` begins in its last characters
        keep = len(CLOSE_TAG) - 1
        tail = "".join(self._held[-keep:])[-keep:]
        end = (tail + delta).find(CLOSE_TAG)
        if end >= 0:
            text = "".join(self._held) + delta
            end += len(text) - len(tail) - len(delta)
            self._held, self._state = [], "content"
            return text[:end], self._answer(text[end + len(CLOSE_TAG):])
        if delta:
            self._held.append(delta)
        if self._state == "undecided":
            return "", ""
        text = "".join(self._held)  # in reasoning, at most a partial tag and `delta`
        cut = len(text) - _partial_tag_length(text, CLOSE_TAG)
        self._held = [text[cut:]] if cut < len(text) else []
        return text[:cut], ""

    def _answer(self, text: str) -> str:
        if not self._answer_started:
            text = text.lstrip("\n")
            self._answer_started = bool(text)
        return text


def _partial_tag_length(text: str, tag: str) -> int:
    """The length of the longest end of `text` that `tag` begins with (0 if none)."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0
