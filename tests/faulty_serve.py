"""`mili serve` with a fault injected, for tests/test_server_isolation.py (run as `python -m tests.faulty_serve`).

The sampler raises whenever the batch holds a sequence whose prompt contains the token id
$MILI_FAULT_TOKEN and that has generated at least $MILI_FAULT_AFTER tokens: a failure inside the
engine that belongs to one request, as a bad input or a bug in one request's path would be.
"""

from __future__ import annotations

import os
import sys

from mili.engine.model_runner import ModelRunner
from mili.server.cli import main

FAULT_TOKEN = int(os.environ["MILI_FAULT_TOKEN"])
FAULT_AFTER = int(os.environ.get("MILI_FAULT_AFTER", "0"))
_real_sample = ModelRunner.sample


def _faulty_sample(self, seqs, logits, *rest):
    if any(FAULT_TOKEN in s.token_ids[:s.num_prompt_tokens] and s.num_output_tokens >= FAULT_AFTER for s in seqs):
        raise RuntimeError(f"injected failure (token {FAULT_TOKEN} in the prompt)")
    return _real_sample(self, seqs, logits, *rest)


ModelRunner.sample = _faulty_sample

if __name__ == "__main__":
    sys.exit(main())
