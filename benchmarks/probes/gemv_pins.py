"""Pin the batch-1 GEMV's launch configuration per shape, in every process of a run.

The GEMV (mili/kernels/linear.py) is autotuned at warm-up, on each rank on its own, except for
the shapes that linear.GEMV_PINS fixes for the card. Runs of one tree at TP=2 on two H200s fell
in two groups about 0.05 ms a step apart, and the picks differed between runs and between ranks
(benchmarks/tp-gemv-empties-ab-h200/autotune-choices/); the runs pinned to one run's picks all
took its time (benchmarks/tp-gemv-pins-ab-h200/). This probe pins from the environment, to
find the pins for a card or shape that GEMV_PINS lacks, in every rank's process:

    MILI_GEMV_PINS="3072x4096:plain,empties=2,1024,4,3;4096x2048:push=2,512,2,2" \
      PYTHONPATH=$PWD/benchmarks/probes/gemv_pins_site:$PWD python3 -m mili.bench.latency ...

A pin is NxK:OUTPUT[,empties][,input=INPUT]=BLOCK_N,BLOCK_K,num_warps,num_stages: the GEMV as its
autotuner keys it (N outputs, K inputs, what it writes, whether it empties a sum site, and what
it multiplies, "plain" unless said), and one of GEMV_CONFIGS. The card's own pins stay where the
environment names another shape. gemv_pins_site/ holds a sitecustomize.py that applies
MILI_GEMV_PINS in every Python process started with that folder on PYTHONPATH, the worker ranks
included (it hides any other sitecustomize of the environment).

    python3 -m benchmarks.probes.gemv_pins LOG [UNLIKE]

prints, in that syntax, the picks a run printed with TRITON_PRINT_AUTOTUNING=1: for each shape
the first printed (with several ranks, the log does not say whose it is), or with UNLIKE (pins in
that syntax, e.g. another run's picks) the first that differs from UNLIKE's, where one does.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from mili.kernels.linear import (
    GEMV_CONFIGS,
    GemvLaunch,
    GemvShape,
    _gemv_tuned,
    card_pins,
    keep_pinned,
    launch_of,
)

INPUTS = ("plain", "rms_norm", "add_rms_norm")
OUTPUTS = ("plain", "silu_and_mul", "push")
PICK = re.compile(r"with key as \((\d+), (\d+), '(\w+)', '(\w+)', (True|False),.*?\n.*?\nbest config selected: "
                  r"BLOCK_N: (\d+), BLOCK_K: (\d+), num_warps: (\d+), num_ctas: \d+, num_stages: (\d+)")


def parse_pins(text: str) -> dict[GemvShape, GemvLaunch]:
    """The pins of MILI_GEMV_PINS's syntax (see the module's docstring), by shape."""
    pins = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        try:
            shape, launch = item.rsplit("=", 1)
            dims, kind = shape.split(":")
            n, k = (int(v) for v in dims.lower().split("x"))
            output, *flags = kind.split(",")
            input_kind = next((flag.removeprefix("input=") for flag in flags if flag.startswith("input=")), "plain")
            rest = [flag for flag in flags if not flag.startswith("input=")]
            if output not in OUTPUTS or input_kind not in INPUTS or len(flags) - len(rest) > 1 or rest not in ([], ["empties"]):
                raise ValueError
            block_n, block_k, warps, stages = (int(v) for v in launch.split(","))
        except ValueError:
            raise ValueError(f"MILI_GEMV_PINS: {item!r} is not NxK:OUTPUT[,empties][,input=INPUT]=BLOCK_N,BLOCK_K,"
                             f"num_warps,num_stages with OUTPUT plain, silu_and_mul or push and INPUT one of "
                             f"{', '.join(INPUTS)}") from None
        pins[(n, k, input_kind, output, bool(rest))] = (block_n, block_k, warps, stages)
    return pins


def pin(pins: dict[GemvShape, GemvLaunch]) -> None:
    """Make the GEMV's autotuner launch each pinned shape in its pinned configuration only (the
    card's own pins, linear.GEMV_PINS, for the shapes not named here)."""
    known = set(map(launch_of, GEMV_CONFIGS))
    unknown = [launch for launch in pins.values() if launch not in known]
    if unknown:
        raise ValueError(f"MILI_GEMV_PINS: {unknown} not among GEMV_CONFIGS {sorted(known)}")
    _gemv_tuned.early_config_prune = keep_pinned(lambda device: {**card_pins(device), **pins})


def pin_from_environment() -> None:
    if os.environ.get("MILI_GEMV_PINS"):
        pin(parse_pins(os.environ["MILI_GEMV_PINS"]))


def picks_in_log(text: str) -> dict[GemvShape, list[GemvLaunch]]:
    """The GEMV autotuner's picks that TRITON_PRINT_AUTOTUNING=1 printed, by shape, in the order
    printed (one a rank, for the shapes the ranks tuned)."""
    picks = {}
    for n, k, input_kind, output, empties, *launch in PICK.findall(text):
        picks.setdefault((int(n), int(k), input_kind, output, empties == "True"), []).append(tuple(map(int, launch)))
    return picks


def format_pins(pins: dict[GemvShape, GemvLaunch]) -> str:
    """The pins in MILI_GEMV_PINS's syntax (parse_pins reads them back)."""
    def shape(n, k, input_kind, output, empties):
        return f"{n}x{k}:{output}" + (",empties" if empties else "") + ("" if input_kind == "plain" else f",input={input_kind}")
    return ";".join(f"{shape(*key)}={','.join(map(str, launch))}" for key, launch in pins.items())


def first_picks(picks: dict[GemvShape, list[GemvLaunch]], unlike: dict[GemvShape, GemvLaunch] | None = None
                ) -> dict[GemvShape, GemvLaunch]:
    """One pick a shape: the first printed, or the first that differs from `unlike`'s where one does."""
    unlike = unlike or {}
    return {shape: next((launch for launch in launches if launch != unlike.get(shape)), launches[0])
            for shape, launches in picks.items()}


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python3 -m benchmarks.probes.gemv_pins LOG [UNLIKE]  (LOG: a run's output with "
                 "TRITON_PRINT_AUTOTUNING=1; UNLIKE: pins to differ from where the log allows)")
    picks = picks_in_log(Path(sys.argv[1]).read_text())
    if not picks:
        sys.exit(f"{sys.argv[1]}: no GEMV picks printed (was TRITON_PRINT_AUTOTUNING=1 set?)")
    print(format_pins(first_picks(picks, parse_pins(sys.argv[2]) if len(sys.argv) == 3 else None)))
