"""The exercise mechanism (docs/architecture.md): stubs, references, graders and grading agree."""

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

from mili.exercise import discover, is_stub, load_reference, paste_reference_module, repo_root

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
