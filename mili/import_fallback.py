"""A student file that does not import: its exercises run the reference, with one warning.

A syntax error (or a bad import, a typo at class level) in a file of `mili/` that holds
exercises would otherwise break everything that imports it: the model, the engine, `mili status`.
In the `auto` and `reference` modes an import hook (`install`, run by `mili/__init__.py`) catches
the failure and executes a repaired copy of the file instead: every `@exercise` definition is
replaced by its reference (the same paste as `mili.exercise.paste_reference_module`, found line by
line since the file need not parse), the reference module's imports and helpers are appended,
and a top-level statement of the student's that still fails (a broken helper) is dropped. The
file on disk is not touched; `mili status` lists its exercises as "broken: <error>".

In `student` mode (grading) nothing is repaired: the error is the student's to see. In a copy of
the course without references there is nothing to repair with, and the import error stands.
"""

from __future__ import annotations

import ast
import linecache
import sys
import traceback
from importlib.abc import MetaPathFinder
from importlib.machinery import PathFinder, SourceFileLoader
from pathlib import Path

from mili.exercise import (
    current_mode, decorated_definitions, node_source, one_line_error, reference_file, register_broken, target_node,
    warn_once,
)

MAX_DROPPED_STATEMENTS = 8


class RepairFailed(Exception):
    """The file cannot be repaired; the original import error is raised instead."""


class _Loader(SourceFileLoader):
    def exec_module(self, module) -> None:
        try:
            super().exec_module(module)
        except Exception as err:
            if current_mode() == "student":
                raise
            source = Path(self.path).read_text(encoding="utf-8", errors="replace")
            if "@exercise(" not in source and "@exercise (" not in source:
                raise  # plumbing, not a student's file
            try:
                _exec_repaired(module, self.path, source, err)
            except RepairFailed:
                raise err from None


class _Finder(MetaPathFinder):
    """Hands mili's own source modules to `_Loader`; everything else imports as usual."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("mili."):
            return None
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is None or type(spec.loader) is not SourceFileLoader:
            return None
        spec.loader = _Loader(fullname, spec.origin)
        return spec


def install() -> None:
    """Put the hook in front of the standard finders (once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


# ---------------------------------------------------------------- the repair

def _exec_repaired(module, path: str, source: str, error: Exception) -> None:
    name = module.__name__
    reference_source = _reference_source(name)
    text, protected = repaired_source(source, reference_source)
    dunders = {k: v for k, v in vars(module).items() if k.startswith("__") and k.endswith("__")}
    filename = f"{path} (repaired: the exercises run the reference)"
    for _ in range(MAX_DROPPED_STATEMENTS + 1):
        vars(module).clear()
        vars(module).update(dunders)
        linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
        try:
            exec(compile(text, filename, "exec"), vars(module))
            break
        except SyntaxError as err:
            bad_line = err.lineno
        except Exception as err:  # noqa: BLE001 - a student's top-level statement that fails
            frames = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == filename]
            bad_line = frames[-1] if frames else None
        text = _drop_statement(text, bad_line, protected)
    else:
        raise RepairFailed
    references = {m.qualname: _lookup(module, m.qualname) for m in decorated_definitions(source)}
    reason = one_line_error(error, path)
    ids = register_broken(name, source, reason, references)
    shown = Path(path)
    try:
        shown = shown.relative_to(Path.cwd())
    except ValueError:
        pass
    warn_once(f"broken:{name}", f"{shown} does not import ({reason}); exercise{'s' if len(ids) > 1 else ''} "
                                f"{', '.join(ids)} run{'' if len(ids) > 1 else 's'} the reference until you fix it")


def _reference_source(module: str) -> str:
    path = reference_file(module)
    if path is None:
        raise RepairFailed  # a copy of the course without this reference
    return path.read_text(encoding="utf-8")


def _lookup(module, qualname: str):
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_code(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _extent(lines: list[str], decorator_line: int) -> tuple[int, int]:
    """[start, end) of the definition decorated at `decorator_line`, decorators included."""
    indent = _indent(lines[decorator_line])
    start = decorator_line
    while start > 0 and _indent(lines[start - 1]) == indent and lines[start - 1].lstrip().startswith("@"):
        start -= 1
    end = decorator_line + 1
    while end < len(lines) and not (lines[end].lstrip().startswith(("def ", "async def ", "class "))
                                    and _indent(lines[end]) == indent):
        end += 1  # the other decorators, up to the definition itself
    end += 1
    while end < len(lines) and (not _is_code(lines[end]) or _indent(lines[end]) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1  # leave the blank lines after it in place
    return start, end


def repaired_source(source: str, reference_source: str) -> tuple[str, list[tuple[int, int]]]:
    """The student's file with every exercise replaced by its reference and the reference's imports
    and helpers appended; also the [start, end) line ranges (1-based) that are reference code."""
    lines = source.splitlines(keepends=True)
    ref_tree, ref_lines = ast.parse(reference_source), reference_source.splitlines(keepends=True)
    marked = decorated_definitions(source)
    replacements = []
    for m in marked:
        start, end = _extent(lines, m.line)
        try:
            ref_node = target_node(ref_tree, m.qualname)
        except LookupError:
            raise RepairFailed from None
        indent = lines[m.line][: _indent(lines[m.line])]
        new = [indent + line if line.strip() else line for line in node_source(ref_lines, ref_node)]
        replacements.append((start, end, new))
    out, protected, cursor = [], [], 0
    for start, end, new in sorted(replacements):
        if start < cursor:
            continue  # a method inside a class already replaced
        out.extend(lines[cursor:start])
        protected.append((len(out) + 1, len(out) + len(new) + 1))
        out.extend(new)
        cursor = end
    out.extend(lines[cursor:])
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    appended = ["\n# --- the reference module's imports and helpers ---\n"]
    targets = {m.qualname.split(".")[0] for m in marked}
    for node in ref_tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in targets:
            continue
        if isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant):
            continue  # the docstring
        start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
        appended.extend(ref_lines[start - 1 : node.end_lineno])
    protected.append((len(out) + 1, len(out) + len(appended) + 1))
    return "".join(out + appended), protected


def _drop_statement(text: str, line_number: int | None, protected: list[tuple[int, int]]) -> str:
    """Blank out the top-level statement holding `line_number` (1-based), unless it is reference code."""
    if line_number is None:
        raise RepairFailed
    lines = text.splitlines(keepends=True)
    index = min(line_number, len(lines)) - 1
    start = index
    while start > 0 and not (_is_code(lines[start]) and _indent(lines[start]) == 0
                             and not lines[start].lstrip().startswith((")", "]", "}"))):
        start -= 1
    while start > 0 and lines[start - 1].startswith("@"):
        start -= 1
    end = index + 1
    while end < len(lines) and not (_is_code(lines[end]) and _indent(lines[end]) == 0
                                    and not lines[end].startswith((")", "]", "}"))):
        end += 1
    if any(start + 1 < hi and lo < end + 1 for lo, hi in protected):
        raise RepairFailed  # the failing statement holds reference code: nothing left to drop
    return "".join(lines[:start] + ["\n"] * (end - start) + lines[end:])

