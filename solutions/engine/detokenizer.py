"""Reference for exercise 3.2: the incremental detokenizer with stop strings."""

from __future__ import annotations

from collections.abc import Iterable

# tokens decoded before the first output token, so that a leading space or a character that
# started in the prompt comes out right
_PROMPT_CONTEXT_TOKENS = 6


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
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.stop_ids = set(stop_token_ids) | (set() if ignore_eos else set(eos_token_ids))
        self.skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids)[-_PROMPT_CONTEXT_TOKENS:]
        self._ids = context  # the decode window: only its recent part is ever decoded
        self._prefix_offset = 0  # window start: decoded text before read_offset is already released
        self._read_offset = len(context)
        self._held = ""  # decoded text not yet released (it might begin a stop string)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.output_token_ids: list[int] = []
        self.finished = False
        self.stop_reason: str | int | None = None

    def add_token(self, token_id: int) -> str:
        """Take the next generated id and return the text it releases ("" while a character is
        unfinished or the text might begin a stop string). On an EOS/stop id or a stop string,
        set `finished` and `stop_reason` and release everything before the stop.
        Raises ValueError if called after `finished`."""
        if self.finished:
            raise ValueError("this sequence already finished; add_token after a stop is a bug in the caller")
        self.output_token_ids.append(token_id)
        if token_id in self.stop_ids:
            self.finished, self.stop_reason = True, token_id
            return self._release(len(self._held))
        self._ids.append(token_id)
        self._held += self._decode_new(final=False)
        for index, stop in sorted((self._held.find(s), s) for s in self.stop if s in self._held):
            self.finished, self.stop_reason = True, stop
            released = self._release(index)
            self._held = ""
            return released
        return self._release(max(0, len(self._held) - self._hold))

    def flush(self) -> str:
        """Generation ended for another reason (max_tokens, context window, abort): release and
        return the text still held back (an unfinished character decodes as U+FFFD)."""
        if not self.finished:
            self._held += self._decode_new(final=True)
        return self._release(len(self._held))

    def _decode_new(self, *, final: bool) -> str:
        """Text of the window's unread tokens, once it no longer ends in half a character."""
        decode = self.tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset:self._read_offset], skip_special_tokens=self.skip_special_tokens)
        full = decode(self._ids[self._prefix_offset:], skip_special_tokens=self.skip_special_tokens)
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not final):
            return ""
        del self._ids[:self._read_offset]  # keep the window short: the next prefix starts here
        self._prefix_offset, self._read_offset = 0, len(self._ids)
        return full[len(prefix):]

    def _release(self, count: int) -> str:
        released, self._held = self._held[:count], self._held[count:]
        self.text += released
        return released
