"""What every chapter builder shares: collect cells in order, write the notebook without outputs.

    python chapters/_build/build_NN.py
    jupyter nbconvert --to notebook --execute --inplace chapters/NN_<name>.ipynb
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CHAPTERS = Path(__file__).resolve().parents[1]
CELLS = []


def md(text: str) -> None:
    CELLS.append(new_markdown_cell(text.strip("\n")))


def code(text: str) -> None:
    CELLS.append(new_code_cell(text.strip("\n")))


def write(name: str) -> Path:
    nb = new_notebook(cells=CELLS)
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    path = CHAPTERS / name
    nbformat.write(nb, path)
    print("wrote", path)
    return path
