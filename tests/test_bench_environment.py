"""The commit a benchmark's JSON names (mili/bench/environment.py): the code that ran, or a mark
that it was not a commit's code."""

import subprocess

import pytest

from mili.bench import environment


def _git(folder, *args):
    return subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    (tmp_path / "kernel.py").write_text("fast = True\n")
    _git(tmp_path, "add", "kernel.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.setattr(environment, "repo_root", lambda: tmp_path)
    monkeypatch.delenv("MILI_GIT_COMMIT", raising=False)
    return tmp_path


def test_a_clean_checkout_names_its_head(checkout):
    assert environment.git_commit() == _git(checkout, "rev-parse", "HEAD")


def test_changed_tracked_files_mark_the_commit_dirty(checkout):
    (checkout / "kernel.py").write_text("fast = False  # an experiment\n")
    assert environment.git_commit() == _git(checkout, "rev-parse", "HEAD") + "+dirty", (
        "a figure measured on code that is not the commit's must not name the commit alone")


def test_a_named_commit_wins(checkout, monkeypatch):
    monkeypatch.setenv("MILI_GIT_COMMIT", "0464372")
    assert environment.git_commit() == "0464372"
