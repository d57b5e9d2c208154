"""The incremental detokenizer (chapter 03, exercise 3.2): token ids in, text deltas out.

A byte-level BPE token may hold part of a UTF-8 character (an emoji is 4 bytes, often split
over 2-4 tokens). Streaming must never show half a character, so each new token is decoded
together with a few tokens before it, and text is released only once it no longer ends in
U+FFFD (the replacement for an unfinished character). Stop strings must not reach the client
either: the last len(longest stop) - 1 characters are held back until they cannot begin one.
Reads the tokenizer's `decode(ids, skip_special_tokens=...)` only.
"""

from __future__ import annotations

from collections.abc import Iterable

from mili.exercise import exercise


@exercise("3.2", "Incremental detokenizer and stop strings")
class IncrementalDetokenizer:
    """Turns one sequence's generated token ids into text, one token at a time.

    tokenizer: anything with decode(ids, skip_special_tokens) -> str (a cut-off UTF-8 character
    decodes to U+FFFD). prompt_token_ids: the context the first output tokens are decoded after.
    stop: strings that end generation; the text ends just before the first one found.
    eos_token_ids: ids that end generation unless ignore_eos; stop_token_ids: ids that always do.
    Neither kind of stop token contributes text.

    Attributes after each call: `text` (everything emitted so far), `output_token_ids` (every id
    given to add_token, stop and EOS ids included), `finished` (bool), `stop_reason` (the stop
    string or the stop/EOS id that ended it, else None).
    """

    def __init__(self, tokenizer, prompt_token_ids: Iterable[int], *, stop: Iterable[str] = (),
                 stop_token_ids: Iterable[int] = (), eos_token_ids: Iterable[int] = (), ignore_eos: bool = False,
                 skip_special_tokens: bool = True) -> None:
        """Remember the settings; nothing is emitted yet."""
        raise NotImplementedError("Exercise 3.2: see chapters/03_python_integration.ipynb, section 3")

    def add_token(self, token_id: int) -> str:
        """Take the next generated id and return the text it releases ("" while a character is
        unfinished or the text might begin a stop string). On an EOS/stop id or a stop string,
        set `finished` and `stop_reason` and release everything before the stop.
        Raises ValueError if called after `finished`."""
        raise NotImplementedError("Exercise 3.2: see chapters/03_python_integration.ipynb, section 3")

    def flush(self) -> str:
        """Generation ended for another reason (max_tokens, context window, abort): release and
        return the text still held back (an unfinished character decodes as U+FFFD)."""
        raise NotImplementedError("Exercise 3.2: see chapters/03_python_integration.ipynb, section 3")
