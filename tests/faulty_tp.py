"""`mili` whose tensor-parallel rank 1 fails in the middle of generating, for
tests/test_tensor_parallel.py (run as `python -m tests.faulty_tp generate ... --tensor-parallel-size 2`).

Every rank runs this module: a worker process imports the main module of rank 0's process. On
rank 1, the row-parallel layers raise once they have run $MILI_FAULT_AFTER times: a failure
inside a worker, as a bug or a device error there would be.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from mili.cli import main
from mili.model.parallel import RowParallelLinear

FAULT_AFTER = int(os.environ["MILI_FAULT_AFTER"])
_real_forward = RowParallelLinear.forward
_calls = 0


def _faulty_forward(self, x):
    global _calls
    _calls += 1
    if dist.get_rank() == 1 and _calls > FAULT_AFTER:
        raise RuntimeError("injected failure on rank 1")
    return _real_forward(self, x)


RowParallelLinear.forward = _faulty_forward

if __name__ == "__main__":
    sys.exit(main())
