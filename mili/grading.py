"""`mili grade`: run the graders against the student's code and print a score table.

Grading runs pytest on `tests/graders/` in a fresh process with MILI_IMPL=student, so stubs
raise and only the student's code is scored (the reference solutions cannot even be imported
there). Every grader test carries `@pytest.mark.exercise("N.M")`; this module is also the pytest
plugin (`-p mili.grading`) that selects graders by chapter or exercise and records each outcome.

Grading always ends and always explains:
- a test that runs longer than `--timeout` seconds fails with "timed out after N s" (an alarm
  inside the test; should the process be stuck where the alarm cannot reach, in C code, the
  parent kills it); the rest of that exercise's tests are not run, so one endless loop costs
  one timeout;
- a crash of the test process (a segfault in a kernel) fails the test that was running, and
  grading resumes after it in a new process;
- a grader file that cannot import the student's code fails its exercises with that error.

Reports: the table shows each failing test with its whole message (hint lines included);
`--report FILE` writes JSON (every failure in full) and JUnit XML beside it (FILE.xml), or with
`--format gradescope` Gradescope's results.json. `--extra-tests DIR` adds an instructor's
private graders; `--submissions DIR` grades many student copies (see `grade_submissions`).
"""

from __future__ import annotations

import ast
import csv
import importlib.abc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from mili.exercise import Exercise, discover, one_line_error, repo_root, select

GRADERS_DIR = Path("tests") / "graders"
DEFAULT_TIMEOUT = 60.0  # seconds per test; the slowest grader takes ~3 s on a 2-core CPU
TABLE_FAILURES = 3  # failing tests shown per exercise without --verbose
TABLE_LINES, TABLE_CHARS = 14, 1500  # per message in the table
REPORT_LINES, REPORT_CHARS = 200, 20000  # per message in the JSON report


def timeout_message(seconds: float) -> str:
    return (f"timed out after {seconds:g} s (an endless loop? an out-of-bounds access under the Triton "
            "interpreter?): the test was stopped")


# ---------------------------------------------------------------- the pytest plugin (graders' process)

try:
    from pytest import hookimpl
except ImportError:  # the rest of mili runs without pytest; only grading needs it
    def hookimpl(**options):
        return lambda function: function


class GradingTimeout(BaseException):
    """Raised in a test that ran past the timeout (a BaseException: `except Exception` won't hide it)."""


class _NoReferences(importlib.abc.MetaPathFinder):
    """While grading, the reference solutions cannot be imported: only the student's code is scored."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "solutions" or fullname.startswith("solutions."):
            raise ImportError("the reference solutions cannot be imported while grading")


def pytest_addoption(parser):
    group = parser.getgroup("mili grading")
    group.addoption("--mili-select", default=None, help="chapter ('02') or exercise ('2.1') to grade")
    group.addoption("--mili-results", default=None, help="append per-test events (JSON lines) to this file")
    group.addoption("--mili-skip", default=None, help="a file of test ids not to run again (one per line)")
    group.addoption("--mili-timeout", type=float, default=0.0, help="seconds per test (0: no limit)")


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


class _Recorder:
    """Collects each test's phases into one outcome and appends events to the results file."""

    def __init__(self, config):
        self.config = config
        self.path = config.getoption("--mili-results")
        self.timeout = config.getoption("--mili-timeout")
        self.exercise_of: dict[str, str | None] = {}
        self.outcomes: dict[str, dict] = {}
        self.timed_out: set[str] = set()

    def emit(self, event: dict) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")


_STATE: dict[str, _Recorder | None] = {"recorder": None}


def pytest_configure(config):
    _STATE["recorder"] = None
    if config.getoption("--mili-results") is None and config.getoption("--mili-select") is None:
        return  # loaded but not asked to grade
    _STATE["recorder"] = _Recorder(config)
    if not any(isinstance(f, _NoReferences) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoReferences())


def pytest_unconfigure(config):
    _STATE["recorder"] = None
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _NoReferences)]


def _recorder() -> _Recorder | None:
    return _STATE["recorder"]


def pytest_collection_modifyitems(config, items):
    recorder = _recorder()
    if recorder is None:
        return
    selector = config.getoption("--mili-select")
    skip_file = config.getoption("--mili-skip")
    skip = set(Path(skip_file).read_text().splitlines()) if skip_file else set()
    kept, dropped = [], []
    for item in items:
        keep = _matches(_exercise_of(item), selector) and item.nodeid not in skip
        (kept if keep else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    recorder.exercise_of = {item.nodeid: _exercise_of(item) for item in kept}
    recorder.emit({"event": "collected", "tests": recorder.exercise_of})


def pytest_collectreport(report):
    recorder = _recorder()
    if recorder is not None and report.failed:
        recorder.emit({"event": "collect_error", "path": report.nodeid,
                       "message": str(report.longrepr).strip()})


def pytest_runtest_logstart(nodeid, location):
    recorder = _recorder()
    if recorder is not None:
        recorder.emit({"event": "start", "nodeid": nodeid})


def pytest_runtest_setup(item):
    recorder = _recorder()
    exercise_id = _exercise_of(item)
    if recorder is not None and exercise_id in recorder.timed_out:
        import pytest

        pytest.fail(f"not run: an earlier test of exercise {exercise_id} timed out", pytrace=False)


@hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    recorder = _recorder()
    seconds = recorder.timeout if recorder is not None else 0
    armed = bool(seconds) and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if armed:
        def on_alarm(signum, frame):
            raise GradingTimeout(timeout_message(seconds) + _where(frame))

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)  # and again every second, should it be caught
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _where(frame) -> str:
    """' (at mili/cache/block_allocator.py:27)': the innermost line of the course's own code."""
    root = str(Path.cwd()) + os.sep
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(root) and os.sep + "tests" + os.sep not in filename:
            return f" (at {filename[len(root):]}:{frame.f_lineno})"
        frame = frame.f_back
    return ""


def _failure_message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.removeprefix("Failed: ")  # pytest.fail's own prefix
    if isinstance(report.longrepr, tuple):  # a skip: (path, line, reason)
        return str(report.longrepr[-1])
    return str(report.longrepr or "").strip()


def pytest_runtest_logreport(report):
    recorder = _recorder()
    if recorder is None:
        return
    previous = recorder.outcomes.get(report.nodeid, {"outcome": "passed", "message": ""})
    if report.failed and previous["outcome"] != "failed":
        message = _failure_message(report)
        kind = "timeout" if re.match(r"^(mili\.grading\.)?GradingTimeout: ", message) else None
        if kind:
            message = message.split(": ", 1)[-1]
            exercise_id = recorder.exercise_of.get(report.nodeid)
            if exercise_id:
                recorder.timed_out.add(exercise_id)
        previous = {"outcome": "failed", "message": message, "kind": kind}
    elif report.skipped and previous["outcome"] == "passed":
        previous = {"outcome": "skipped", "message": _failure_message(report)}
    recorder.outcomes[report.nodeid] = previous


def pytest_runtest_logfinish(nodeid, location):
    recorder = _recorder()
    if recorder is not None:
        result = recorder.outcomes.get(nodeid, {"outcome": "passed", "message": ""})
        recorder.emit({"event": "result", "nodeid": nodeid, "exercise": recorder.exercise_of.get(nodeid), **result})


# ---------------------------------------------------------------- running the graders (the parent)

@dataclass
class Run:
    """What the graders' processes reported: per-test rows, collection errors, output."""

    rows: dict[str, dict] = field(default_factory=dict)  # nodeid -> {exercise, outcome, message, kind}
    collect_errors: list[dict] = field(default_factory=list)
    output: str = ""
    problem: str = ""  # the graders could not run at all


def _read_events(path: Path, offset: int) -> tuple[list[dict], int]:
    if not path.exists():
        return [], offset
    with open(path, encoding="utf-8") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[: chunk.rfind("\n") + 1]
    events = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return events, offset + len(complete.encode("utf-8"))


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except (ValueError, AttributeError):
        return f"signal {-returncode}"


def _kill(proc: subprocess.Popen) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()


@dataclass
class _Attempt:
    """One pytest process: how it ended, and the test it was in the middle of, if any."""

    returncode: int = 0
    running: str | None = None
    hung: bool = False
    problem: str = ""
    output: str = ""


def _run_once(cmd: list[str], *, cwd: Path, env: dict, timeout: float, grace: float, log_path: Path,
              results: Path, run: Run, collected: dict[str, str | None]) -> _Attempt:
    """Run pytest once, following its events; kill it if a test outlives timeout + grace."""
    attempt = _Attempt()
    with open(log_path, "w+", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=hasattr(os, "killpg"))
        offset, started_at, launched = 0, 0.0, time.monotonic()
        while True:
            finished = proc.poll() is not None
            events, offset = _read_events(results, offset)
            for event in events:
                if event["event"] == "collected":
                    collected.update(event["tests"])
                elif event["event"] == "collect_error":
                    if event["path"] not in {e["path"] for e in run.collect_errors}:
                        run.collect_errors.append(event)
                elif event["event"] == "start":
                    attempt.running, started_at = event["nodeid"], time.monotonic()
                elif event["event"] == "result":
                    run.rows[event["nodeid"]] = event
                    attempt.running = None
            if finished:
                break
            now = time.monotonic()
            if timeout and attempt.running is not None and now - started_at > timeout + grace:
                attempt.hung = True
                _kill(proc)
            elif timeout and attempt.running is None and not collected and now - launched > 3 * timeout + 120:
                attempt.problem = f"the graders did not start within {3 * timeout + 120:g} s (an import that hangs?)"
                _kill(proc)
            time.sleep(0.1)
        attempt.returncode = proc.returncode
        log.seek(0)
        attempt.output = log.read()
    return attempt


def run_graders(cmd: list[str], *, cwd: Path, env: dict, timeout: float, workdir: Path,
                grace: float | None = None) -> Run:
    """Run pytest (`cmd`, without the plugin's file options) until every collected test has an
    outcome, restarting after a crash or a hang with the tests not yet run. A test still running
    `grace` seconds after its timeout (the alarm could not reach it) is killed with its process."""
    grace = max(10.0, timeout / 4) if grace is None else grace
    run = Run()
    skip_file = workdir / "skip.txt"
    collected: dict[str, str | None] = {}
    timed_out: set[str] = set()  # exercises with a test that timed out: the rest of theirs is not run
    for number in range(10_000):  # each round ends with every test done, or one more test failed
        skip_file.write_text("\n".join(run.rows))
        results = workdir / f"events-{number}.jsonl"  # each process reports into a file of its own
        # "--option=value": a separate value that names an existing file would move pytest's rootdir
        full = cmd + [f"--mili-results={results}", f"--mili-skip={skip_file}"]
        if timeout:
            full += [f"--mili-timeout={timeout}"]
        attempt = _run_once(full, cwd=cwd, env=env, timeout=timeout, grace=grace,
                            log_path=workdir / f"output-{number}.txt", results=results, run=run, collected=collected)
        run.output = attempt.output
        timed_out |= {r["exercise"] for r in run.rows.values() if r.get("kind") == "timeout" and r.get("exercise")}
        if attempt.problem:
            run.problem = attempt.problem
            break
        if attempt.running is not None:  # the process died, or was killed, in the middle of a test
            run.rows[attempt.running] = _interrupted(attempt, collected.get(attempt.running), timeout)
            if attempt.hung and collected.get(attempt.running):
                timed_out.add(collected[attempt.running])
        for nodeid, exercise_id in collected.items():  # one timeout per exercise is enough
            if nodeid not in run.rows and exercise_id in timed_out:
                run.rows[nodeid] = {"nodeid": nodeid, "exercise": exercise_id, "outcome": "failed",
                                    "message": f"not run: an earlier test of exercise {exercise_id} timed out"}
        remaining = [n for n in collected if n not in run.rows]
        if not remaining:
            break
        if attempt.running is None:  # it stopped between tests, with tests left: do not loop
            for nodeid in remaining:
                run.rows[nodeid] = {"nodeid": nodeid, "exercise": collected[nodeid], "outcome": "failed",
                                    "message": "not run: the test process stopped before this test "
                                               f"(status {attempt.returncode})"}
            break
    if not collected and not run.collect_errors and not run.problem:
        run.problem = "the graders did not run"
    return run


def _interrupted(attempt: _Attempt, exercise_id: str | None, timeout: float) -> dict:
    """The row of the test a process was running when it died (a crash) or was killed (a hang)."""
    if attempt.hung:
        message, kind = timeout_message(timeout) + " (the process had to be killed)", "timeout"
    else:
        how = (f"was killed by {_signal_name(attempt.returncode)}" if attempt.returncode < 0
               else f"exited with status {attempt.returncode}")
        message = (f"crashed: the test process {how} while running this test (a segfault in a kernel, an "
                   "out-of-bounds access, os._exit?)")
        kind = "crash"
    return {"nodeid": attempt.running, "exercise": exercise_id, "outcome": "failed", "message": message, "kind": kind}


def _graded_ids_of_file(path: Path) -> list[str]:
    """The exercise ids a grader file marks (read from its source: it may not import)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return []
    ids = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exercise"
                and node.args and isinstance(node.args[0], ast.Constant)):
            ids.add(str(node.args[0].value))
    return sorted(ids)


def _collect_error_rows(run: Run, cwd: Path) -> list[dict]:
    """A grader file that does not import fails each exercise it grades, with the cause in front."""
    rows = []
    for error in run.collect_errors:
        lines = [line for line in error["message"].splitlines()
                 if line.strip() and "<frozen" not in line and line.strip() != "???"]
        errors = [re.sub(r"^E\s+", "", line.strip()) for line in lines if re.match(r"^E\s+\w+(Error|Exception)\b", line.strip())]
        cause = errors[-1] if errors else (lines[-1].strip() if lines else "unknown error")
        files = re.findall(r'File "([^"]+)", line (\d+)', error["message"])
        where = f" ({_short_path(files[-1][0], cwd)}, line {files[-1][1]})" if files else ""
        for exercise_id in _graded_ids_of_file(cwd / error["path"]):
            rows.append({"nodeid": error["path"], "exercise": exercise_id, "outcome": "failed", "kind": "import",
                         "message": f"the grader could not import your code: {cause}{where}\n"
                                    + "\n".join(lines[-12:])})
    return rows


def _short_path(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


# ---------------------------------------------------------------- scoring and reports

def _cap(message: str, max_lines: int, max_chars: int) -> str:
    lines = message.rstrip().splitlines()
    shown = lines[:max_lines]
    text = "\n".join(shown)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    if len(lines) > max_lines:
        text += f"\n… ({len(lines) - max_lines} more lines)"
    return text


def _teaching_message(message: str, exercise_id: str) -> str:
    needed = re.search(r"NotImplementedError: Exercise (\d+\.\d+)", message)
    if needed and needed.group(1) != exercise_id:
        return (f"this grader runs exercise {needed.group(1)} too, which is still a stub: do it first\n"
                + message)
    return message


def score_table(exercises: dict[str, Exercise], rows: list[dict]) -> list[dict]:
    table = []
    for ex_id, ex in exercises.items():
        mine = [r for r in rows if r["exercise"] == ex_id and r["outcome"] != "skipped"]
        passed = sum(r["outcome"] == "passed" for r in mine)
        failures = [{"test": r["nodeid"], "kind": r.get("kind") or "failure",
                     "message": _cap(_teaching_message(r.get("message") or "", ex_id), REPORT_LINES, REPORT_CHARS)}
                    for r in mine if r["outcome"] == "failed"]
        first = failures[0] if failures else None
        table.append({
            "exercise": ex_id,
            "chapter": ex.chapter,
            "title": ex.title,
            "passed": passed,
            "total": len(mine),
            "score": passed / len(mine) if mine else 0.0,
            "status": ex.describe_progress(),
            "first_failure": (f"{first['test']}: {first['message'].splitlines()[0] if first['message'] else ''}"
                              if first else ("no grader ran" if not mine else "")),
            "failures": failures,
        })
    return table


def _short(nodeid: str) -> str:
    return nodeid.split("tests/graders/", 1)[-1]


def _group_by_message(failures: list[dict]) -> list[tuple[list[str], str]]:
    """Failures with the same message, together (a stub fails every test the same way)."""
    groups: dict[str, list[str]] = {}
    for failure in failures:
        groups.setdefault(failure["message"], []).append(failure["test"])
    return [(tests, message) for message, tests in groups.items()]


def print_table(table: list[dict], stream=None, verbose: bool = False) -> None:
    stream = stream or sys.stdout  # looked up now: a default bound at import would miss a redirected stdout
    color = stream.isatty() and os.environ.get("NO_COLOR") is None
    green, red, dim, reset = ("\033[32m", "\033[31m", "\033[2m", "\033[0m") if color else ("", "", "", "")
    stream.write(f"{'exercise':<9} {'title':<48} {'tests':>7}  score\n")
    for row in table:
        tint = green if row["score"] == 1.0 else red
        title = row["title"] if len(row["title"]) <= 48 else row["title"][:47] + "…"
        stream.write(f"{row['exercise']:<9} {title:<48} {row['passed']:>3}/{row['total']:<3}  "
                     f"{tint}{row['score'] * 100:5.1f}%{reset}\n")
        if not row["total"]:
            stream.write(f"{'':<9} {red}no grader ran{reset}\n")
        groups = _group_by_message(row["failures"])
        shown = groups if verbose else groups[:TABLE_FAILURES]
        for tests, message in shown:
            names = (f"all {len(tests)} tests" if len(tests) == row["total"] > 1 else
                     _short(tests[0]) + (f" and {len(tests) - 1} more" if len(tests) > 1 else ""))
            stream.write(f"{'':<9} {red}✗ {names}{reset}\n")
            message = message if verbose else _cap(message, TABLE_LINES, TABLE_CHARS)
            for line in message.splitlines():
                stream.write(f"{'':<11} {line}\n")
        hidden = sum(len(tests) for tests, _ in groups[len(shown):])
        if hidden:
            stream.write(f"{'':<9} {dim}… and {hidden} more failing test{'s' if hidden > 1 else ''} "
                         f"(mili grade {row['exercise']} --verbose shows them all){reset}\n")
    total = sum(r["score"] for r in table)
    stream.write(f"{'total':<9} {'':<48} {'':>7}  {total:.2f} / {len(table)} exercises\n")


def junit_xml(table: list[dict], rows: list[dict]) -> str:
    """JUnit XML, one testcase per graded test (what most autograders import)."""
    suites = ET.Element("testsuites")
    for row in table:
        mine = [r for r in rows if r["exercise"] == row["exercise"] and r["outcome"] != "skipped"]
        suite = ET.SubElement(suites, "testsuite", name=f"exercise {row['exercise']}: {row['title']}",
                              tests=str(len(mine)), failures=str(len(mine) - row["passed"]))
        for r in mine:
            case = ET.SubElement(suite, "testcase", classname=f"exercise_{row['exercise']}", name=r["nodeid"])
            if r["outcome"] == "failed":
                message = r.get("message") or ""
                failure = ET.SubElement(case, "failure", message=message.splitlines()[0] if message else "failed")
                failure.text = message
    return ET.tostring(suites, encoding="unicode")


def gradescope_results(table: list[dict]) -> dict:
    """Gradescope's results.json: one test per exercise, scored by the fraction of its tests passed."""
    tests = []
    for row in table:
        output = "\n\n".join(f"✗ {_short(f['test'])}\n{f['message']}" for f in row["failures"])
        tests.append({"name": f"{row['exercise']} {row['title']}", "number": row["exercise"],
                      "score": round(row["score"], 4), "max_score": 1.0,
                      "output": output or ("all tests passed" if row["total"] else "no grader ran")})
    return {"score": round(sum(t["score"] for t in tests), 4), "tests": tests,
            "output": f"{sum(r['score'] for r in table):.2f} / {len(table)} exercises"}


def write_report(summary: dict, rows: list[dict], path: str | Path, report_format: str = "mili") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if report_format == "gradescope":
        path.write_text(json.dumps(gradescope_results(summary["exercises"]), indent=2))
        return
    path.write_text(json.dumps(summary, indent=2))
    path.with_suffix(".xml").write_text(junit_xml(summary["exercises"], rows))


# ---------------------------------------------------------------- the command

def _grader_paths(graders: Path, exercises: dict[str, Exercise], root: Path) -> list[str]:
    """Only the chapters' grader files (`test_<NN>_*.py`), so pytest imports no other chapter's oracles."""
    chapters = {ex.chapter for ex in exercises.values()}
    files = sorted(str(p.relative_to(root)) for c in chapters for p in graders.glob(f"test_{c}_*.py"))
    return files or [str(GRADERS_DIR)]


def _grading_env(root: Path) -> dict:
    env = dict(os.environ, MILI_IMPL="student", PYTHONPATH=os.pathsep.join(
        [str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    if "TRITON_INTERPRET" not in env:
        import torch

        if not torch.cuda.is_available():
            env["TRITON_INTERPRET"] = "1"  # Triton kernels run on the CPU, in the interpreter
    return env


def grade(selector: str | None = None, *, report: str | None = None, root: Path | None = None,
          quiet: bool = False, extra_pytest_args: list[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
          verbose: bool = False, extra_tests: str | Path | None = None, report_format: str = "mili") -> dict:
    """Run the graders for `selector` on the student's code; returns {'score', 'max_score', 'exercises'}.

    `root` is the copy of the course to grade (default: this one); `extra_tests` a folder of
    further graders (an instructor's hidden tests, marked like the others); `timeout` the
    seconds each test may take (0: no limit).
    """
    root = Path(root).resolve() if root else repo_root()
    exercises = select(discover(strict=False), selector)
    graders = root / GRADERS_DIR
    if not graders.is_dir():
        raise FileNotFoundError(f"no graders at {graders}: grading runs from a copy of the MILI course")
    paths = _grader_paths(graders, exercises, root)
    if extra_tests:
        extra = Path(extra_tests).resolve()
        if not extra.is_dir():
            raise FileNotFoundError(f"--extra-tests {extra_tests}: no such folder")
        paths.append(str(extra))
    cmd = [sys.executable, "-m", "pytest", *paths, "-p", "mili.grading", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", f"--rootdir={root}", "--tb=short", "-W", "ignore::DeprecationWarning",
           *([f"-c={root / 'pyproject.toml'}"] if (root / "pyproject.toml").is_file() else []),
           "--continue-on-collection-errors",
           # graders need none of these plugins; loading them costs seconds per grade (nbval pulls in
           # jsonschema, schemathesis hypothesis)
           "-p", "no:nbval", "-p", "no:hypothesispytest", "-p", "no:schemathesis", "-p", "no:xdist"]
    if selector:
        cmd += [f"--mili-select={selector}"]
    cmd += list(extra_pytest_args or [])
    with tempfile.TemporaryDirectory(prefix="mili-grade-") as tmp:
        run = run_graders(cmd, cwd=root, env=_grading_env(root), timeout=timeout, workdir=Path(tmp))
    if run.problem and not run.rows:
        raise RuntimeError(f"{run.problem}:\n" + run.output[-4000:])
    rows = list(run.rows.values()) + _collect_error_rows(run, root)
    table = score_table(exercises, rows)
    summary = {
        "selector": selector or "all",
        "score": sum(r["score"] for r in table),
        "max_score": len(table),
        "exercises": table,
    }
    if not quiet:
        print_table(table, verbose=verbose)
    if report:
        write_report(summary, rows, report, report_format)
    return summary


# ---------------------------------------------------------------- many students at once

def find_course(folder: Path) -> Path | None:
    """The folder holding `mili/` in a student's submission (itself or one or two levels down)."""
    for depth in range(3):
        for candidate in sorted([folder] if depth == 0 else folder.glob("/".join(["*"] * depth))):
            if (candidate / "mili").is_dir():
                return candidate
    return None


def exercise_files(exercises: dict[str, Exercise]) -> list[Path]:
    """The files of `mili/` that hold exercises (all a student is meant to change)."""
    return sorted({Path(*t.module.split(".")).with_suffix(".py") for ex in exercises.values() for t in ex.targets})


def grade_submission(student: str | Path, *, selector: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                     extra_tests: str | Path | None = None, report: str | None = None, report_format: str = "mili",
                     quiet: bool = True, verbose: bool = False, base: Path | None = None) -> dict:
    """Grade one student's copy (a folder holding their `mili/`, at most two levels down) with
    this course's graders.

    The student is graded in a fresh copy of this course without its reference solutions (`base`,
    made here unless given), into which only the student's exercise files are copied: their
    graders, tests and the rest of `mili/` are not used. Returns the summary of `grade`.
    """
    from mili.release import copy_course

    student = Path(student)
    if not student.is_dir():
        raise FileNotFoundError(f"{student}: no such folder")
    exercises = select(discover(strict=False), selector)
    with tempfile.TemporaryDirectory(prefix="mili-submission-") as tmp:
        base = base or copy_course(repo_root(), Path(tmp) / "base", for_grading=True)
        workspace = Path(tmp) / "work"
        shutil.copytree(base, workspace, symlinks=True)
        course = find_course(student)
        if course is None:
            return _empty_summary(exercises, selector, "no mili/ folder in this submission")
        for rel in exercise_files(discover(strict=False)):
            if (course / rel).is_file():
                shutil.copyfile(course / rel, workspace / rel)
        try:
            return grade(selector, root=workspace, quiet=quiet, timeout=timeout, extra_tests=extra_tests,
                         report=report, report_format=report_format, verbose=verbose)
        except RuntimeError as err:
            return _empty_summary(exercises, selector, one_line_error(err))


def grade_submissions(submissions: str | Path, *, selector: str | None = None, csv_path: str | None = None,
                      report: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                      extra_tests: str | Path | None = None, quiet: bool = False) -> dict:
    """Grade every student's copy in `submissions` (one folder each), each as `grade_submission`
    does, one after the other, in processes of its own and under the per-test timeout. Writes a
    CSV (one row per student, one column per exercise) and/or a JSON report; returns
    {student: summary}."""
    from mili.release import copy_course

    submissions = Path(submissions)
    if not submissions.is_dir():
        raise FileNotFoundError(f"--submissions {submissions}: no such folder")
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise FileNotFoundError(f"{submissions} holds no folders (one per student expected)")
    exercises = select(discover(strict=False), selector)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mili-batch-") as tmp:
        base = copy_course(repo_root(), Path(tmp) / "base", for_grading=True)
        for student in students:
            summary = grade_submission(student, selector=selector, timeout=timeout, extra_tests=extra_tests,
                                       base=base)
            results[student.name] = summary
            if not quiet:
                print(f"{student.name}: {summary['score']:.2f} / {summary['max_score']}"
                      + (f" ({summary['problem']})" if summary.get("problem") else ""), flush=True)
    if csv_path:
        write_csv(results, exercises, csv_path)
    if report:
        Path(report).write_text(json.dumps(results, indent=2))
    return results


def _empty_summary(exercises: dict[str, Exercise], selector: str | None, problem: str) -> dict:
    table = score_table(exercises, [])
    for row in table:
        row["first_failure"] = problem
    return {"selector": selector or "all", "score": 0.0, "max_score": len(table), "exercises": table,
            "problem": problem}


def write_csv(results: dict[str, dict], exercises: dict[str, Exercise], path: str | Path) -> None:
    ids = list(exercises)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "score", "max_score", *ids, "problems"])
        for student, summary in results.items():
            scores = {row["exercise"]: row["score"] for row in summary["exercises"]}
            problems = sorted({f"{row['exercise']}: {fl['kind']}" for row in summary["exercises"]
                               for fl in row["failures"] if fl["kind"] in ("timeout", "crash", "import")})
            if summary.get("problem"):
                problems.insert(0, summary["problem"])
            writer.writerow([student, f"{summary['score']:.4f}", summary["max_score"],
                             *(f"{scores.get(i, 0.0):.4f}" for i in ids), "; ".join(problems)])
