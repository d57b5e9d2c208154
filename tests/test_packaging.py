"""pyproject.toml and environment.yml install the same packages; the README's commands exist."""

import re

import pytest

from mili.exercise import repo_root

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = repo_root()


def _name(requirement: str) -> str:
    return re.split(r"[<>=!;\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r): r for r in project["dependencies"] + extras["dev"] + extras["server"]}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pip_section = lines[next(i for i, line in enumerate(lines) if line.strip() == "- pip:") + 1:]
    listed = {_name(r): r for r in (line.strip()[2:] for line in pip_section) if not r.startswith("-e ")}
    assert set(listed) == set(wanted), f"only in pyproject: {set(wanted) - set(listed)}; only in environment.yml: {set(listed) - set(wanted)}"
    for name, requirement in wanted.items():
        assert listed[name].replace(" ", "") == requirement.replace(" ", ""), f"{name}: {listed[name]} vs {requirement}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install (--quiet )?torch==2\.13\.0", ci), "CI must install the CPU torch wheel first"
    command = re.search(r"## Run the tests.*?```bash\n(.*?)\n```", readme, re.S).group(1).strip().splitlines()[-1]
    assert command in ci.splitlines(), f"CI must run the README's test command {command!r}"
