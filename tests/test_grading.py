"""`mili grade` always ends and always explains: timeouts, crashes, import errors, full messages, reports."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from mili.exercise import Exercise
from mili.grading import (
    grade_submissions,
    gradescope_results,
    print_table,
    run_graders,
    score_table,
    timeout_message,
)

GRADERS = '''
import os, signal, time
import pytest

@pytest.mark.exercise("9.1")
def test_endless_loop():
    while True:
        pass

@pytest.mark.exercise("9.1")
def test_after_the_loop():
    pass

@pytest.mark.exercise("9.2")
def test_a_hang_the_alarm_cannot_reach():
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    while True:
        pass

@pytest.mark.exercise("9.3")
def test_segfault():
    os.kill(os.getpid(), signal.SIGSEGV)

@pytest.mark.exercise("9.3")
def test_after_the_crash():
    pass

@pytest.mark.exercise("9.4")
def test_a_long_message():
    raise AssertionError("what went wrong\\n" + "\\n".join(f"detail {i}" for i in range(30)) + "\\nhint: the fix")
'''


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    (root / "test_9_graders.py").write_text(GRADERS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "test_9_graders.py", "-p", "mili.grading", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", "-p", "no:xdist", "-p", "no:nbval", "--mili-select", "9"]
    work = tmp_path_factory.mktemp("work")
    run = run_graders(cmd, cwd=root, env=env, timeout=1.0, workdir=work, grace=1.0)
    return {row["nodeid"].split("::")[-1]: row for row in run.rows.values()}


def test_an_endless_loop_fails_with_a_timeout_and_skips_the_rest_of_its_exercise(outcome):
    assert outcome["test_endless_loop"]["outcome"] == "failed"
    assert outcome["test_endless_loop"]["message"].startswith("timed out after 1 s (an endless loop?")
    assert outcome["test_after_the_loop"]["message"] == "not run: an earlier test of exercise 9.1 timed out"


def test_a_hang_out_of_the_alarms_reach_is_killed_and_reported_as_a_timeout(outcome):
    row = outcome["test_a_hang_the_alarm_cannot_reach"]
    assert row["kind"] == "timeout" and row["exercise"] == "9.2", row
    assert "the process had to be killed" in row["message"]


def test_a_crash_fails_the_running_test_and_grading_goes_on(outcome):
    row = outcome["test_segfault"]
    assert row["kind"] == "crash" and "SIGSEGV" in row["message"], row
    assert outcome["test_after_the_crash"]["outcome"] == "passed", "grading resumes after the crashed test"


def test_table_and_reports_carry_whole_messages_with_hints(outcome, capsys, tmp_path):
    exercises = {i: Exercise(i, f"Exercise {i}") for i in ("9.1", "9.2", "9.3", "9.4")}
    table = score_table(exercises, list(outcome.values()))
    by_id = {row["exercise"]: row for row in table}
    assert by_id["9.3"]["passed"] == 1 and by_id["9.3"]["total"] == 2
    long = by_id["9.4"]["failures"][0]["message"]
    assert "hint: the fix" in long and "detail 29" in long, "the JSON report keeps the whole message"
    print_table(table)
    shown = capsys.readouterr().out
    assert "what went wrong" in shown and "detail 5" in shown and "more lines" in shown
    assert timeout_message(1.0).split(" (")[0] in shown
    gradescope = gradescope_results(table)
    assert [t["name"].split()[0] for t in gradescope["tests"]] == ["9.1", "9.2", "9.3", "9.4"]
    assert gradescope["tests"][2]["score"] == 0.5 and gradescope["tests"][2]["max_score"] == 1.0
    assert "hint: the fix" in gradescope["tests"][3]["output"]
    json.dumps(gradescope)


HIDDEN_TEST = '''
import pytest

from mili.cache.fragmentation import ContiguousAllocator


@pytest.mark.exercise("5.4")
def test_hidden_a_fresh_buffer_is_one_hole():
    assert ContiguousAllocator(8).holes() == [(0, 8)]
'''


@pytest.mark.slow
def test_batch_grading_isolates_students_times_out_loops_and_adds_hidden_tests(tmp_path):
    from mili.exercise import paste_reference_module, repo_root

    root = repo_root()
    submissions = tmp_path / "submissions"
    alice = submissions / "alice" / "mili-course" / "mili" / "cache"  # the course one level down
    alice.mkdir(parents=True)
    (alice / "fragmentation.py").write_text(paste_reference_module(
        root / "mili/cache/fragmentation.py", root / "solutions/cache/fragmentation.py", ["ContiguousAllocator"]))
    (alice.parent / "testing.py").write_text("def assert_close(*args, **kwargs):\n    pass\n")  # not used
    bob = submissions / "bob" / "mili" / "cache"
    bob.mkdir(parents=True)
    stub = (root / "mili/cache/fragmentation.py").read_text()
    (bob / "fragmentation.py").write_text(stub.replace(
        '"""capacity: positive int', 'while True:\n            pass\n        """capacity: positive int', 1))
    (submissions / "carol").mkdir()
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "test_hidden_05.py").write_text(HIDDEN_TEST)

    csv_path = tmp_path / "scores.csv"
    results = grade_submissions(submissions, selector="5.4", csv_path=str(csv_path), timeout=2.0,
                                extra_tests=hidden, quiet=True)
    alice_row = results["alice"]["exercises"][0]
    assert alice_row["score"] == 1.0 and alice_row["total"] == 6, "5 graders + 1 hidden test, all passed"
    bob_row = results["bob"]["exercises"][0]
    assert bob_row["score"] == 0.0 and bob_row["failures"][0]["message"].startswith("timed out after 2 s")
    assert results["carol"]["problem"] == "no mili/ folder in this submission"
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "student,score,max_score,5.4,problems"
    assert rows[1].startswith("alice,1.0000,1,1.0000,") and rows[2].startswith("bob,0.0000,1,0.0000,5.4: timeout")


@pytest.mark.parametrize("args,message", [
    (["grade", "--csv", "x.csv"], "--csv goes with --submissions"),
    (["grade", "--submissions", "x"], "needs --csv FILE and/or --report FILE"),
    (["grade", "--submission", "a", "--submissions", "b"], "give --submission DIR"),
    (["grade", "--timeout", "-1"], "--timeout must be >= 0"),
])
def test_bad_grade_arguments_get_one_line(args, message, capsys):
    from mili.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
