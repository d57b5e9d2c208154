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
    wanted = {_name(r): r for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    pip_lines = [line.strip()[2:] for line in (ROOT / "environment.yml").read_text().splitlines()
                 if line.strip().startswith("- ") and not line.strip().startswith("- -e")]
    listed = {_name(r): r for r in pip_lines if _name(r) not in ("python", "pip")}
    assert set(listed) == set(wanted), f"only in pyproject: {set(wanted) - set(listed)}; only in environment.yml: {set(listed) - set(wanted)}"
    for name, requirement in wanted.items():
        assert listed[name].replace(" ", "") == requirement.replace(" ", ""), f"{name}: {listed[name]} vs {requirement}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0" in ci, "CI must install the CPU torch wheel before the package"
    command = re.search(r"## Run the tests.*?```bash\n(.*?)\n```", readme, re.S).group(1).strip().splitlines()[-1]
    assert command in ci.splitlines(), f"CI must run the README's test command {command!r}"
