"""`mili grade`: run the graders against the student's code and print a score table.

Grading runs pytest on `tests/graders/` in a fresh process with MILI_IMPL=student, so stubs
raise and only the student's code is scored. Every grader test carries
`@pytest.mark.exercise("N.M")`; this module is also the pytest plugin (`-p mili.grading`)
that selects graders by chapter or exercise and records each outcome.

Reports: `--report FILE` writes the scores as JSON to FILE and pytest's JUnit XML beside it
(FILE with the suffix `.xml`), for an instructor's gradebook.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mili.exercise import Exercise, discover, repo_root, select

GRADERS_DIR = Path("tests") / "graders"


# ---------------------------------------------------------------- the pytest plugin

def pytest_addoption(parser):
    group = parser.getgroup("mili grading")
    group.addoption("--mili-select", default=None, help="chapter ('02') or exercise ('2.1') to grade")
    group.addoption("--mili-results", default=None, help="write per-test outcomes as JSON here")


def _exercise_of(item) -> str | None:
    marker = item.get_closest_marker("exercise")
    return str(marker.args[0]) if marker and marker.args else None


def _matches(exercise_id: str | None, selector: str | None) -> bool:
    if exercise_id is None:
        return False
    if not selector:
        return True
    if "." in selector:
        return exercise_id == selector
    return int(exercise_id.split(".")[0]) == int(selector)


def pytest_collection_modifyitems(config, items):
    selector = config.getoption("--mili-select")
    kept, dropped = [], []
    for item in items:
        (kept if _matches(_exercise_of(item), selector) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    config._mili_exercise_of = {item.nodeid: _exercise_of(item) for item in kept}
    config._mili_outcomes = {}


def pytest_runtest_logreport(report):
    config = _CONFIG.get("config")
    if config is None or not hasattr(config, "_mili_outcomes"):
        return
    outcomes = config._mili_outcomes
    previous = outcomes.get(report.nodeid, {"outcome": "passed", "message": ""})
    if report.failed:
        message = ""
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            message = crash.message
        elif report.longrepr is not None:
            message = str(report.longrepr).strip().splitlines()[-1]
        previous = {"outcome": "failed", "message": message}
    elif report.skipped and previous["outcome"] != "failed":
        previous = {"outcome": "skipped", "message": str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""}
    outcomes[report.nodeid] = previous


_CONFIG: dict = {}


def pytest_configure(config):
    _CONFIG["config"] = config


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    path = config.getoption("--mili-results")
    if not path or not hasattr(config, "_mili_outcomes"):
        return
    rows = [
        {"nodeid": nodeid, "exercise": config._mili_exercise_of.get(nodeid), **result}
        for nodeid, result in config._mili_outcomes.items()
    ]
    Path(path).write_text(json.dumps(rows, indent=1))


# ---------------------------------------------------------------- the command

def _score_table(exercises: dict[str, Exercise], rows: list[dict]) -> list[dict]:
    table = []
    for ex_id, ex in exercises.items():
        mine = [r for r in rows if r["exercise"] == ex_id and r["outcome"] != "skipped"]
        passed = sum(r["outcome"] == "passed" for r in mine)
        failures = [r for r in mine if r["outcome"] == "failed"]
        hint = failures[0]["message"].strip().splitlines()[0] if failures and failures[0]["message"] else ""
        needed = re.search(r"NotImplementedError: Exercise (\d+\.\d+)", hint)
        if needed and needed.group(1) != ex_id:
            hint = f"this grader runs exercise {needed.group(1)} too, which is still a stub: do it first"
        table.append({
            "exercise": ex_id,
            "chapter": ex.chapter,
            "title": ex.title,
            "passed": passed,
            "total": len(mine),
            "score": passed / len(mine) if mine else 0.0,
            "first_failure": (failures[0]["nodeid"] + ": " + hint) if failures else ("no grader ran" if not mine else ""),
        })
    return table


def _print_table(table: list[dict], stream=None) -> None:
    stream = stream or sys.stdout  # looked up now: a default bound at import would miss a redirected stdout
    color = stream.isatty() and os.environ.get("NO_COLOR") is None
    green, red, reset = ("\033[32m", "\033[31m", "\033[0m") if color else ("", "", "")
    stream.write(f"{'exercise':<9} {'title':<44} {'tests':>7}  score\n")
    for row in table:
        tint = green if row["score"] == 1.0 else red
        stream.write(f"{row['exercise']:<9} {row['title'][:44]:<44} {row['passed']:>3}/{row['total']:<3}  "
                     f"{tint}{row['score'] * 100:5.1f}%{reset}\n")
        if row["first_failure"]:
            stream.write(f"{'':<9} {red}↳ {row['first_failure'][:200]}{reset}\n")
    total = sum(r["score"] for r in table)
    stream.write(f"{'total':<9} {'':<44} {'':>7}  {total:.2f} / {len(table)} exercises\n")


def _grader_paths(graders: Path, exercises: dict[str, Exercise], root: Path) -> list[str]:
    """Only the chapters' grader files (`test_<NN>_*.py`), so pytest imports no other chapter's oracles."""
    chapters = {ex.chapter for ex in exercises.values()}
    files = sorted(str(p.relative_to(root)) for c in chapters for p in graders.glob(f"test_{c}_*.py"))
    return files or [str(GRADERS_DIR)]


def grade(selector: str | None = None, *, report: str | None = None, root: Path | None = None,
          quiet: bool = False, extra_pytest_args: list[str] | None = None) -> dict:
    """Run the graders for `selector` on the student's code; returns {'score', 'max_score', 'exercises'}."""
    root = Path(root) if root else repo_root()
    exercises = select(discover(), selector)
    graders = root / GRADERS_DIR
    if not graders.is_dir():
        raise FileNotFoundError(f"no graders at {graders}: grading runs from a checkout of the MILI repository")
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.json"
        cmd = [sys.executable, "-m", "pytest", *_grader_paths(graders, exercises, root), "-p", "mili.grading",
               "--mili-results", str(results), "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "--tb=short", "-W", "ignore::DeprecationWarning",
               # graders need neither plugin; loading them costs ~3 s per grade (nbval pulls in jsonschema)
               "-p", "no:nbval", "-p", "no:hypothesispytest"]
        if selector:
            cmd += ["--mili-select", selector]
        if report:
            cmd += [f"--junitxml={Path(report).with_suffix('.xml').resolve()}"]
        cmd += list(extra_pytest_args or [])
        env = dict(os.environ, MILI_IMPL="student", PYTHONPATH=os.pathsep.join(
            [str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if not results.exists():
            raise RuntimeError("the graders did not run:\n" + (proc.stdout + proc.stderr)[-4000:])
        rows = json.loads(results.read_text())
    table = _score_table(exercises, rows)
    summary = {
        "selector": selector or "all",
        "score": sum(r["score"] for r in table),
        "max_score": len(table),
        "exercises": table,
    }
    if not quiet:
        _print_table(table)
    if report:
        Path(report).write_text(json.dumps(summary, indent=2))
    return summary
