"""A student file that does not import: only its own exercises stop working, with one warning.

A syntax error (or a bad import, a typo at class level) in a file of `mili/` that holds
exercises would otherwise break everything that imports it: the model, the engine, `mili status`,
every grader of the chapter. An import hook (`install`, run by `mili/__init__.py`) catches the
failure and executes a repaired copy of the file instead, in which every `@exercise` definition
(found line by line, since the file need not parse) is replaced:

- in the `auto` and `reference` modes, by its reference (the same paste as
  `mili.exercise.paste_reference_module`, with the reference module's imports and helpers
  appended), so the engine runs on;
- in `student` mode (grading), or where this copy of the course has no reference, by a stand-in
  that raises NotImplementedError naming the file and its error, so that exactly the broken
  file's exercises fail, with that message, and the others are graded as usual.

A top-level statement of the student's that still fails (a broken helper) is dropped. The file on
disk is not touched; `mili status` lists its exercises as "broken: <error>".
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
    DEFINITION,
    current_mode,
    decorated_definitions,
    node_source,
    one_line_error,
    reference_file,
    register_broken,
    target_node,
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
            source = Path(self.path).read_text(encoding="utf-8", errors="replace")
            if not decorated_definitions(source):
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
    reason = one_line_error(error, path)
    shown = _shown(path)
    reference = reference_file(name) if current_mode() != "student" else None
    reference_source = reference.read_text(encoding="utf-8") if reference else None
    broken_message = f"{shown} does not import ({reason}), so exercise {{id}} cannot run: fix the file first"
    text, protected = repaired_source(source, reference_source, broken_message)
    dunders = {k: v for k, v in vars(module).items() if k.startswith("__") and k.endswith("__")}
    filename = f"{path} (repaired: {'the references' if reference_source else 'stand-ins'} for its exercises)"
    for _ in range(MAX_DROPPED_STATEMENTS + 1):
        vars(module).clear()
        vars(module).update(dunders)
        linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
        try:
            exec(compile(text, filename, "exec"), vars(module))  # noqa: S102 - the repaired module's own code
            break
        except SyntaxError as err:
            bad_line = err.lineno
        except Exception as err:  # noqa: BLE001 - a student's top-level statement that fails: dropped below
            frames = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == filename]
            bad_line = frames[-1] if frames else None
        text = drop_statement(text, bad_line, protected)
    else:
        raise RepairFailed
    references = ({m.qualname: _lookup(module, m.qualname) for m in decorated_definitions(source)}
                  if reference_source else {})
    ids = register_broken(name, source, reason, references)
    plural = len(ids) > 1
    outcome = (f"run{'' if plural else 's'} the reference until you fix it" if reference_source
               else "cannot run until you fix it")
    warn_once(f"broken:{name}", f"{shown} does not import ({reason}); exercise{'s' if plural else ''} "
                                f"{', '.join(ids)} {outcome}")


def _shown(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(Path(*Path(path).parts[-3:])) if "mili" in Path(path).parts[-3:] else path


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


def _stand_in(marked, lines: list[str], message: str) -> list[str]:
    """A definition that raises `message` when used: a function, or a class whose __init__ raises."""
    keyword = next(line.split()[0] for line in lines[marked.line + 1 :] if DEFINITION.match(line))
    name = marked.qualname.split(".")[-1]
    text = message.format(id=marked.exercise_id)
    if keyword == "class":
        return [f"class {name}:\n", "    def __init__(self, *args, **kwargs):\n",
                f"        raise NotImplementedError({text!r})\n"]
    return [f"def {name}(*args, **kwargs):\n", f"    raise NotImplementedError({text!r})\n"]


def repaired_source(source: str, reference_source: str | None,
                    broken_message: str) -> tuple[str, list[tuple[int, int]]]:
    """The student's file with every exercise replaced by its reference (and the reference's
    imports and helpers appended) or, without a reference, by a stand-in raising `broken_message`
    (formatted with the exercise id); also the [start, end) line ranges (1-based) we wrote."""
    lines = source.splitlines(keepends=True)
    ref_tree = ast.parse(reference_source) if reference_source else None
    ref_lines = reference_source.splitlines(keepends=True) if reference_source else []
    marked = decorated_definitions(source)
    replacements = []
    for m in marked:
        start, end = _extent(lines, m.line)
        indent = lines[m.line][: _indent(lines[m.line])]
        if ref_tree is not None:
            try:
                definition = node_source(ref_lines, target_node(ref_tree, m.qualname))
            except LookupError:
                raise RepairFailed from None
        else:
            definition = _stand_in(m, lines, broken_message)
        replacements.append((start, end, [indent + line if line.strip() else line for line in definition]))
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
    if ref_tree is None:
        return "".join(out), protected
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


def drop_statement(text: str, line_number: int | None, protected: list[tuple[int, int]]) -> str:
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

