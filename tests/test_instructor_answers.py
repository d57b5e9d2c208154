"""The instructor key: every question a chapter asks has its answer in docs/instructor-answers.md,
and the notebooks hold only the questions."""

from __future__ import annotations

import json
import re

import pytest

from mili.exercise import repo_root

ROOT = repo_root()
KEY = ROOT / "docs" / "instructor-answers.md"
NOTEBOOKS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def normalize(text: str) -> str:
    """Markdown without blockquote marks, with every run of white space one space."""
    text = re.sub(r"(?m)^\s*>\s?", "", text)
    return " ".join(text.split())


def markdown(notebook) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def questions(text: str) -> list[str]:
    """The questions a notebook asks: "Think N." cells (what `think()` writes), and, for a notebook
    not yet rebuilt that way, "*Question:*", "**Question.**" and the items of a "**Questions.**" list."""
    found = re.findall(r"(?m)^> \*\*Think \d+\.\*\*", text)
    found += re.findall(r"\*Question:\*|\*\*Question\.\*\*", text)
    for block in re.findall(r"\*\*Questions\.\*\*\n((?:\d+\. .*\n?(?: {2,}.*\n?)*)+)", text):
        found += re.findall(r"(?m)^\d+\. ", block)
    return found


def key_sections() -> dict[str, list[tuple[str, str]]]:
    """chapter -> [(question, answer)] from the key."""
    text = KEY.read_text()
    sections = {}
    for chapter, body in re.findall(r"(?ms)^<!-- chapter (\d\d):.*?-->\n(.*?)^<!-- end of chapter \1 -->", text):
        entries = re.split(r"(?m)^### ", body)[1:]
        pairs = []
        for entry in entries:
            lines = entry.split("\n")[1:]
            quote = [line for line in lines if line.startswith(">")]
            answer = [line for line in lines if line.strip() and not line.startswith(">")]
            pairs.append(("\n".join(quote), "\n".join(answer)))
        sections[chapter] = pairs
    return sections


def test_every_chapter_asks_at_least_three_questions_and_none_carries_its_answer():
    assert len(NOTEBOOKS) == 6, NOTEBOOKS
    for notebook in NOTEBOOKS:
        text = markdown(notebook)
        assert len(questions(text)) >= 3, f"{notebook.name} asks {len(questions(text))} questions"
        assert "<details>" not in text, f"{notebook.name} folds an answer into the student's notebook"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_the_key_answers_every_question_of_the_chapter(notebook):
    sections = key_sections()
    chapter = notebook.name[:2]
    assert chapter in sections, f"docs/instructor-answers.md has no section for chapter {chapter}"
    text = markdown(notebook)
    asked, answered = questions(text), sections[chapter]
    assert len(answered) == len(asked), (
        f"{notebook.name} asks {len(asked)} questions, the key answers {len(answered)}: give every new "
        "question its answer (think(question, answer) in the chapter's builder)")
    body = normalize(text)
    for question, answer in answered:
        assert question.strip() and answer.strip(), f"chapter {chapter}: an entry without question or answer"
        quoted = normalize(question)
        quoted = re.sub(r"^\*\*Think \d+\.\*\* ", "", quoted)
        assert quoted in body, f"chapter {chapter}: the key quotes a question the notebook does not ask: {quoted[:90]}"


def test_the_key_has_no_section_without_a_chapter():
    assert set(key_sections()) == {p.name[:2] for p in NOTEBOOKS}
