"""The exercise mechanism: `@exercise("N.M")` marks a stub that a student fills in.

Every exercise lives in `mili/` as a function, a class, or a method whose body is a stub
(`raise NotImplementedError("Exercise N.M: ...")`). Its reference implementation lives at the
mirrored path in `solutions/` (`mili/kernels/rmsnorm.py` <-> `solutions/kernels/rmsnorm.py`)
under the same qualified name and with the same signature.

Which one runs is decided once, when the decorator runs at import time (no per-call cost),
by the environment variable MILI_IMPL:

- ``auto`` (default): the student's code for every exercise whose parts are all written (every
  function, every method of a class), the reference for the others. An exercise in progress
  stays on the reference: half of a class mixed with half of another would share no state.
- ``student``: only the student's code (stubs raise). Used by grading.
- ``reference``: only the references. Used by CI, benchmarks and the default engine run.

A copy of the course without `solutions/` (a student release, `mili release`) has no reference
to fall back to: there an unwritten exercise runs its stub, which raises when called.
A student file that does not import at all is handled by `mili.import_fallback`.

A reference may import anything from `mili` except the module it mirrors (that module is
still being imported when the reference is looked up).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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

_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """One line on stderr, at most once per `key` in this process (imports may be retried)."""
    if key not in _WARNED:
        _WARNED.add(key)
        print(f"mili: warning: {message}", file=sys.stderr)


def current_mode() -> str:
    """MILI_IMPL, lower-cased; an unknown value is reported once and read as 'auto'."""
    raw = os.environ.get("MILI_IMPL", "auto")
    mode = raw.strip().lower() or "auto"
    if mode in MODES:
        return mode
    close = difflib.get_close_matches(mode, MODES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    warn_once("MILI_IMPL", f"MILI_IMPL={raw!r} is not one of {', '.join(MODES)}{hint}; using auto")
    return "auto"


# ---------------------------------------------------------------- what the student has written

@dataclass(frozen=True)
class Part:
    """One marked definition as the source file has it now."""

    qualname: str
    kind: str  # "function", "method" or "class"
    written: int  # how many of its methods (1 for a function or method) are no longer the stub
    total: int


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


def _counted_methods(node: ast.ClassDef) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The methods that make up a class exercise: every stub, and every public or dunder method
    (private helpers a student adds are not part of the count)."""
    methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [m for m in methods if _is_stub_body(m.body) or not m.name.startswith("_")
            or (m.name.startswith("__") and m.name.endswith("__"))]


def _part(node: ast.AST, qualname: str, is_method: bool) -> Part:
    if isinstance(node, ast.ClassDef):
        methods = _counted_methods(node)
        return Part(qualname, "class", sum(not _is_stub_body(m.body) for m in methods), len(methods))
    return Part(qualname, "method" if is_method else "function", 0 if _is_stub_body(node.body) else 1, 1)


def _exercise_id(decorator: ast.expr) -> str | None:
    """'5.3' for `@exercise("5.3", ...)` (or `@mili.exercise.exercise("5.3")`), else None."""
    if not isinstance(decorator, ast.Call) or not decorator.args:
        return None
    func = decorator.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    first = decorator.args[0]
    if name == "exercise" and isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def scan_source(source: str) -> dict[str, list[Part]]:
    """Every `@exercise` definition in a module's source, by exercise id, with what is written."""
    found: dict[str, list[Part]] = {}

    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            qualname = prefix + node.name
            for decorator in node.decorator_list:
                exercise_id = _exercise_id(decorator)
                if exercise_id:
                    found.setdefault(exercise_id, []).append(_part(node, qualname, in_class))
            if isinstance(node, ast.ClassDef):
                visit(node.body, qualname + ".", True)

    visit(ast.parse(source).body, "", False)
    return found


_SCANS: dict[str, tuple[tuple[float, int], dict[str, list[Part]]]] = {}


def _module_parts(module: str) -> dict[str, list[Part]] | None:
    """scan_source of the module's file (cached while the file is unchanged); None without a file."""
    path = getattr(sys.modules.get(module), "__file__", None)
    if not path or not os.path.exists(path):
        return None
    stat = os.stat(path)
    key = (stat.st_mtime, stat.st_size)
    cached = _SCANS.get(path)
    if cached is None or cached[0] != key:
        cached = (key, scan_source(Path(path).read_text(encoding="utf-8")))
        _SCANS[path] = cached
    return cached[1]


def _part_of(obj: Any) -> Part:
    """The Part of one object, from its own source (for definitions outside a module file)."""
    node = _definition_node(obj)
    return _part(node, obj.__qualname__, "." in obj.__qualname__ and not isinstance(node, ast.ClassDef))


def _definition_node(obj: Any) -> ast.AST:
    source = textwrap.dedent(inspect.getsource(obj))
    node = ast.parse(source).body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        raise TypeError(f"@exercise marks functions, methods and classes, not {type(obj).__name__}")
    return node


def is_stub(obj: Any) -> bool:
    """True while the student's code is still the stub: for a class, while every method is."""
    part = _part_of(obj)
    return part.written == 0 and part.total > 0


# ---------------------------------------------------------------- the registry

@dataclass
class Target:
    """One marked object: a function, a class, or a method (qualname 'Class.method')."""

    module: str
    qualname: str
    student: Any  # None when the student's file does not import
    reference: Any | None
    part: Part
    chosen: str  # "student" or "reference"

    @property
    def reference_module(self) -> str:
        return reference_module_name(self.module)


@dataclass
class Exercise:
    id: str
    title: str
    targets: list[Target] = field(default_factory=list)
    broken: str | None = None  # why the student's file does not import, in one line

    @property
    def chapter(self) -> str:
        return chapter_of(self.id)

    @property
    def progress(self) -> tuple[int, int]:
        """(written, total) over every part: the methods of a class, each function."""
        return sum(t.part.written for t in self.targets), sum(t.part.total for t in self.targets)

    @property
    def state(self) -> str:
        """'broken', 'done', 'in progress' or 'not started' (the student's side)."""
        written, total = self.progress
        if self.broken:
            return "broken"
        return "done" if total and written == total else "in progress" if written else "not started"

    @property
    def implemented_by(self) -> str:
        """Whose code runs: 'student', 'reference', or 'stub' (nothing written, no reference)."""
        if self.targets and all(t.chosen == "reference" for t in self.targets):
            return "reference"
        return "stub" if self.progress[0] == 0 else "student"

    def describe_progress(self) -> str:
        """'done', 'not started', 'in progress (3/7 methods)' or 'broken: <error>'."""
        if self.broken:
            return f"broken: {self.broken}"
        if self.state != "in progress":
            return self.state
        written, total = self.progress
        unit = "methods" if any(t.part.kind != "function" for t in self.targets) else "functions"
        return f"in progress ({written}/{total} {unit})"


REGISTRY: dict[str, Exercise] = {}


def chapter_of(exercise_id: str) -> str:
    major = exercise_id.split(".")[0]
    return f"{int(major):02d}"


def chapter_notebook(chapter: str) -> str:
    """'chapters/05_kv_cache.ipynb' for '05' (or 'chapter 05' where the notebooks are absent)."""
    found = sorted((repo_root() / "chapters").glob(f"{chapter}_*.ipynb"))
    return f"chapters/{found[0].name}" if found else f"chapter {chapter}"


def reference_module_name(module: str) -> str:
    if not module.startswith("mili."):
        raise ValueError(f"exercises live in the mili package, not in {module!r}")
    return "solutions." + module[len("mili.") :]


def references_available() -> bool:
    """False in a student release: no `solutions/` beside this `mili/`."""
    return (repo_root() / "solutions" / "__init__.py").is_file()


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


def reference_file(module: str) -> Path | None:
    """solutions/<mirrored path>.py beside this `mili/`, if this copy of the course ships it."""
    path = repo_root() / Path(*reference_module_name(module).split(".")).with_suffix(".py")
    return path if path.is_file() else None


def find_reference(module: str, qualname: str) -> Any | None:
    """The reference, or None where this copy of the course ships no reference module for it
    (a student release, or one that hands out only some chapters' solutions). Only the
    `solutions/` beside this `mili/` counts: another checkout's references need not match."""
    return load_reference(module, qualname) if reference_file(module) else None


def _choose(exercise_id: str, module: str, qualname: str, mode: str, complete: bool) -> tuple[str, Any]:
    """('student' | 'reference', the reference or None) for one target."""
    if mode == "student" or (mode == "auto" and complete):
        return "student", None
    reference = find_reference(module, qualname)
    if reference is None:
        if mode == "reference":
            warn_once("no-reference", "MILI_IMPL=reference, but this copy of the course lacks some reference "
                                      "solutions: those exercises run your code (mili status lists them)")
        return "student", None
    return "reference", reference


class MissingExercises(RuntimeError):
    """Something needs exercises that are neither written nor backed by a reference in this copy."""


def modules_of(exercise_ids: list[str] | tuple[str, ...]) -> list[str]:
    """The modules of the mili package that define these exercises (found by reading the files)."""
    package = repo_root() / "mili"
    found = set()
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if "exercise(" in text and any(m.exercise_id in exercise_ids for m in decorated_definitions(text)):
            found.add(module_of_file(str(path)))
    return sorted(m for m in found if m)


def require(exercise_ids: list[str] | tuple[str, ...], what: str) -> None:
    """Raise MissingExercises, in one line, if any of `exercise_ids` can run neither the student's
    code (unwritten or unfinished) nor a reference (none in this copy of the course)."""
    for module in modules_of(exercise_ids):
        importlib.import_module(module)
    missing = [REGISTRY[i] for i in exercise_ids
               if i in REGISTRY and REGISTRY[i].implemented_by != "reference" and REGISTRY[i].state != "done"]
    if not missing:
        return
    by_chapter: dict[str, list[str]] = {}
    for ex in missing:
        by_chapter.setdefault(ex.chapter, []).append(ex.id + (" (in progress)" if ex.state == "in progress" else ""))
    where = "; ".join(f"{', '.join(ids)} ({chapter_notebook(ch)})" for ch, ids in sorted(by_chapter.items()))
    raise MissingExercises(f"{what} needs exercises that are not written yet, and this copy of the course has "
                           f"no reference solution for them: {where}")


def _entry(exercise_id: str, title: str | None, fallback_title: str) -> Exercise:
    entry = REGISTRY.setdefault(exercise_id, Exercise(exercise_id, title or fallback_title))
    if title and entry.title != title:
        entry.title = title
    return entry


def _add_target(entry: Exercise, target: Target) -> None:
    entry.targets = [t for t in entry.targets if (t.module, t.qualname) != (target.module, target.qualname)]
    entry.targets.append(target)


# ---------------------------------------------------------------- the marker

def exercise(exercise_id: str, title: str | None = None) -> Callable[[T], T]:
    """Mark `obj` as exercise `exercise_id` and return the implementation chosen by MILI_IMPL."""
    parts = exercise_id.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"exercise ids look like '2.1', not {exercise_id!r}")

    def mark(obj: T) -> T:
        mode = current_mode()
        module, qualname = obj.__module__, obj.__qualname__
        in_module = (_module_parts(module) or {}).get(exercise_id, [])
        part = next((p for p in in_module if p.qualname == qualname), None) or _part_of(obj)
        siblings = [p for p in in_module if p.qualname != qualname] + [part]
        complete = all(p.written == p.total for p in siblings)
        chosen, reference = _choose(exercise_id, module, qualname, mode, complete)
        doc_title = (inspect.getdoc(obj) or "").strip().splitlines()
        entry = _entry(exercise_id, title, doc_title[0] if doc_title else qualname)
        _add_target(entry, Target(module, qualname, obj, reference, part, chosen))
        if chosen == "student":
            return obj
        if inspect.isfunction(reference) and "." in qualname:
            # a reference method defined on the mirror class; it now serves the student's class
            reference.__qualname__ = qualname
        return reference

    return mark


def register_broken(module: str, source: str, error: str, references: dict[str, Any] | None = None) -> list[str]:
    """Record the exercises of a student file that does not import (`error` in one line).

    `source` is the file's text, read line by line since it may not parse; `references` maps a
    qualname to the reference now serving it (None: nothing runs, as in student mode).
    Returns the exercise ids found.
    """
    ids = []
    for marked in decorated_definitions(source):
        entry = _entry(marked.exercise_id, marked.title, marked.qualname)
        entry.broken = error
        reference = (references or {}).get(marked.qualname)
        part = Part(marked.qualname, "function", 0, 1)
        _add_target(entry, Target(module, marked.qualname, None, reference, part,
                                  "reference" if reference is not None else "student"))
        ids.append(marked.exercise_id)
    return sorted(set(ids))


_DECORATOR = re.compile(r"""^(?P<indent>[ \t]*)@(?:[\w.]+\.)?exercise\(\s*["'](?P<id>\d+\.\d+)["']"""
                        r"""(?:\s*,\s*["'](?P<title>[^"']*)["'])?""")
DEFINITION = re.compile(r"^(?P<indent>[ \t]*)(?:async\s+def|def|class)\s+(?P<name>\w+)")


@dataclass(frozen=True)
class Marked:
    """An `@exercise` decorator found in a source text that need not parse."""

    exercise_id: str
    title: str | None
    qualname: str
    line: int  # 0-based index of the decorator's line


def decorated_definitions(source: str) -> list[Marked]:
    """Every `@exercise` definition in `source`, found line by line."""
    lines = source.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = _DECORATOR.match(line)
        if not match:
            continue
        name = next((d for d in (DEFINITION.match(x) for x in lines[i + 1 :]) if d), None)
        if name is not None:
            found.append(Marked(match["id"], match["title"], _enclosing_class(lines, i) + name["name"], i))
    return found


def _enclosing_class(lines: list[str], index: int) -> str:
    """'Outer.Inner.' for the classes that line `index` sits in (by indentation), else ''."""
    indent = len(lines[index]) - len(lines[index].lstrip())
    names = []
    for line in reversed(lines[:index]):
        stripped = line.lstrip()
        level = len(line) - len(stripped)
        if not stripped or stripped.startswith("#") or level >= indent:
            continue
        definition = DEFINITION.match(line)
        if definition and stripped.startswith("class"):
            names.append(definition["name"])
        indent = level
        if level == 0:
            break
    return "".join(name + "." for name in reversed(names))


IMPORT_ERRORS: dict[str, str] = {}


def one_line_error(err: BaseException, path: str | None = None) -> str:
    """'SyntaxError: invalid syntax (line 57)' — what went wrong and where, on one line."""
    if isinstance(err, SyntaxError):
        where = f" (line {err.lineno})" if err.lineno else ""
        text = f"{type(err).__name__}: {err.msg}{where}"
    else:
        lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__) if path and frame.filename == path]
        first = (str(err).strip().splitlines() or [""])[0]
        text = f"{type(err).__name__}: {first}" + (f" (line {lines[-1]})" if lines else "")
    return text if len(text) <= 160 else text[:159] + "…"


def discover(strict: bool = True) -> dict[str, Exercise]:
    """Import every module of the mili package so that every exercise registers itself.

    With strict=False a module that fails to import (a student's syntax error, say) is recorded
    in IMPORT_ERRORS, and the exercises of the file where the error lies are listed as broken,
    so `mili status` and `mili grade` still cover everything else.
    """
    import mili

    for info in pkgutil.walk_packages(mili.__path__, prefix="mili.", onerror=lambda name: None):
        if info.name in IMPORT_ERRORS:
            continue
        try:
            importlib.import_module(info.name)
        except Exception as err:  # reported to the student, not swallowed
            if strict:
                raise
            origin = error_origin(err) or _module_file(info.name)
            IMPORT_ERRORS[info.name] = one_line_error(err, origin)
            if origin and origin.endswith(".py"):
                module = module_of_file(origin)
                if module and not any(t.module == module for ex in REGISTRY.values() for t in ex.targets):
                    register_broken(module, Path(origin).read_text(encoding="utf-8", errors="replace"),
                                    IMPORT_ERRORS[info.name])
    return dict(sorted(REGISTRY.items(), key=lambda kv: tuple(int(p) for p in kv[0].split("."))))


def _module_file(module: str) -> str | None:
    path = repo_root() / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return str(candidate)
    return None


def error_origin(err: BaseException) -> str | None:
    """The file of the mili package where an import error really lies (not the modules importing it)."""
    package = str(repo_root() / "mili")
    if isinstance(err, SyntaxError) and err.filename and err.filename.startswith(package):
        return err.filename
    files = [f.filename for f in traceback.extract_tb(err.__traceback__) if f.filename.startswith(package)]
    return files[-1] if files else None


def module_of_file(path: str) -> str | None:
    """'mili.cache.radix_cache' for .../mili/cache/radix_cache.py (None outside the package)."""
    try:
        rel = Path(path).resolve().relative_to(repo_root())
    except ValueError:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if parts and parts[0] == "mili" else None


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

def target_node(tree: ast.Module, qualname: str) -> ast.AST:
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


def node_source(lines: list[str], node: ast.AST) -> list[str]:
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
        node, ref_node = target_node(tree, qualname), target_node(ref_tree, qualname)
        indent = " " * node.col_offset
        new = [indent + line if line.strip() else line for line in node_source(ref_lines, ref_node)]
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

    first_node = min((target_node(tree, name) for name in top_level_targets), key=lambda n: n.lineno)
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
