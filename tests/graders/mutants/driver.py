"""A pytest plugin that runs grader tests against mutants, all in one session.

    MILI_IMPL=reference python -m pytest tests/graders/test_05_*.py -p tests.graders.mutants.driver \
        --mutants 05 --mutants-report out.json

After collection it takes over the run loop: for each mutant of the chapter it builds the
mutated reference module, patches the live reference objects in place (a function gets the
mutant's code, a class the mutant's attributes, the reference module the mutant's helpers), so
that every holder of them (mili's modules, the backends, the graders) now runs the mutant; runs
the grader tests `caught_by` of the mutant's exercise, stopping at the first failure; and undoes
the patch. Nothing is re-imported, so a mutant costs about the grader tests it runs.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import linecache
import time
import types
from pathlib import Path

from _pytest.runner import runtestprotocol

from tests.graders.mutants import Mutant, chapter_mutants

ROOT = Path(__file__).resolve().parents[3]
CLASS_KEEP = {"__dict__", "__weakref__", "__module__", "__qualname__", "__doc__"}


def pytest_addoption(parser):
    parser.addoption("--mutants", default=None, help="run these chapters' grader mutants (01,05) instead of the tests")
    parser.addoption("--mutants-report", default=None, help="write the mutants' outcomes here (JSON)")


def _exercise_of(item) -> str | None:
    mark = item.get_closest_marker("exercise")
    return str(mark.args[0]) if mark and mark.args else None


def _mutated_module(reference: types.ModuleType, source: str, name: str) -> types.ModuleType:
    filename = f"{reference.__file__}.mutant-{name}.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(reference.__name__)
    module.__file__ = filename
    exec(compile(source, filename, "exec"), vars(module))
    return module


@contextlib.contextmanager
def _patched(reference: types.ModuleType, mutated: types.ModuleType, targets: list):
    """Make the live reference objects behave as the mutant's, until the block ends."""
    saved_globals = dict(vars(reference))
    undo = []
    try:
        vars(reference).update({k: v for k, v in vars(mutated).items() if not k.startswith("__")})
        for target in targets:
            live = target.reference
            new = mutated
            for part in target.qualname.split("."):
                new = getattr(new, part)
            if isinstance(live, type):
                old = {k: v for k, v in vars(live).items() if k not in CLASS_KEEP}
                undo.append(lambda live=live, old=old: [setattr(live, k, v) for k, v in old.items()])
                for key, value in vars(new).items():
                    if key not in CLASS_KEEP:
                        setattr(live, key, value)
            else:
                old = (live.__code__, live.__defaults__, live.__kwdefaults__)
                undo.append(lambda live=live, old=old: _set_code(live, *old))
                _set_code(live, new.__code__, new.__defaults__, new.__kwdefaults__)
        yield
    finally:
        for step in reversed(undo):
            step()
        vars(reference).clear()
        vars(reference).update(saved_globals)


def _set_code(function, code, defaults, kwdefaults) -> None:
    function.__code__, function.__defaults__, function.__kwdefaults__ = code, defaults, kwdefaults


def _run_items(session, items) -> tuple[int, tuple[str, str] | None]:
    """Run items until one fails; returns (how many ran, (nodeid, message) of the failure)."""
    for ran, item in enumerate(items, 1):
        others = [i for i in session.items if i.module is not item.module]
        reports = runtestprotocol(item, nextitem=others[0] if others else None, log=False)
        failed = next((r for r in reports if r.failed), None)
        if failed is not None:
            crash = getattr(failed.longrepr, "reprcrash", None)
            return ran, (item.nodeid, crash.message if crash else str(failed.longrepr)[-1500:])
    return len(items), None


def run_mutant(session, m, exercises) -> dict:
    started = time.perf_counter()
    result = run_patched(session, m, exercises)
    return {**result, "seconds": round(time.perf_counter() - started, 3)}


def run_patched(session, m, exercises) -> dict:
    result = {"exercise": m.exercise, "name": m.name, "bug": m.bug, "caught_by": m.caught_by}
    items = [i for i in session.items if _exercise_of(i) == m.exercise
             and m.caught_by in (i.originalname, i.name, "*")]
    if not items:
        return {**result, "outcome": "error", "message": f"no grader test of {m.exercise} is named {m.caught_by!r}"}
    targets = exercises[m.exercise].targets
    reference = importlib.import_module(targets[0].reference_module)
    try:
        source = m.apply(Path(reference.__file__).read_text())
        mutated = _mutated_module(reference, source, m.name)
    except Exception as err:  # noqa: BLE001 - a mutant that does not apply or does not import
        return {**result, "outcome": "error", "message": f"the mutant does not load: {type(err).__name__}: {err}"}
    with _patched(reference, mutated, targets):
        ran, failure = _run_items(session, items)
    if failure is None:
        return {**result, "outcome": "survived", "message": f"{ran} grader tests passed"}
    return {**result, "outcome": "killed", "test": failure[0], "message": failure[1][:2000]}


def pytest_runtestloop(session):
    chapters = session.config.getoption("--mutants")
    if not chapters:
        return None
    from mili.exercise import REGISTRY, current_mode, discover

    assert current_mode() == "reference", "run the mutants with MILI_IMPL=reference"
    discover()
    results = []
    for chapter in chapters.split(","):
        mutants = chapter_mutants(chapter)
        for exercise_id in sorted({m.exercise for m in mutants}):
            mine = [m for m in mutants if m.exercise == exercise_id]
            # the harness itself must be harmless: the unchanged reference, patched in, passes
            control = run_mutant(session, Mutant(exercise_id, "control", "none", (), mine[0].caught_by), REGISTRY)
            if control["outcome"] != "survived":
                control["message"] = "the unchanged reference fails under the mutant harness: " + control["message"]
                control["outcome"] = "error"
            results.append(control)
            results.extend(run_mutant(session, m, REGISTRY) for m in mine)
    session._setupstate.teardown_exact(None)
    Path(session.config.getoption("--mutants-report")).write_text(json.dumps(results, indent=1))
    return True
