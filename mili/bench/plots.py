"""Drawing shared by the benchmarks' plots."""

from __future__ import annotations


def pyplot():
    """matplotlib's pyplot, drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def labelled_bars(ax, labels: list[str], values: list[float], fmt: str, **bar_options) -> None:
    """One bar per value, each with its value written on top."""
    ax.bar(range(len(values)), values, **bar_options)
    ax.set_xticks(range(len(values)), labels)
    for i, value in enumerate(values):
        ax.text(i, value, fmt.format(value), ha="center", va="bottom", fontsize=8)


def save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
