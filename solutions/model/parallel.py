"""Reference for exercise 6.4 (mirrors mili/model/parallel.py).

Each class holds only the exercise methods; `mili.exercise` installs them on mili's classes.
"""

from __future__ import annotations

from torch import Tensor


class ColumnParallelLinear:
    def load(self, weight, bias=None) -> None:
        """Copy this rank's part of the full layer into self.weight (and self.bias).

        weight: the full W [out_features, in_features]; bias: the full b [out_features] or None.
        Either may be a safetensors slice, which reads from disk only the part you index: take
        your part with one basic slice (weight[a:b] or weight[:, a:b]), never the whole tensor.
        This rank's output features are self.rows (a range). Copy in place
        (self.weight.copy_(...)); copy_ also converts the dtype.
        """
        rows = slice(self.rows.start, self.rows.stop)
        self.weight.copy_(weight[rows])
        if bias is not None:
            self.bias.copy_(bias[rows])


class RowParallelLinear:
    def load(self, weight, bias=None) -> None:
        """Copy this rank's part of the full layer into self.weight (and self.bias).

        weight: the full W [out_features, in_features]; bias: the full b [out_features] or None.
        Either may be a safetensors slice, which reads from disk only the part you index: take
        your part with one basic slice (weight[a:b] or weight[:, a:b]), never the whole tensor.
        This rank's input features are self.cols (a range). Copy in place
        (self.weight.copy_(...)); copy_ also converts the dtype.
        """
        self.weight.copy_(weight[:, self.cols.start:self.cols.stop])
        if bias is not None:
            self.bias.copy_(bias[:])

    def forward(self, x: Tensor) -> Tensor:
        """x: [T, len(self.cols)], this rank's input features -> y: [T, out_features], the full
        output, the same on every rank.

        Multiply by this rank's weight (self.partial_product(x): a partial sum of y), sum the
        partial sums of all ranks with y = self.group.all_reduce(y) (dist.all_reduce over the
        group, or a faster kernel on GPUs: use the tensor it returns), and add the bias
        (self.bias may be None) so that it counts once.
        """
        y = self.group.all_reduce(self.partial_product(x))
        return y if self.bias is None else y + self.bias
