#!/usr/bin/env bash
# The three calls of this folder, each on two H200s of one host, from the repository root with
# b1ec3ec's mili/ and solutions/ in _baseline (git archive b1ec3ec mili solutions | tar -x -C _baseline)
# and the same with ../no-wait/no-wait-on-b1ec3ec.patch applied in _variant_nowait.
# late-wait/ at 299583b, call-2/ and call-3/ at f853553 (the tree itself is the unnamed arm):
BASELINE=_baseline BASELINE_COMMIT=b1ec3ec MILI_GIT_COMMIT=299583b TREES="nowait=_variant_nowait" \
  bash benchmarks/probes/tp_batch_1_ab.sh "$OUT/late-wait"
BASELINE=_baseline BASELINE_COMMIT=b1ec3ec MILI_GIT_COMMIT=f853553 TREES="nowait=_variant_nowait" \
  bash benchmarks/probes/tp_batch_1_ab.sh "$OUT/call-2"
ROUNDS=4 TESTS=0 BASELINE=_baseline BASELINE_COMMIT=b1ec3ec MILI_GIT_COMMIT=f853553 TREES="nowait=_variant_nowait" \
  bash benchmarks/probes/tp_batch_1_ab.sh "$OUT/call-3"
