"""Exercise 6.4's grader fails the mistakes students make: each mutant is the reference with one
realistic bug, and the grader's checks (on 2 gloo ranks) must catch it."""

from __future__ import annotations

import pytest
import torch.distributed as dist
import torch.nn.functional as F

from mili.model.parallel import ColumnParallelLinear, RowParallelLinear
from mili.testing import run_on_ranks
from tests.graders.test_06_parallel import IMPLEMENTATION, run_checks


class ForgetsTheAllReduce(RowParallelLinear):
    def forward(self, x):
        y = F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias


class AddsTheBiasOnEveryRank(RowParallelLinear):
    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        dist.all_reduce(y, group=self.group.process_group)
        return y


class SplitsTheRowParallelWeightByRows(RowParallelLinear):  # the wrong dimension
    def load(self, weight, bias=None):
        self.weight.copy_(weight[self.cols.start:self.cols.stop])
        if bias is not None:
            self.bias.copy_(bias[:])


class SplitsTheColumnParallelWeightByColumns(ColumnParallelLinear):  # the wrong dimension
    def load(self, weight, bias=None):
        self.weight.copy_(weight[:, self.rows.start:self.rows.stop])
        if bias is not None:
            self.bias.copy_(bias[self.rows.start:self.rows.stop])


class ForgetsToSplitTheBias(ColumnParallelLinear):
    def load(self, weight, bias=None):
        self.weight.copy_(weight[self.rows.start:self.rows.stop])
        if bias is not None:
            self.bias.copy_(bias[:len(self.rows)])


class ReadsTheWholeTensor(ColumnParallelLinear):
    def load(self, weight, bias=None):
        full = weight[:]
        self.weight.copy_(full[self.rows.start:self.rows.stop])
        if bias is not None:
            self.bias.copy_(bias[self.rows.start:self.rows.stop])


COLUMN, ROW = IMPLEMENTATION
HERE = __name__
MUTANTS = {  # name -> ((column, row), the checks that must fail)
    "ForgetsTheAllReduce": ((COLUMN, f"{HERE}:ForgetsTheAllReduce"), {"row_forward", "column_then_row"}),
    "AddsTheBiasOnEveryRank": ((COLUMN, f"{HERE}:AddsTheBiasOnEveryRank"), {"row_forward", "column_then_row"}),
    "SplitsTheRowParallelWeightByRows": ((COLUMN, f"{HERE}:SplitsTheRowParallelWeightByRows"),
                                         {"row_load", "reads_only_its_part", "column_then_row"}),
    "SplitsTheColumnParallelWeightByColumns": ((f"{HERE}:SplitsTheColumnParallelWeightByColumns", ROW),
                                               {"column_load", "reads_only_its_part", "column_then_row"}),
    "ForgetsToSplitTheBias": ((f"{HERE}:ForgetsToSplitTheBias", ROW), {"column_load", "column_then_row"}),
    "ReadsTheWholeTensor": ((f"{HERE}:ReadsTheWholeTensor", ROW), {"reads_only_its_part"}),
}


@pytest.fixture(scope="module")
def outcomes():
    variants = [IMPLEMENTATION] + [variant for variant, _ in MUTANTS.values()]
    per_rank = run_on_ranks(run_checks, 2, variants)
    return {name: [rank[i] for rank in per_rank] for i, name in enumerate(["reference", *MUTANTS])}


def test_the_reference_passes_every_check(outcomes):
    failures = {check: msg for o in outcomes["reference"] for check, msg in o.items() if msg}
    assert not failures, failures


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_the_grader_fails_the_mutant(outcomes, mutant):
    must_fail = MUTANTS[mutant][1]
    failed = {check for o in outcomes[mutant] for check, msg in o.items() if msg}
    assert must_fail <= failed, f"{mutant}: checks {sorted(must_fail - failed)} passed but must fail"
