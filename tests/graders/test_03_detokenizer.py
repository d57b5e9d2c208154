"""Grader for exercise 3.2 (incremental detokenizer + stop strings).

Oracle: a byte-level tokenizer written out here (each id is a byte string, as in GPT-2/Qwen
BPE), whose full decode of all ids is the ground truth; stop rules are checked against
str.find on that text.
"""

import pytest

from mili.engine.detokenizer import IncrementalDetokenizer
from mili.testing import generator_for

pytestmark = pytest.mark.exercise("3.2")

EOS, EOT = 300, 301


class ByteTokenizer:
    """Ids 0-255 are single bytes; 256+ are multi-byte merges; 300/301 are special tokens."""

    merges = ("é".encode(), "你好".encode(), "🙂".encode(), b" the", b"STOP", "😀".encode()[:2], "😀".encode()[2:])

    def piece(self, i: int) -> bytes:
        if i < 256:
            return bytes([i])
        if i in (EOS, EOT):
            return b"<|eos|>" if i == EOS else b"<|eot|>"
        return self.merges[i - 256]

    def decode(self, ids, skip_special_tokens=False):
        ids = [i for i in ids if not (skip_special_tokens and i in (EOS, EOT))]
        return b"".join(self.piece(i) for i in ids).decode("utf-8", errors="replace")

    def encode_bytes(self, text: str, name: str) -> list[int]:
        """Split text's UTF-8 bytes into tokens, at random points, mixing in the merges."""
        data, ids, g = text.encode(), [], generator_for(name)
        import torch

        i = 0
        while i < len(data):
            for m, merge in enumerate(self.merges):
                if data.startswith(merge, i) and torch.rand(1, generator=g).item() < 0.5:
                    ids.append(256 + m)
                    i += len(merge)
                    break
            else:
                ids.append(data[i])
                i += 1
        return ids


TOK = ByteTokenizer()
TEXT = "Héllo 你好 🙂 the café 😀 — naïve ✓ done"
PROMPT = TOK.encode_bytes("User: hi 🙂\nAssistant:", "prompt")


def stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    deltas = []
    for i in ids:
        deltas.append(detok.add_token(i))
        if detok.finished:
            break
    return deltas


@pytest.mark.parametrize("split", range(4))
def test_streams_whole_characters_only(split):
    ids = TOK.encode_bytes(TEXT, f"text-{split}")
    detok = IncrementalDetokenizer(TOK, PROMPT)
    deltas = stream(detok, ids)
    deltas.append(detok.flush())
    broken = [d for d in deltas if "\ufffd" in d]
    assert not broken, (f"a delta contained U+FFFD (half a UTF-8 character was emitted): {broken[0]!r}. "
                        "hint: hold the new text back while the decoded window ends in '\\ufffd'")
    assert "".join(deltas) == TEXT, (f"the deltas joined should be the full text {TEXT!r}, got {''.join(deltas)!r}. "
                                     "hint: decode the new tokens together with a few before them and emit "
                                     "only the part after the previous decode")
    assert detok.text == TEXT and not detok.finished and detok.stop_reason is None


def test_text_appears_as_soon_as_characters_complete():
    ids = TOK.encode_bytes("ab🙂c", "eager")
    detok = IncrementalDetokenizer(TOK, PROMPT)
    seen = []
    for i in ids:
        detok.add_token(i)
        seen.append(detok.text)
    decoded_so_far = [TOK.decode(ids[: k + 1]).rstrip("\ufffd") for k in range(len(ids))]
    assert seen == decoded_so_far, (f"without stop strings, text should be released as soon as each character is "
                                    f"complete: expected {decoded_so_far}, got {seen}")


@pytest.mark.parametrize("stop,expected", [(["STOP"], "The answer is 42. "), (["42", "answer"], "The "),
                                           (["🙂"], "The answer is 42. STOP here, "), (["nowhere"], None)])
def test_stop_strings_end_the_text_before_them(stop, expected):
    text = "The answer is 42. STOP here, 🙂 ok"
    ids = TOK.encode_bytes(text, f"stop-{stop}")
    detok = IncrementalDetokenizer(TOK, PROMPT, stop=stop)
    deltas = stream(detok, ids)
    if expected is None:
        deltas.append(detok.flush())
        assert "".join(deltas) == text and not detok.finished
        return
    first = min(stop, key=lambda s: text.find(s) if s in text else len(text))
    assert detok.finished, f"stop={stop}: the text contains {first!r}, so generation must finish"
    assert detok.stop_reason == first, f"stop_reason should be the stop string found first, {first!r}, got {detok.stop_reason!r}"
    assert "".join(deltas) == expected == detok.text, (
        f"stop={stop}: the emitted text must end just before the stop string: expected {expected!r}, got deltas "
        f"{deltas!r}. hint: hold back len(longest stop) - 1 characters so a stop string never leaks out")
    assert detok.flush() == "", "flush after a stop string must release nothing more"


def test_eos_ids_stop_and_add_no_text():
    ids = TOK.encode_bytes("fine 🙂", "eos") + [EOT, 65, 66]
    detok = IncrementalDetokenizer(TOK, PROMPT, eos_token_ids=[EOS, EOT])
    deltas = stream(detok, ids)
    assert detok.finished and detok.stop_reason == EOT, (
        f"every id in eos_token_ids ends generation: expected stop_reason {EOT}, got {detok.stop_reason!r}")
    assert "".join(deltas) == "fine 🙂" == detok.text, f"EOS adds no text: got {detok.text!r}"
    assert detok.output_token_ids[-1] == EOT, "the EOS id is part of output_token_ids"
    with pytest.raises(ValueError):
        detok.add_token(65)


def test_ignore_eos_and_stop_token_ids():
    ids = [72, 105, EOS, 33, 66]
    detok = IncrementalDetokenizer(TOK, PROMPT, eos_token_ids=[EOS], ignore_eos=True, stop_token_ids=[66])
    deltas = stream(detok, ids)
    assert detok.finished and detok.stop_reason == 66, "stop_token_ids end generation even with ignore_eos"
    assert "".join(deltas) == "Hi!", f"with ignore_eos the EOS id is skipped as a special token: got {''.join(deltas)!r}"


def test_flush_releases_held_text():
    ids = TOK.encode_bytes("almost ST", "flush")
    detok = IncrementalDetokenizer(TOK, PROMPT, stop=["STOP"])
    deltas = stream(detok, ids)
    assert "".join(deltas) == "almost", f"'ST' could begin 'STOP', so it must be held back; released {''.join(deltas)!r}"
    assert detok.flush() == " ST" and detok.text == "almost ST", "flush releases what was held back"
