"""MILI: a Qwen3 inference engine built chapter by chapter. See README.md and chapters/."""

__version__ = "0.1.0"

from mili.import_fallback import install as _install_import_fallback  # noqa: E402

_install_import_fallback()  # a student file with a syntax error must not break the whole package


def __getattr__(name):
    # the engine pulls in torch and the model: import it only when asked for
    if name in ("LLM", "SamplingParams"):
        from mili import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'mili' has no attribute {name!r}")


def grade(selector: str | None = None, *, report: str | None = None, verbose: bool = False) -> dict:
    """Grade the student's code for a chapter ('01') or an exercise ('1.1'); prints a score table
    (`verbose`: every failing test, not the first three)."""
    from mili.grading import grade as _grade

    return _grade(selector, report=report, verbose=verbose)
