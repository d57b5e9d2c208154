"""Applies MILI_GEMV_PINS (benchmarks/probes/gemv_pins.py) in every Python process started with
this folder on PYTHONPATH, and the repository root after it. A malformed pin ends the process
(an exception here would only be printed, and the run would go on unpinned)."""

import os
import sys

if os.environ.get("MILI_GEMV_PINS"):
    from benchmarks.probes.gemv_pins import pin_from_environment

    try:
        pin_from_environment()
    except ValueError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
