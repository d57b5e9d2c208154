"""MILI: a Qwen3 inference engine built chapter by chapter. See README.md and chapters/."""

__version__ = "0.1.0"


def grade(selector: str | None = None, *, report: str | None = None) -> dict:
    """Grade the student's code for a chapter ('01') or an exercise ('1.1'); prints a score table."""
    from mili.grading import grade as _grade

    return _grade(selector, report=report)
