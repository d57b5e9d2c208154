"""Grader for exercise 3.6 (reasoning and answer, split as the text streams).

Oracle: `whole_split` below, the rules applied to the whole text at once with str.partition.
Every text is fed to the parser cut into deltas in many ways (every cut in two, random cuts,
one character at a time); whatever the cuts, the deltas must add up to the oracle's split.
"""

import random

import pytest

from mili.engine.reasoning import ReasoningParser

pytestmark = pytest.mark.exercise("3.6")

OPEN, CLOSE = "<think>", "</think>"


def whole_split(text: str) -> tuple[str, str]:
    opened = text.startswith(OPEN)
    body = text[len(OPEN):] if opened else text
    reasoning, tag, answer = body.partition(CLOSE)
    if tag:
        return reasoning, answer.lstrip("\n")
    return (body, "") if opened else ("", text)


# name -> text; each one a case a parser gets wrong in its own way
TEXTS = {
    "thinking": "<think>\nThe user asks 7 + 5. That is 12.\n</think>\n\nThe answer is 12.",
    "closing tag only": "7 + 5 = 12, so the answer is 12.\n</think>\n\n12",
    "no tags": "Paris is the capital of France.\n\nIt is on the Seine.",
    "cut off while thinking": "<think>\nLet me count the letters: s, t, r",
    "empty reasoning": "<think>\n\n</think>\n\nHello!",
    "look-alike tags": "<thinker> and </thin k> are not tags; a < b, c <t d",
    "tags after the answer": "<think>plan</think>\n\nWrite </think> or <think> literally.",
    "newlines inside the answer": "<think>ok</think>\n\n\nline 1\n\nline 2\n",
    "answer starts with a space": "<think>ok</think> \n answer",
    "only the opening tag": "<think>",
    "only the closing tag": "</think>",
    "almost an opening tag": "<thin",
    "ends in half a closing tag": "<think>still going </thi",
    "unicode": "<think>\n数一数：🙂🙂\n</think>\n\n两个 🙂",
}


def feed_all(deltas: list[str]) -> tuple[list[tuple[str, str]], tuple[str, str]]:
    parser = ReasoningParser()
    steps = []
    for delta in deltas:
        out = parser.feed(delta)
        assert isinstance(out, tuple) and len(out) == 2 and all(isinstance(s, str) for s in out), (
            f"feed must return a tuple (reasoning, content) of two strings, got {out!r}")
        steps.append(out)
    final = parser.flush()
    assert isinstance(final, tuple) and len(final) == 2, f"flush must return (reasoning, content), got {final!r}"
    return steps, final


def hints_for(text: str, expected: tuple[str, str], got: tuple[str, str], steps: list[tuple[str, str]]) -> list[str]:
    hints = []
    for tag in (OPEN, CLOSE):
        cut_tag = any(field.endswith(tag[:k]) for step in steps for field in step for k in range(1, len(tag)))
        if tag in text and cut_tag:
            hints.append(f"a delta that ends in part of {tag!r} must be held back until the next one says "
                         "whether it is the tag")
        elif sum(field.count(tag) for field in got) > sum(field.count(tag) for field in expected):
            hints.append(f"{tag!r} marks where the reasoning begins or ends; it is part of neither")
    if not text.startswith(OPEN) and CLOSE in text and expected[0] not in got[0]:
        hints.append("without an opening tag, the text before '</think>' is reasoning: hold it back until "
                     "'</think>' or the end decides")
    if CLOSE in text and expected[1] and expected[1] not in got[1]:
        hints.append("what follows '</think>' is content, in the delta that closes the block too; only the "
                     "newlines that begin it are dropped")
    return hints


def check(name: str, deltas: list[str]) -> None:
    text = "".join(deltas)
    steps, final = feed_all(deltas)
    reasoning = "".join(r for r, _ in steps) + final[0]
    content = "".join(c for _, c in steps) + final[1]
    expected = whole_split(text)
    if (reasoning, content) == expected:
        return
    trace = [f"    feed({d!r}) -> {s!r}" for d, s in zip(deltas, steps)]
    trace = "\n".join(trace[:30] + ["    ..."] * (len(trace) > 30) + [f"    flush() -> {final!r}"])
    hints = hints_for(text, expected, (reasoning, content), steps)
    pytest.fail(f"{name}: {text!r} cut into {len(deltas)} deltas should split into reasoning {expected[0]!r} and "
                f"content {expected[1]!r}, got reasoning {reasoning!r} and content {content!r}.\n{trace}\n"
                + "hint: " + "; ".join(hints or ["compare the trace with whole_split's rules"]))


@pytest.mark.parametrize("name", TEXTS)
def test_whole_text_in_one_delta(name):
    check(name, [TEXTS[name]])


@pytest.mark.parametrize("name", TEXTS)
def test_every_cut_in_two(name):
    text = TEXTS[name]
    for cut in range(len(text) + 1):
        check(name, [text[:cut], text[cut:]])


@pytest.mark.parametrize("name", TEXTS)
def test_one_character_at_a_time(name):
    check(name, list(TEXTS[name]))


@pytest.mark.parametrize("name", TEXTS)
def test_random_cuts(name):
    text, rng = TEXTS[name], random.Random(name)
    for _ in range(40):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 8))))
        check(name, [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])


def test_empty_deltas_change_nothing():
    text = TEXTS["thinking"]
    check("thinking", ["", *[c for ch in text for c in (ch, "")]])


def test_streams_without_waiting_for_the_end():
    """A thinking text streams: reasoning and content come out as they are written, not at flush."""
    text = TEXTS["thinking"]
    parser, reasoning, content = ReasoningParser(), "", ""
    for i, ch in enumerate(text, start=1):
        r, c = parser.feed(ch)
        reasoning, content = reasoning + r, content + c
        want_reasoning, want_content = whole_split(text[:i]) if CLOSE in text[:i] else (text[len(OPEN):i], "")
        if len(want_reasoning) - len(reasoning) > len(CLOSE) - 1:
            pytest.fail(f"after feeding {text[:i]!r} one character at a time, only {reasoning!r} of the reasoning was "
                        "released. hint: inside <think>, hold back only what may begin '</think>' (at most 7 characters)")
        if CLOSE in text[:i] and content != want_content:
            pytest.fail(f"after feeding {text[:i]!r}, the content released should be {want_content!r}, got "
                        f"{content!r}. hint: once '</think>' is seen, every new character is content at once "
                        "(only the newlines that begin the answer are dropped)")


def test_flush_after_the_answer_releases_nothing():
    parser = ReasoningParser()
    parser.feed(TEXTS["thinking"])
    assert parser.flush() == ("", ""), "once the answer has been released, nothing is left to flush"
