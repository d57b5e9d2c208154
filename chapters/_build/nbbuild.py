"""What every chapter builder shares: collect cells in order, write the notebook without outputs.

    python chapters/_build/build_NN.py
    jupyter nbconvert --to notebook --execute --inplace chapters/NN_<name>.ipynb

Questions for the student go through `think(question, answer)`: the question becomes a numbered
"Think" cell of the notebook, the answer goes into the chapter's section of the instructor key,
docs/instructor-answers.md, which `mili release` leaves out. A builder is the single source of
both: `write` rewrites its chapter's section of the key (and leaves the other chapters' alone).
"""

import re
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CHAPTERS = Path(__file__).resolve().parents[1]
ANSWER_KEY = CHAPTERS.parent / "docs" / "instructor-answers.md"
CELLS = []
THINKS = []  # (number, section heading, question, answer)

KEY_HEADER = """# Instructor key: answers to the "Think" questions

One section per chapter: each question as the notebook asks it, then its answer. Students do not
see this file: `mili release` leaves it out of the student copy, and the notebooks hold only the
questions. Use the answers to lead the discussion after students have committed to their own.

Each chapter's section is written by its builder (`chapters/_build/build_NN.py`, the `think(...)`
calls) when the notebook is rebuilt: change a question or an answer there, not here.
`tests/test_instructor_answers.py` checks that every question of every notebook has its answer here.
"""


def md(text: str) -> None:
    CELLS.append(new_markdown_cell(text.strip("\n")))


def code(text: str) -> None:
    CELLS.append(new_code_cell(text.strip("\n")))


def _section_heading() -> str:
    for cell in reversed(CELLS):
        if cell.cell_type == "markdown":
            for line in reversed(cell.source.splitlines()):
                if line.startswith(("## ", "### ")):
                    return line.lstrip("#").strip()
    return ""


def think(question: str, answer: str) -> None:
    """A question for the student (a markdown cell "Think N.") whose answer goes to the instructor key."""
    question, answer = question.strip("\n"), answer.strip("\n")
    if not question.strip() or not answer.strip():
        raise ValueError("a Think question needs both its question and its answer")
    number = len(THINKS) + 1
    THINKS.append((number, _section_heading(), question, answer))
    lines = f"**Think {number}.** {question}".splitlines()
    CELLS.append(new_markdown_cell("\n".join(f"> {line}".rstrip() for line in lines)))


def _chapter_title() -> str:
    for cell in CELLS:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            return cell.source.splitlines()[0][2:].strip()
    return ""


def key_section(chapter: str) -> str:
    """This chapter's section of the instructor key, from the `think` calls made so far."""
    out = [f"<!-- chapter {chapter}: written by chapters/_build/build_{chapter}.py -->",
           f"## {_chapter_title() or 'Chapter ' + chapter}", ""]
    for number, heading, question, answer in THINKS:
        out += [f"### Think {number}" + (f" · {heading}" if heading else ""), ""]
        out += [f"> {line}".rstrip() for line in question.splitlines()]
        out += ["", answer, ""]
    out.append(f"<!-- end of chapter {chapter} -->")
    return "\n".join(out)


def update_answer_key(chapter: str, path: Path = ANSWER_KEY) -> None:
    """Replace (or add, in chapter order) this chapter's section of the key; other sections stay as they are."""
    text = path.read_text() if path.is_file() else KEY_HEADER
    pattern = r"(?ms)^<!-- chapter (\d\d):.*?^<!-- end of chapter \1 -->"
    sections = {m.group(1): m.group(0) for m in re.finditer(pattern, text)}
    head = re.split(r"(?m)^<!-- chapter \d\d:", text, maxsplit=1)[0].rstrip("\n")
    sections[chapter] = key_section(chapter)
    path.write_text(head + "\n\n" + "\n\n".join(sections[c] for c in sorted(sections)) + "\n")
    print("wrote", path, f"(chapter {chapter}: {len(THINKS)} answers)")


def write(name: str) -> Path:
    nb = new_notebook(cells=CELLS)
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    path = CHAPTERS / name
    nbformat.write(nb, path)
    print("wrote", path)
    if THINKS:  # a builder without think() calls leaves its chapter's section of the key alone
        update_answer_key(name[:2])
    return path
