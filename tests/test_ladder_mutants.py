"""The graders of exercises 2.5 (tiled matmul) and 2.6 (online softmax) fail on plausible wrong kernels.

Each mutant is the reference with one bug a student is likely to write, made by replacing one
piece of the reference's source (so the mutant cannot drift from it unnoticed: a replacement that
no longer matches fails here). Every grader test is run in-process against the mutant, and at
least one must fail; the unchanged reference must pass them all.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
from pathlib import Path

import pytest

from mili.exercise import repo_root

ROOT = repo_root()
# mutants that overflow make NumPy (the Triton interpreter) warn; the grader's failure is what counts
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

MUTANTS = {
    "2.5": ("solutions/kernels/matmul.py", "tests.graders.test_02_matmul", "tiled_matmul", {
        "K tail loads 1, not 0": [("other=0.0)", "other=1.0)")],
        "float16 accumulator": [("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)",
                                 "acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=c_ptr.dtype.element_ty)"),
                                ("acc = tl.dot(a, b, acc, input_precision=\"ieee\")",
                                 "acc = (acc + tl.dot(a, b, input_precision=\"ieee\")).to(c_ptr.dtype.element_ty)")],
        "b assumed row-major": [("b, b.stride(0), b.stride(1)", "b, n, 1")],
        "program ids swapped": [("rows = (tl.program_id(0)", "rows = (tl.program_id(1)"),
                                ("cols = (tl.program_id(1)", "cols = (tl.program_id(0)")],
        "only the last K step kept": [("acc = tl.dot(a, b, acc, input_precision=\"ieee\")",
                                       "acc = tl.dot(a, b, input_precision=\"ieee\")")],
    }),
    "2.6": ("solutions/kernels/softmax.py", "tests.graders.test_02_softmax", "online_softmax", {
        "sum not rescaled": [("l = l * tl.exp(m - m_new) + ", "l = l + ")],
        "tail lanes load 0": [("other=float(\"-inf\")).to(tl.float32)\n        m_new",
                               "other=0.0).to(tl.float32)\n        m_new")],
        "maximum starts at 0": [("m = tl.zeros([1], dtype=tl.float32) + LOWEST", "m = tl.zeros([1], dtype=tl.float32)")],
        "maximum starts at -inf": [("LOWEST=LOWEST_FLOAT32", "LOWEST=float(\"-inf\")")],
        "no maximum subtracted": [("tl.store(out_row + cols, (tl.exp(x - m) / l)",
                                   "tl.store(out_row + cols, (tl.exp(x) / (l * tl.exp(m)))")],
    }),
}


def _cases(test):
    """Every parameter combination of a grader test, like pytest's parametrize expands it."""
    marks = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
    grids = []
    for mark in marks:
        names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else list(mark.args[0])
        grids.append([dict(zip(names, values if len(names) > 1 else (values,))) for values in mark.args[1]])
    for combo in itertools.product(*grids):
        yield {k: v for part in combo for k, v in part.items()}


def _failures(grader, name: str, implementation) -> list[str]:
    failed = []
    original = getattr(grader, name)
    setattr(grader, name, implementation)
    try:
        for test_name, test in vars(grader).items():
            if not test_name.startswith("test_") or not callable(test):
                continue
            for kwargs in _cases(test):
                try:
                    test(**kwargs)
                except Exception as err:  # noqa: BLE001 - any error fails the test under pytest too
                    failed.append(f"{test_name}{kwargs or ''}: {type(err).__name__}")
    finally:
        setattr(grader, name, original)
    return failed


def _load(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # triton.jit reads the kernel's source through its module
    spec.loader.exec_module(module)
    return module


def _mutant_ids():
    return [(ex, label) for ex, (_, _, _, mutants) in MUTANTS.items() for label in mutants]


@pytest.mark.parametrize("exercise_id", sorted(MUTANTS))
def test_reference_passes_its_grader_here(exercise_id):
    reference_path, grader_name, function, _ = MUTANTS[exercise_id]
    reference = _load(ROOT / reference_path, f"_ladder_reference_{exercise_id.replace('.', '_')}")
    failed = _failures(importlib.import_module(grader_name), function, getattr(reference, function))
    assert not failed, f"the reference of {exercise_id} fails its own grader when run this way: {failed}"


@pytest.mark.parametrize("exercise_id,label", _mutant_ids(), ids=lambda v: v.replace(" ", "-"))
def test_grader_fails_on_mutant(exercise_id, label, tmp_path):
    reference_path, grader_name, function, mutants = MUTANTS[exercise_id]
    source = (ROOT / reference_path).read_text()
    for old, new in mutants[label]:
        assert old in source, f"mutant {label!r} of {exercise_id} no longer matches the reference: {old!r}"
        source = source.replace(old, new)
    path = tmp_path / f"mutant_{exercise_id.replace('.', '_')}.py"
    path.write_text(source)
    mutant = _load(path, f"_ladder_mutant_{exercise_id.replace('.', '_')}_{abs(hash(label))}")
    failed = _failures(importlib.import_module(grader_name), function, getattr(mutant, function))
    assert failed, f"the grader of exercise {exercise_id} passes the mutant {label!r}: add a test that catches it"
