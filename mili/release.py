"""`mili release DIR`: a copy of the course for students, without the reference solutions.

The copy holds the chapters, `mili/` with its stubs, the graders and what they import, the tiny
model, the docs a student needs and a README that says how grading works. It holds no
`solutions/`, no grader mutants (they are buggy copies of the references), none of the project's
own tests (they need the references), not the instructor guide and not the answers to the
chapters' "Think" questions (docs/instructor-answers.md; the notebooks hold only the questions).

Without references, `MILI_IMPL=auto` has nothing to fall back to: an exercise runs once the
student has written it, and anything that calls an unwritten one fails with a one-line message
naming it. `--with-solutions 01,03` ships the references of those chapters (so the engine can run
before the students reach them, or after a deadline); `--solutions-only 01,03 DIR` writes just
those references, for students to copy into their own copy later.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from mili.exercise import CHAPTERS, discover, reference_file, repo_root

TOP_LEVEL = ("LICENSE", "environment.yml", "chapters", "mili", "tests", "data", "docs", "examples",
             "deployment", "benchmarks")
LEFT_OUT = ("chapters/_build", "tests/graders/mutants", "docs/instructor-guide.md", "docs/instructor-answers.md")
GRADER_SUPPORT = ("tests/__init__.py", "tests/conftest.py", "tests/hf_oracle.py")
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".ipynb_checkpoints", "*.egg-info")


class ReleaseError(ValueError):
    """Bad arguments for `mili release` (reported in one line)."""


def parse_chapters(text: str) -> list[str]:
    """'1,3' or '01,03' -> ['01', '03']; unknown chapters: ReleaseError."""
    chapters = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if not part.isdigit() or f"{int(part):02d}" not in CHAPTERS:
            raise ReleaseError(f"{part!r} is not a chapter; chapters are {', '.join(CHAPTERS)}")
        chapters.append(f"{int(part):02d}")
    if not chapters:
        raise ReleaseError("name at least one chapter, e.g. --with-solutions 01,03")
    return sorted(set(chapters))


def solution_files(root: Path, chapters: list[str]) -> list[Path]:
    """The reference modules (relative to root) of the exercises of `chapters`, with their packages."""
    modules = {t.module for ex in discover().values() if ex.chapter in chapters for t in ex.targets}
    files = {Path("solutions", "__init__.py")}
    for module in modules:
        parts = module.split(".")[1:]
        for depth in range(1, len(parts)):
            files.add(Path("solutions", *parts[:depth], "__init__.py"))
        files.add(Path("solutions", *parts).with_suffix(".py"))
    return sorted(f for f in files if (root / f).is_file())


def _copy(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest, ignore=JUNK, dirs_exist_ok=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)


def copy_course(root: Path, dest: Path, *, with_solutions: list[str] = (), for_grading: bool = False) -> Path:
    """Write the student copy of the course at `root` into `dest` (which must not exist yet).

    for_grading: only what grading needs (`mili/`, the graders, pyproject.toml; `data/` linked).
    """
    root, dest = Path(root).resolve(), Path(dest)
    if dest.exists():
        raise ReleaseError(f"{dest} already exists: give a new folder")
    dest.mkdir(parents=True)
    entries = ("mili", "tests") if for_grading else TOP_LEVEL
    for name in entries:
        src = root / name
        if not src.exists():
            continue
        if name == "tests":
            for rel in GRADER_SUPPORT:
                if (root / rel).is_file():
                    _copy(root / rel, dest / rel)
            _copy(src / "graders", dest / "tests" / "graders")
        else:
            _copy(src, dest / name)
    if for_grading and (root / "data").exists():
        (dest / "data").symlink_to(root / "data")
    for rel in LEFT_OUT:
        target = dest / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for rel in solution_files(root, list(with_solutions)) if with_solutions else []:
        _copy(root / rel, dest / rel)
    if (root / "pyproject.toml").is_file():
        (dest / "pyproject.toml").write_text(_student_pyproject((root / "pyproject.toml").read_text()))
    if not for_grading:
        (dest / "README.md").write_text(student_readme(root, list(with_solutions)))
    return dest


def _student_pyproject(text: str) -> str:
    """The course's pyproject.toml with `pytest` running the graders only (the notebooks need work first)."""
    return re.sub(r'^testpaths = .*$', 'testpaths = ["tests/graders"]', text, count=1, flags=re.MULTILINE)


def _section(readme: str, title: str, stop: str | None = None) -> str:
    """The README's section `title` (up to the next section, or to the line starting with `stop`)."""
    match = re.search(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", readme, flags=re.MULTILINE | re.DOTALL)
    if not match:
        return ""
    text = match.group(0)
    if stop and f"\n{stop}" in text:
        text = text[: text.index(f"\n{stop}")]
    return text.rstrip() + "\n\n"


def student_readme(root: Path, with_solutions: list[str]) -> str:
    readme = (root / "README.md").read_text() if (root / "README.md").is_file() else ""
    title = readme.splitlines()[0] if readme.startswith("# ") else "# MILI"
    shipped = (f"It includes the reference solutions of chapter{'s' if len(with_solutions) > 1 else ''} "
               f"{', '.join(with_solutions)}: those exercises run the reference until you write them."
               if with_solutions else "It includes no reference solutions.")
    return f"""{title}

This is the student copy of the course. {shipped}

## Quick start

On a machine with Python >= 3.10, in this folder:

```bash
pip install -e ".[dev,server]" && mili doctor
```

That installs the package with everything the chapters and the graders need, and checks the
machine. On a CPU-only machine install the CPU build of PyTorch first, it is a tenth of the
download: `pip install torch --index-url https://download.pytorch.org/whl/cpu`.

## How your work is graded

Each exercise is a stub in `mili/` (`raise NotImplementedError("Exercise 2.1 ...")`) whose docstring
holds the whole contract; the chapter notebook explains it. Fill in the stub, then:

```bash
mili status          # every exercise: done, in progress (3/7 methods), not started, or broken
mili grade 05        # a chapter's graders on your code; or one exercise: mili grade 5.3
mili grade 5.3 -v    # every failing test with its whole message and hint
```

`mili grade` runs the graders in `tests/graders/` on your code only (`MILI_IMPL=student`): an
unfinished exercise scores 0, a test that runs longer than a minute fails as a hang, and a crash
is reported against the exercise that crashed. Your instructor grades the same way, with the
same graders and possibly more. Change only the files in `mili/` that hold exercises (private
helpers beside your code are fine); keep the signatures.

**What runs before you have written it.** Without a reference to fall back on, anything that
needs an exercise you have not written stops with a one-line message naming it. `mili generate`
("What is 17 + 25?" answers 42 with the tiny model in `data/`) and `mili serve` need chapters 01,
03 and 05 (02 and 04 too with `--backend triton`); notebook cells that call an unwritten exercise
raise `NotImplementedError` naming it. A half-written class keeps running its stub methods until
you finish it; `mili status` shows where you are.

{_section(readme, "Work through the chapters", stop="Each exercise is a stub")}{_section(readme, "Run a real Qwen3")}{_section(readme, "License")}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mili release", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the folder to write (must not exist)")
    parser.add_argument("--with-solutions", metavar="CHAPTERS", default=None,
                        help="also ship these chapters' reference solutions, e.g. 01,03")
    parser.add_argument("--solutions-only", metavar="CHAPTERS", default=None,
                        help="write only these chapters' reference solutions (solutions/...) into OUT")
    args = parser.parse_args(argv)
    root = repo_root()
    missing = sorted({ex.id for ex in discover().values() for t in ex.targets if reference_file(t.module) is None})
    if missing:
        raise ReleaseError(f"this copy lacks the references of {', '.join(missing)}: run mili release from the "
                           "instructor's copy of the course")
    out = Path(args.out)
    if args.solutions_only:
        if args.with_solutions:
            raise ReleaseError("give either --with-solutions or --solutions-only")
        chapters = parse_chapters(args.solutions_only)
        if out.exists() and any(out.iterdir()):
            raise ReleaseError(f"{out} is not empty: give a new folder")
        files = solution_files(root, chapters)
        for rel in files:
            _copy(root / rel, out / rel)
        print(f"wrote {len(files)} reference files of chapters {', '.join(chapters)} to {out / 'solutions'}; "
              "students copy that solutions/ folder into their copy of the course")
        return 0
    chapters = parse_chapters(args.with_solutions) if args.with_solutions else []
    copy_course(root, out, with_solutions=chapters)
    print(f"wrote the student copy of the course to {out}"
          + (f" (with the reference solutions of chapters {', '.join(chapters)})" if chapters else
             " (no reference solutions)"))
    return 0
