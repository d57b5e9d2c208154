"""The two roofs of one GPU, measured: copy bandwidth and bf16 matrix-product rate (chapter 01's roofline).

    python benchmarks/probes/roofline_probe.py benchmarks/roofline-<gpu>.json

Copy: a device-to-device copy of a 1 GiB buffer, bytes read plus written. Matmul: an 8192³ bf16
product through PyTorch (2·n³ flops). Both are medians of `triton.testing.do_bench`, as in
`mili bench attention`: what real code reaches, below the datasheet's figures. Three more
measurements right after the first are kept as `repeats`: a card's clocks drop under sustained
matrix work, so the matmul rate of a long run is lower than a fresh card's.
"""

import json
import sys
from datetime import date

import torch

from mili.bench.attention import copy_gbps, matmul_tflops
from mili.bench.environment import environment


def main(path: str) -> None:
    report = {"environment": {**environment(dtype="bfloat16"), "date": date.today().isoformat()},
              "copy_gbps": copy_gbps(), "matmul_tflops": matmul_tflops(),
              "repeats": {"copy_gbps": [copy_gbps() for _ in range(3)],
                          "matmul_tflops": [matmul_tflops() for _ in range(3)]},
              "method": "copy: 1 GiB device-to-device, read + write; matmul: 8192^3 bf16 a @ b; do_bench medians"}
    print(json.dumps(report, indent=1))
    with open(path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    main(sys.argv[1])
