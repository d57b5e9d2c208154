"""The exercise mechanism (docs/architecture.md): stubs, references, graders and grading agree;
unfinished or broken student files never break the engine."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mili.exercise import (
    Exercise,
    Part,
    Target,
    decorated_definitions,
    discover,
    is_stub,
    load_reference,
    paste_reference_module,
    repo_root,
    scan_source,
)
from mili.import_fallback import drop_statement, repaired_source

ROOT = repo_root()
EXERCISES = discover()


def _annotation_text(annotation) -> str:
    """'Tensor', 'torch.Tensor' and torch.Tensor all read 'Tensor' (with or without postponed annotations)."""
    if annotation is inspect.Parameter.empty:
        return ""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text).replace(" ", "")


def _signature_text(func) -> str:
    sig = inspect.signature(func)
    params = [f"{p.kind.name}:{p.name}:{_annotation_text(p.annotation)}:{p.default!r}" for p in sig.parameters.values()]
    return ", ".join(params) + " -> " + _annotation_text(sig.return_annotation)


def _public_signatures(obj) -> dict[str, str]:
    if inspect.isclass(obj):
        return {name: _signature_text(member) for name, member in vars(obj).items()
                if inspect.isfunction(member) and (not name.startswith("_") or name == "__init__")}
    return {"": _signature_text(obj)}


def _targets():
    return [(ex.id, t) for ex in EXERCISES.values() for t in ex.targets]


@pytest.mark.parametrize("exercise_id,target", _targets(), ids=lambda v: getattr(v, "qualname", v))
def test_stub_and_reference_share_signature_and_docstring(exercise_id, target):
    assert is_stub(target.student), f"{target.module}.{target.qualname} (exercise {exercise_id}) is not a stub in mili/"
    reference = load_reference(target.module, target.qualname)
    assert not is_stub(reference), f"the reference of exercise {exercise_id} is itself a stub"
    assert _public_signatures(target.student) == _public_signatures(reference), (
        f"{target.qualname}: the stub and its reference in {target.reference_module} have different signatures")
    assert inspect.getdoc(target.student), f"{target.qualname}: the stub needs a docstring stating its contract"
    assert inspect.getdoc(reference) == inspect.getdoc(target.student), (
        f"{target.qualname}: the reference's docstring differs from the stub's")


def _graded_ids() -> set[str]:
    ids = set()
    for path in (ROOT / "tests" / "graders").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exercise"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                ids.add(str(node.args[0].value))
    return ids


def test_every_exercise_has_a_grader():
    missing = sorted(set(EXERCISES) - _graded_ids())
    assert not missing, f"exercises without a grader in tests/graders: {missing}"


def test_every_grader_names_a_real_exercise():
    unknown = sorted(_graded_ids() - set(EXERCISES))
    assert not unknown, f"graders mark exercise ids that do not exist: {unknown}"


def test_paste_replaces_a_stub_with_the_reference(tmp_path):
    stub = tmp_path / "stub.py"
    stub.write_text('from mili.exercise import exercise\n\n\n@exercise("9.9")\ndef f(x):\n    """doc"""\n'
                    '    raise NotImplementedError("Exercise 9.9")\n')
    ref = tmp_path / "ref.py"
    ref.write_text('import math\n\nSCALE = 2\n\n\ndef _helper(x):\n    return math.floor(x) * SCALE\n\n\n'
                   'def f(x):\n    """doc"""\n    return _helper(x)\n')
    pasted = paste_reference_module(stub, ref, ["f"])
    namespace: dict = {}
    exec(compile(pasted.replace('@exercise("9.9")\n', ""), "pasted", "exec"), namespace)
    assert namespace["f"](3.7) == 6
    assert '@exercise("9.9")' in pasted, "the marker stays on the pasted function"


def _grade_copy(root: Path, selector: str | None) -> dict:
    report = root / "report.json"
    env = dict(os.environ, MILI_IMPL="student", PYTHONPATH=str(root), NO_COLOR="1")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from mili.grading import grade; "
            "grade(sys.argv[2] or None, report=sys.argv[3], root=sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, str(root), selector or "", str(report)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert report.exists(), proc.stdout + proc.stderr
    return json.loads(report.read_text())


def _copy_repo(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".git", "*.ipynb", "benchmarks", "data", ".pytest_cache",
                                    "*.egg-info")
    shutil.copytree(ROOT, dest, ignore=ignore)
    if (ROOT / "data").exists():  # graders may read the tiny model; link instead of copying megabytes
        (dest / "data").symlink_to(ROOT / "data")
    return dest


@pytest.mark.slow
def test_pristine_stubs_score_zero_and_pasted_references_score_full(tmp_path):
    pristine = _grade_copy(_copy_repo(tmp_path / "pristine"), None)
    assert pristine["max_score"] == len(EXERCISES)
    scored = {row["exercise"]: row["score"] for row in pristine["exercises"] if row["score"] > 0}
    assert not scored, f"stubs must score 0, but these graders passed on stubs (tests that cannot fail?): {scored}"
    assert (tmp_path / "pristine" / "report.xml").exists(), "grade --report writes JUnit XML beside the JSON"

    pasted_root = _copy_repo(tmp_path / "pasted")
    from mili.exercise import paste_references

    paste_references(pasted_root)
    result = _grade_copy(pasted_root, None)
    short = {row["exercise"]: row["first_failure"] for row in result["exercises"] if row["score"] < 1.0}
    assert not short, f"with the references pasted in, every exercise must score full marks: {short}"


def test_every_exercise_lives_in_one_module():
    """auto mode decides per exercise from its module's source, so an exercise must not span modules."""
    spread = {ex.id: sorted({t.module for t in ex.targets}) for ex in EXERCISES.values()
              if len({t.module for t in ex.targets}) > 1}
    assert not spread, f"exercises defined in several modules: {spread}"


PARTIAL_CLASS = '''
from mili.exercise import exercise


@exercise("9.1", "Something")
class Allocator:
    def __init__(self, n):
        self.n = n

    def allocate(self):
        raise NotImplementedError("Exercise 9.1")

    def _my_helper(self):
        return 1

    @property
    def size(self):
        """doc"""
        raise NotImplementedError("Exercise 9.1")

    def __len__(self):
        return self.n


class Plain:
    @exercise("9.2")
    def forward(self, x):
        return x
'''


def test_progress_counts_written_methods_but_not_private_helpers():
    parts = scan_source(PARTIAL_CLASS)
    assert parts["9.1"] == [Part("Allocator", "class", 2, 4)]
    assert parts["9.2"] == [Part("Plain.forward", "method", 1, 1)]
    ex = Exercise("9.1", "Something", [Target("mili.x", "Allocator", None, None, parts["9.1"][0], "reference")])
    assert ex.describe_progress() == "in progress (2/4 methods)" and ex.implemented_by == "reference"
    assert [(m.exercise_id, m.qualname) for m in decorated_definitions(PARTIAL_CLASS + "\n  def broken(:\n")] == [
        ("9.1", "Allocator"), ("9.2", "Plain.forward")], "found line by line, even in a file that does not parse"


BROKEN = '''
import math


def _student_helper(x) :
    return x +


@exercise("9.1", "Something")
def area(r):
    return math.pi * r ** 2 +


def plumbing():
    return area(1.0)
'''

REFERENCE = '''
import math

SCALE = 1.0


def _reference_helper(r):
    return math.pi * r * r * SCALE


def area(r):
    return _reference_helper(r)
'''


def _exec(text: str) -> dict:
    namespace: dict = {}
    exec(compile(text, "repaired", "exec"), namespace)
    return namespace


def test_a_file_with_syntax_errors_is_repaired_with_the_reference_or_a_stand_in():
    text, protected = repaired_source(BROKEN, REFERENCE, "{id} is broken")
    with pytest.raises(SyntaxError):  # the student's helper still fails: import_fallback drops it
        _exec(text)
    namespace = _exec(drop_statement(text, 6, protected))
    assert namespace["plumbing"]() == pytest.approx(3.14159265), "the plumbing now calls the reference"
    with pytest.raises(Exception):
        drop_statement(text, len(text.splitlines()) - 1, protected)  # reference code is never dropped
    text, protected = repaired_source(BROKEN, None, "exercise {id} cannot run")
    namespace = _exec(drop_statement(text, 6, protected))
    with pytest.raises(NotImplementedError, match="exercise 9.1 cannot run"):
        namespace["plumbing"]()


def _cli(root: Path, args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mili.cli", *args], cwd=root, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(root), NO_COLOR="1", **env), timeout=600)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
def test_half_written_class_syntax_error_and_bad_mili_impl_leave_the_engine_answering(tmp_path):
    root = _copy_repo(tmp_path / "course")
    _edit(root / "mili/cache/block_allocator.py", '"""The total number of blocks, free or held."""\n',
          '"""The total number of blocks, free or held."""\n        return self._num_blocks\n')
    _edit(root / "mili/cache/radix_cache.py", '"""Blocks held by the tree."""\n',
          '"""Blocks held by the tree."""\n        return self._cached_blocks +\n')
    answer = _cli(root, ["generate", "What is 17 + 25?"], MILI_IMPL="students")
    assert answer.stdout.strip() == "42", answer.stdout + answer.stderr
    warnings = answer.stderr.strip().splitlines()
    assert len(warnings) == 2, f"one line for MILI_IMPL, one for the broken file, got:\n{answer.stderr}"
    assert "MILI_IMPL='students'" in warnings[0] and "did you mean student" in warnings[0]
    assert "mili/cache/radix_cache.py does not import (SyntaxError" in warnings[1]

    status = _cli(root, ["status"]).stdout
    assert re.search(r"^5\.1 .* reference .* in progress \(1/7 methods\)$", status, re.MULTILINE), status
    assert re.search(r"^5\.3 .* reference .* broken: SyntaxError: invalid syntax \(line \d+\)$", status, re.MULTILINE), status

    stand_in = subprocess.run([sys.executable, "-c", "from mili.cache.radix_cache import RadixCache; RadixCache(4)"],
                              cwd=root, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(root), MILI_IMPL="student"))
    assert "NotImplementedError: mili/cache/radix_cache.py does not import (SyntaxError" in stand_in.stderr, (
        stand_in.stderr)
