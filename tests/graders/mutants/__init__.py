"""Realistic wrong implementations of the exercises, to prove that each grader catches them.

A mutant is a copy of an exercise's reference with one bug a student is likely to write (an
off-by-one block boundary, a missing ancestor update, an unmasked tail ...), given as text edits
of the reference module: each `old` must occur exactly once, so a mutant that no longer applies
fails loudly instead of testing nothing. `tests/test_grader_mutants.py` runs, for every mutant,
the grader test named by `caught_by` with the mutant standing in for the reference
(`driver.py`), and requires them to fail. The files `chNN.py` list each chapter's mutants.

These are copies of the reference solutions: `mili release` leaves this folder out.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

CHAPTERS = ("01", "02", "03", "04", "05", "06")


@dataclass(frozen=True)
class Mutant:
    exercise: str
    name: str
    bug: str  # what the student got wrong, in words
    edits: tuple[tuple[str, str], ...]  # (old, new) replacements in the reference module's text
    caught_by: str  # the grader test that must fail: a test function, or one parametrization of it

    def apply(self, source: str) -> str:
        for old, new in self.edits:
            count = source.count(old)
            if count != 1:
                raise ValueError(f"mutant {self.exercise} {self.name}: {old!r} occurs {count} times in the "
                                 "reference (it must occur once): update the mutant to the reference")
            source = source.replace(old, new)
        return source


def mutant(exercise: str, name: str, bug: str, old: str, new: str, caught_by: str, *more: tuple[str, str]) -> Mutant:
    return Mutant(exercise, name, bug, ((old, new), *more), caught_by)


def chapter_mutants(chapter: str) -> list[Mutant]:
    return list(importlib.import_module(f"tests.graders.mutants.ch{chapter}").MUTANTS)
