"""The exercise mechanism: `@exercise("N.M")` marks a stub that a student fills in.

Every exercise lives in `mili/` as a function, a class, or a method whose body is a stub
(`raise NotImplementedError("Exercise N.M: ...")`). Its reference implementation lives at the
mirrored path in `solutions/` (`mili/kernels/rmsnorm.py` <-> `solutions/kernels/rmsnorm.py`)
under the same qualified name and with the same signature.

Which one runs is decided once, when the decorator runs at import time (no per-call cost),
by the environment variable MILI_IMPL:

- ``auto`` (default): the student's code where its body is no longer just the stub, the
  reference elsewhere. The engine runs at every point of the course.
- ``student``: only the student's code (stubs raise). Used by grading.
- ``reference``: only the references. Used by CI, benchmarks and the default engine run.

A reference may import anything from `mili` except the module it mirrors (that module is
still being imported when the reference is looked up).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

MODES = ("auto", "student", "reference")

CHAPTERS = {
    "01": "Qwen3 from the ground up",
    "02": "Triton kernels",
    "03": "Python integration: the engine",
    "04": "Attention",
    "05": "KV cache",
    "06": "Deployment",
}

T = TypeVar("T")


def current_mode() -> str:
    mode = os.environ.get("MILI_IMPL", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"MILI_IMPL={mode!r} is not one of {', '.join(MODES)}")
    return mode


@dataclass
class Target:
    """One marked object: a function, a class, or a method (qualname 'Class.method')."""

    module: str
    qualname: str
    student: Any
    reference: Any | None
    implemented: bool  # the student's body is no longer just the stub
    chosen: str  # "student" or "reference"

    @property
    def reference_module(self) -> str:
        return reference_module_name(self.module)


@dataclass
class Exercise:
    id: str
    title: str
    targets: list[Target] = field(default_factory=list)

    @property
    def chapter(self) -> str:
        return chapter_of(self.id)

    @property
    def implemented_by(self) -> str:
        """'student', 'reference' or 'stub' (student mode, nothing written yet); 'mixed' if split."""
        states = {t.chosen if t.chosen == "reference" or t.implemented else "stub" for t in self.targets}
        return states.pop() if len(states) == 1 else "mixed"


REGISTRY: dict[str, Exercise] = {}


def chapter_of(exercise_id: str) -> str:
    major = exercise_id.split(".")[0]
    return f"{int(major):02d}"


def reference_module_name(module: str) -> str:
    if not module.startswith("mili."):
        raise ValueError(f"exercises live in the mili package, not in {module!r}")
    return "solutions." + module[len("mili.") :]


def _resolve_qualname(root: Any, qualname: str) -> Any:
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load_reference(module: str, qualname: str) -> Any:
    ref_module = reference_module_name(module)
    try:
        mod = importlib.import_module(ref_module)
    except ModuleNotFoundError as err:
        if err.name and ref_module.startswith(err.name):
            raise ImportError(
                f"no reference for {module}.{qualname}: expected the module {ref_module}"
            ) from err
        raise
    try:
        return _resolve_qualname(mod, qualname)
    except AttributeError as err:
        raise ImportError(f"{ref_module} has no {qualname} (the reference of {module}.{qualname})") from err


# ---------------------------------------------------------------- stub detection

def _is_stub_body(body: list[ast.stmt]) -> bool:
    """A docstring (optional) followed by exactly `raise NotImplementedError(...)`."""
    stmts = list(body)
    if stmts and isinstance(stmts[0], ast.Expr) and isinstance(getattr(stmts[0], "value", None), ast.Constant):
        if isinstance(stmts[0].value.value, str):
            stmts = stmts[1:]
    if len(stmts) != 1 or not isinstance(stmts[0], ast.Raise):
        return False
    exc = stmts[0].exc
    if isinstance(exc, ast.Call):
        exc = exc.func
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def _definition_node(obj: Any) -> ast.AST:
    source = textwrap.dedent(inspect.getsource(obj))
    node = ast.parse(source).body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        raise TypeError(f"@exercise marks functions, methods and classes, not {type(obj).__name__}")
    return node


def is_stub(obj: Any) -> bool:
    """True while the student's code is still the stub: for a class, while every method is."""
    node = _definition_node(obj)
    if isinstance(node, ast.ClassDef):
        methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        return bool(methods) and all(_is_stub_body(m.body) for m in methods)
    return _is_stub_body(node.body)


# ---------------------------------------------------------------- the marker

def exercise(exercise_id: str, title: str | None = None) -> Callable[[T], T]:
    """Mark `obj` as exercise `exercise_id` and return the implementation chosen by MILI_IMPL."""
    parts = exercise_id.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"exercise ids look like '2.1', not {exercise_id!r}")

    def mark(obj: T) -> T:
        mode = current_mode()
        module, qualname = obj.__module__, obj.__qualname__
        implemented = not is_stub(obj)
        reference = None
        if mode == "reference" or (mode == "auto" and not implemented):
            reference = load_reference(module, qualname)
            chosen = "reference"
        else:
            chosen = "student"
        doc_title = (inspect.getdoc(obj) or "").strip().splitlines()
        entry = REGISTRY.setdefault(exercise_id, Exercise(exercise_id, title or (doc_title[0] if doc_title else qualname)))
        if title and entry.title != title:
            entry.title = title
        entry.targets = [t for t in entry.targets if (t.module, t.qualname) != (module, qualname)]
        entry.targets.append(Target(module, qualname, obj, reference, implemented, chosen))
        chosen_obj = reference if chosen == "reference" else obj
        if chosen == "reference" and inspect.isfunction(chosen_obj) and "." in qualname:
            # a reference method defined on the mirror class; it now serves the student's class
            chosen_obj.__qualname__ = qualname
        return chosen_obj

    return mark


IMPORT_ERRORS: dict[str, str] = {}


def discover(strict: bool = True) -> dict[str, Exercise]:
    """Import every module of the mili package so that every exercise registers itself.

    With strict=False a module that fails to import (a student's syntax error, say) is recorded
    in IMPORT_ERRORS and skipped, so `mili status` can still list everything else.
    """
    import mili

    for info in pkgutil.walk_packages(mili.__path__, prefix="mili.", onerror=lambda name: None):
        try:
            importlib.import_module(info.name)
        except Exception as err:  # noqa: BLE001 - reported to the student, not swallowed
            if strict:
                raise
            IMPORT_ERRORS[info.name] = f"{type(err).__name__}: {err}"
    return dict(sorted(REGISTRY.items(), key=lambda kv: tuple(int(p) for p in kv[0].split("."))))


def select(exercises: dict[str, Exercise], selector: str | None) -> dict[str, Exercise]:
    """`None` -> all; '01' or '1' -> a chapter; '2.1' -> one exercise."""
    if not selector:
        return exercises
    if "." in selector:
        if selector not in exercises:
            raise KeyError(f"no exercise {selector!r}; known: {', '.join(exercises)}")
        return {selector: exercises[selector]}
    if not selector.isdigit():
        raise KeyError(f"{selector!r} is neither a chapter (01..06) nor an exercise id (2.1)")
    chapter = f"{int(selector):02d}"
    chosen = {k: v for k, v in exercises.items() if v.chapter == chapter}
    if not chosen:
        raise KeyError(f"chapter {chapter} has no exercises yet")
    return chosen


def repo_root() -> Path:
    """The checkout this package was imported from (graders and notebooks live beside it)."""
    return Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pasting references

def _target_node(tree: ast.Module, qualname: str) -> ast.AST:
    body, node = tree.body, None
    for part in qualname.split("."):
        node = next(
            (n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part),
            None,
        )
        if node is None:
            raise LookupError(f"{qualname} not found")
        body = getattr(node, "body", [])
    return node


def _node_source(lines: list[str], node: ast.AST) -> list[str]:
    """The definition without its decorators, dedented to column 0."""
    return textwrap.dedent("".join(lines[node.lineno - 1 : node.end_lineno])).splitlines(keepends=True)


def paste_reference_module(mili_path: Path, solution_path: Path, qualnames: list[str]) -> str:
    """Return the source of `mili_path` with each stub in `qualnames` replaced by its reference.

    The reference module's imports and helper definitions (kernels, private functions) are
    inserted before the first exercise, so the pasted code runs exactly as the reference does.
    """
    src = mili_path.read_text()
    ref_src = solution_path.read_text()
    tree, ref_tree = ast.parse(src), ast.parse(ref_src)
    lines, ref_lines = src.splitlines(keepends=True), ref_src.splitlines(keepends=True)

    replacements = []  # (start, end, new lines) in the mili file, 0-based line slices
    for qualname in qualnames:
        node, ref_node = _target_node(tree, qualname), _target_node(ref_tree, qualname)
        indent = " " * node.col_offset
        new = [indent + line if line.strip() else line for line in _node_source(ref_lines, ref_node)]
        replacements.append((node.lineno - 1, node.end_lineno, new))

    top_level_targets = {q.split(".")[0] for q in qualnames}
    existing = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    helpers: list[str] = []
    for ref_node in ref_tree.body:
        if isinstance(ref_node, (ast.Import, ast.ImportFrom)):
            if isinstance(ref_node, ast.ImportFrom) and ref_node.module == "__future__":
                continue
            helpers.extend(ref_lines[ref_node.lineno - 1 : ref_node.end_lineno])
        elif isinstance(ref_node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if ref_node.name in top_level_targets or ref_node.name in existing:
                continue
            start = min([d.lineno for d in ref_node.decorator_list] + [ref_node.lineno])
            helpers.extend(["\n"] + ref_lines[start - 1 : ref_node.end_lineno] + ["\n"])
        elif isinstance(ref_node, (ast.Assign, ast.AnnAssign)):
            helpers.extend(ref_lines[ref_node.lineno - 1 : ref_node.end_lineno])

    first_node = min((_target_node(tree, name) for name in top_level_targets), key=lambda n: n.lineno)
    insert_at = min([d.lineno for d in first_node.decorator_list] + [first_node.lineno]) - 1

    for start, end, new in sorted(replacements, reverse=True):
        lines[start:end] = new
    lines[insert_at:insert_at] = ["# --- pasted from the reference module ---\n", *helpers, "\n"]
    return "".join(lines)


def paste_references(root: Path) -> list[str]:
    """In the checkout at `root` (a copy!), replace every stub by its reference. Returns the files changed."""
    exercises = discover()
    by_file: dict[str, list[str]] = {}
    for ex in exercises.values():
        for t in ex.targets:
            by_file.setdefault(t.module, []).append(t.qualname)
    changed = []
    for module, qualnames in sorted(by_file.items()):
        rel = Path(*module.split("."))
        mili_path = root / rel.with_suffix(".py")
        solution_path = root / Path("solutions", *module.split(".")[1:]).with_suffix(".py")
        mili_path.write_text(paste_reference_module(mili_path, solution_path, qualnames))
        changed.append(str(mili_path.relative_to(root)))
    return changed
