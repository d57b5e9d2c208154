"""`mili release`: a student copy without references that still grades, and says what it cannot run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mili.exercise import repo_root
from mili.release import ReleaseError, copy_course, parse_chapters, solution_files

ROOT = repo_root()


def _run(root: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(root), NO_COLOR="1", **env))


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release") / "course"
    proc = _run(ROOT, "-m", "mili.cli", "release", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_release_holds_no_reference_code_and_no_instructor_material(release):
    assert not (release / "solutions").exists()
    assert not (release / "tests" / "graders" / "mutants").exists()
    assert not (release / "docs" / "instructor-guide.md").exists()
    assert not (release / "docs" / "instructor-answers.md").exists()
    assert not (release / "chapters" / "_build").exists()
    own_tests = [p.name for p in (release / "tests").glob("test_*.py")]
    assert not own_tests, f"the project's own tests need the references: {own_tests}"
    assert sorted(p.name for p in (release / "chapters").glob("*.ipynb")) == sorted(
        p.name for p in (ROOT / "chapters").glob("*.ipynb"))
    assert (release / "data" / "mili-tiny-qwen3" / "model.safetensors").is_file()
    assert "How your work is graded" in (release / "README.md").read_text()
    assert 'testpaths = ["tests/graders"]' in (release / "pyproject.toml").read_text()
    for path in (release / "mili").rglob("*.py"):
        text = path.read_text()
        assert "from solutions" not in text and "import solutions" not in text.replace("import solutions'", ""), path


@pytest.mark.slow
def test_in_the_release_graders_collect_grading_scores_zero_and_the_engine_names_what_it_needs(release):
    collected = _run(release, "-m", "pytest", "tests/graders", "--collect-only", "-q", "-p", "no:cacheprovider",
                     "-o", "addopts=")
    assert collected.returncode == 0 and " tests collected" in collected.stdout, collected.stdout[-2000:]

    graded = _run(release, "-m", "mili.cli", "grade", "05", "--report", "grades.json")
    assert "Traceback" not in graded.stdout + graded.stderr, graded.stdout + graded.stderr
    report = json.loads((release / "grades.json").read_text())
    assert report["score"] == 0 and report["max_score"] == 4
    assert all(row["total"] > 0 for row in report["exercises"]), "every exercise's graders ran"

    answer = _run(release, "-m", "mili.cli", "generate", "What is 17 + 25?")
    assert answer.returncode != 0 and "Traceback" not in answer.stderr
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1, answer.stderr
    for needed in ("1.1", "1.6", "3.4", "5.1", "5.3", "chapters/05_kv_cache.ipynb"):
        assert needed in lines[0], lines[0]


def _readable_text(folder: Path) -> str:
    """Every text a student can read in `folder`: files as they are, notebooks cell by cell (sources and outputs)."""
    from tests.test_instructor_answers import normalize

    parts = []
    for path in folder.rglob("*"):
        if path.suffix == ".ipynb":
            for cell in json.loads(path.read_text())["cells"]:
                parts.append("".join(cell["source"]))
                for output in cell.get("outputs", []):
                    parts.append(json.dumps(output, ensure_ascii=False))
        elif path.is_file() and path.suffix in (".md", ".py", ".txt", ".json", ".yml", ".yaml", ".toml"):
            parts.append(path.read_text(errors="replace"))
    return normalize("\n".join(parts))


def test_the_release_holds_the_questions_but_no_answer(release):
    from tests.test_instructor_answers import key_sections, normalize, questions

    shipped = _readable_text(release)
    answers = [(chapter, normalize(answer)) for chapter, pairs in key_sections().items() for _, answer in pairs]
    assert len(answers) >= 18
    for chapter, answer in answers:
        probe = answer[:80]  # the first 80 characters of every answer
        assert probe not in shipped, f"chapter {chapter}'s answer is in the student release: {probe}"
    for notebook in sorted((release / "chapters").glob("*.ipynb")):
        text = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
        assert len(questions(text)) >= 3, f"the release's {notebook.name} lost its questions"


def test_chosen_chapters_ship_their_references_only(tmp_path):
    files = [str(f) for f in solution_files(ROOT, ["05"])]
    assert "solutions/cache/radix_cache.py" in files and "solutions/__init__.py" in files
    assert not any(f.startswith(("solutions/model", "solutions/kernels")) for f in files), files
    out = copy_course(ROOT, tmp_path / "grading", with_solutions=["05"], for_grading=True)
    assert (out / "solutions" / "cache" / "block_manager.py").is_file() and not (out / "chapters").exists()
    assert parse_chapters("1, 03") == ["01", "03"]
    with pytest.raises(ReleaseError, match="not a chapter"):
        parse_chapters("07")
    with pytest.raises(ReleaseError, match="already exists"):
        copy_course(ROOT, out)
