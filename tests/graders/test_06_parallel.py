"""Grader for exercise 6.4 (column- and row-parallel linear layers), on 2 gloo ranks.

Oracle: the same layers computed whole in one process (`F.linear` on the full weights). One
pair of processes runs every check (`run_checks`); each test reports one check. The full
weights reach `load` as `LazySlice`s, which behave like safetensors slices (basic slicing only)
and count what a rank reads.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from mili.model.parallel import TensorParallelGroup
from mili.testing import assert_close, generator_for, run_on_ranks

IN, HIDDEN, OUT, TOKENS = 6, 9, 5, 4  # HIDDEN = 9 splits 5 + 4 over 2 ranks
IMPLEMENTATION = ("mili.model.parallel:ColumnParallelLinear", "mili.model.parallel:RowParallelLinear")


class LazySlice:
    """Stands in for a safetensors slice: basic slices only, and it counts the elements read."""

    def __init__(self, tensor: torch.Tensor, name: str):
        self._tensor, self.name, self.elements_read = tensor, name, 0

    def __getitem__(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if not all(isinstance(p, slice) and p.step in (None, 1) for p in parts):
            raise TypeError(f"{self.name}[{index!r}]: a safetensors slice takes basic slices only, e.g. "
                            f"{self.name}[a:b] or {self.name}[:, a:b] (a range is not a slice: use r.start:r.stop)")
        part = self._tensor[index].clone()
        self.elements_read += part.numel()
        return part

    def get_shape(self) -> list[int]:
        return list(self._tensor.shape)

    @property
    def shape(self):
        raise AttributeError(f"{self.name} is a safetensors slice: it has get_shape(), not .shape; you need no "
                             "shape anyway: self.rows / self.cols say which part is yours")


def full_weights() -> dict[str, torch.Tensor]:
    g = generator_for("exercise 6.4")
    return {"w1": torch.randn(HIDDEN, IN, generator=g), "b1": torch.randn(HIDDEN, generator=g),
            "w2": torch.randn(OUT, HIDDEN, generator=g), "b2": torch.randn(OUT, generator=g),
            "x": torch.randn(TOKENS, IN, generator=g)}


def _part(n: int, rank: int, size: int) -> slice:
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def check_column_load(rank, size, column, row) -> None:
    w = full_weights()
    layer = column(IN, HIDDEN, group=TensorParallelGroup(rank, size), bias=True)
    with torch.no_grad():
        layer.load(LazySlice(w["w1"], "weight"), LazySlice(w["b1"], "bias"))
    rows = _part(HIDDEN, rank, size)
    assert_close(layer.weight, w["w1"][rows], what=f"rank {rank}'s column-parallel weight",
                 hint="a column-parallel rank holds some OUTPUT features: rows self.rows of W [out, in]")
    assert_close(layer.bias, w["b1"][rows], what=f"rank {rank}'s column-parallel bias",
                 hint="each output feature has its bias: the bias splits like the rows")


def check_row_load(rank, size, column, row) -> None:
    w = full_weights()
    layer = row(HIDDEN, OUT, group=TensorParallelGroup(rank, size), bias=True)
    with torch.no_grad():
        layer.load(LazySlice(w["w2"], "weight"), LazySlice(w["b2"], "bias"))
    cols = _part(HIDDEN, rank, size)
    assert_close(layer.weight, w["w2"][:, cols], what=f"rank {rank}'s row-parallel weight",
                 hint="a row-parallel rank holds some INPUT features: columns self.cols of W [out, in]")
    assert_close(layer.bias, w["b2"], what=f"rank {rank}'s row-parallel bias",
                 hint="the bias belongs to the output features, which every rank computes: each holds all of it")


def check_reads_only_its_part(rank, size, column, row) -> None:
    w = full_weights()
    group = TensorParallelGroup(rank, size)
    mine = len(range(HIDDEN)[_part(HIDDEN, rank, size)])
    for layer, name, full, part in [(column(IN, HIDDEN, group=group), "column-parallel", w["w1"], mine * IN),
                                    (row(HIDDEN, OUT, group=group), "row-parallel", w["w2"], OUT * mine)]:
        weight = LazySlice(full, "weight")
        with torch.no_grad():
            layer.load(weight)
        assert weight.elements_read == part, (
            f"rank {rank} read {weight.elements_read} elements of the {name} weight to keep {part}: read only your "
            "part (one slice), never the whole tensor; a rank of a 32B model cannot hold all of it")


def check_row_forward(rank, size, column, row) -> None:
    w = full_weights()
    layer = row(HIDDEN, OUT, group=TensorParallelGroup(rank, size), bias=True)
    cols = _part(HIDDEN, rank, size)
    with torch.no_grad():
        layer.weight.copy_(w["w2"][:, cols])
        layer.bias.copy_(w["b2"])
        h = F.linear(w["x"], w["w1"])
        y = layer(h[:, cols].contiguous())
    assert_close(y, F.linear(h, w["w2"], w["b2"]), what=f"rank {rank}'s row-parallel output",
                 hint="each rank's product is a partial sum: all-reduce (sum) it, then add the bias once")


def check_column_then_row(rank, size, column, row) -> None:
    """The Megatron pair (as in the MLP): column-parallel, an activation per feature, row-parallel."""
    w = full_weights()
    group = TensorParallelGroup(rank, size)
    first, second = column(IN, HIDDEN, group=group, bias=True), row(HIDDEN, OUT, group=group, bias=True)
    with torch.no_grad():
        first.load(LazySlice(w["w1"], "weight"), LazySlice(w["b1"], "bias"))
        second.load(LazySlice(w["w2"], "weight"), LazySlice(w["b2"], "bias"))
        y = second(F.silu(first(w["x"])))
        expected = F.linear(F.silu(F.linear(w["x"], w["w1"], w["b1"])), w["w2"], w["b2"])
    assert_close(y, expected, what=f"rank {rank}'s output of column-parallel -> silu -> row-parallel",
                 hint="no communication between the two layers: the column layer's output features are exactly "
                      "the row layer's input features on the same rank")


CHECKS = {
    "column_load": check_column_load,
    "row_load": check_row_load,
    "reads_only_its_part": check_reads_only_its_part,
    "row_forward": check_row_forward,
    "column_then_row": check_column_then_row,
}


def _load_class(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def run_checks(rank: int, size: int, variants: list[tuple[str, str]]) -> list[dict[str, str | None]]:
    """For each (column class, row class) variant: every check's failure message, or None."""
    torch.manual_seed(0)
    outcomes = []
    for column_path, row_path in variants:
        column, row = _load_class(column_path), _load_class(row_path)
        outcome = {}
        for name, check in CHECKS.items():
            try:
                check(rank, size, column, row)
                outcome[name] = None
            except Exception as err:  # noqa: BLE001 - reported as this check's failure
                outcome[name] = f"rank {rank}: {type(err).__name__}: {err}"
        outcomes.append(outcome)
    return outcomes


@pytest.fixture(scope="module")
def outcomes():
    per_rank = run_on_ranks(run_checks, 2, [IMPLEMENTATION])
    return [rank_outcomes[0] for rank_outcomes in per_rank]


@pytest.mark.exercise("6.4")
@pytest.mark.parametrize("check", list(CHECKS))
def test_two_ranks_match_one_process(outcomes, check):
    failures = [o[check] for o in outcomes if o[check] is not None]
    assert not failures, "\n".join(failures)
