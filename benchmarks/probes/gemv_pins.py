"""Pin the batch-1 GEMV's launch configuration per shape, in every process of a run.

The GEMV (mili/kernels/linear.py) is autotuned at warm-up, on each rank on its own. Runs of one
tree at TP=2 on two H200s fell in two groups about 0.07 ms a step apart, and the picks differed
between runs and between ranks (benchmarks/tp-gemv-empties-ab-h200/autotune-choices/). With a
pin, a shape is timed in its pinned configuration only, so every run and every rank use it:

    MILI_GEMV_PINS="3072x4096:plain,empties=2,1024,4,3;4096x2048:push=2,512,2,2" \
      PYTHONPATH=$PWD/benchmarks/probes/gemv_pins_site:$PWD python3 -m mili.bench.latency ...

A pin is NxK:OUTPUT[,empties]=BLOCK_N,BLOCK_K,num_warps,num_stages: the GEMV as its autotuner
keys it (N outputs, K inputs, what it writes, and whether it empties a sum site), and one of
GEMV_CONFIGS. gemv_pins_site/ holds a sitecustomize.py that applies MILI_GEMV_PINS in every
Python process started with that folder on PYTHONPATH, the worker ranks included (it hides any
other sitecustomize of the environment). Shapes without a pin are autotuned as usual.
"""

from __future__ import annotations

import os

Shape = tuple[int, int, str, bool]  # N, K, OUTPUT, EMPTIES
Launch = tuple[int, int, int, int]  # BLOCK_N, BLOCK_K, num_warps, num_stages


def parse_pins(text: str) -> dict[Shape, Launch]:
    """The pins of MILI_GEMV_PINS's syntax (see the module's docstring), by shape."""
    pins = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        try:
            shape, launch = item.split("=")
            dims, kind = shape.split(":")
            n, k = (int(v) for v in dims.lower().split("x"))
            output, *flags = kind.split(",")
            if output not in ("plain", "silu_and_mul", "push") or flags not in ([], ["empties"]):
                raise ValueError
            block_n, block_k, warps, stages = (int(v) for v in launch.split(","))
        except ValueError:
            raise ValueError(f"MILI_GEMV_PINS: {item!r} is not NxK:OUTPUT[,empties]=BLOCK_N,BLOCK_K,num_warps,num_stages "
                             "with OUTPUT plain, silu_and_mul or push") from None
        pins[(n, k, output, bool(flags))] = (block_n, block_k, warps, stages)
    return pins


def pin(pins: dict[Shape, Launch]) -> None:
    """Make the GEMV's autotuner time only the pinned configuration of each pinned shape."""
    from mili.kernels.linear import GEMV_CONFIGS, _gemv_tuned

    known = {(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages): c for c in GEMV_CONFIGS}
    unknown = [launch for launch in pins.values() if launch not in known]
    if unknown:
        raise ValueError(f"MILI_GEMV_PINS: {unknown} not among GEMV_CONFIGS {sorted(known)}")
    chosen = {shape: known[launch] for shape, launch in pins.items()}

    def keep_pinned(configs, named_args, **kwargs):
        shape = (named_args["N"], named_args["K"], kwargs["OUTPUT"], kwargs["EMPTIES"])
        return [chosen[shape]] if shape in chosen else configs

    _gemv_tuned.early_config_prune = keep_pinned


def pin_from_environment() -> None:
    if os.environ.get("MILI_GEMV_PINS"):
        pin(parse_pins(os.environ["MILI_GEMV_PINS"]))
