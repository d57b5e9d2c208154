"""Every grader fails on realistic wrong implementations of its exercise (tests/graders/mutants/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from mili.exercise import discover, repo_root
from tests.graders.mutants import CHAPTERS, chapter_mutants

ROOT = repo_root()


# exercises whose mutants were written with them, in a test module of their own
MUTANTS_ELSEWHERE = {"2.5": "tests/test_ladder_mutants.py", "2.6": "tests/test_ladder_mutants.py",
                     "3.5": "tests/test_grader_mutants_03.py",
                     "6.4": "tests/test_parallel_mutants.py"}


def test_every_exercise_of_these_chapters_has_three_mutants():
    counts = Counter(m.exercise for chapter in CHAPTERS for m in chapter_mutants(chapter))
    for exercise_id, path in MUTANTS_ELSEWHERE.items():
        assert exercise_id in (ROOT / path).read_text(), f"{path} no longer holds mutants of {exercise_id}"
    exercises = [ex_id for ex_id, ex in discover().items() if ex.chapter in CHAPTERS and ex_id not in MUTANTS_ELSEWHERE]
    few = {ex_id: counts[ex_id] for ex_id in exercises if counts[ex_id] < 3}
    assert not few, f"exercises with fewer than 3 mutants: {few}"
    names = [(m.exercise, m.name) for chapter in CHAPTERS for m in chapter_mutants(chapter)]
    assert len(names) == len(set(names)), "mutant names repeat within an exercise"


@pytest.mark.slow
def test_every_mutant_fails_its_grader(tmp_path):
    """One pytest session for all chapters: the graders are collected once, each mutant costs its test."""
    report = tmp_path / "mutants.json"
    files = sorted(str(p.relative_to(ROOT)) for chapter in CHAPTERS
                   for p in (ROOT / "tests" / "graders").glob(f"test_{chapter}_*.py"))
    # the graders need no installed pytest plugin; loading them (hypothesis, via schemathesis) costs seconds
    env = dict(os.environ, MILI_IMPL="reference", PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", *files, "-p", "tests.graders.mutants.driver",
                           "--mutants", ",".join(CHAPTERS), "--mutants-report", str(report), "-q",
                           "-p", "no:cacheprovider", "-o", "addopts="],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(report.read_text())
    wrong = [r for r in results if r["outcome"] != ("survived" if r["name"] == "control" else "killed")]
    assert not wrong, "\n".join(
        f"{r['exercise']} {r['name']} ({r['bug']}): {r['outcome']}, grader test {r['caught_by']}: {r['message'][:300]}"
        for r in wrong)
    assert len(results) == sum(len(chapter_mutants(c)) for c in CHAPTERS) + len({r["exercise"] for r in results})
