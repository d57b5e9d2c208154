set -o pipefail
export MILI_GIT_COMMIT=$(git rev-parse --short HEAD) PYTHONUNBUFFERED=1 MILI_IMPL=reference
nvidia-smi --query-gpu=name --format=csv,noheader
(cd _baseline && PYTHONPATH=$PWD MILI_GIT_COMMIT=01148df timeout 150 python3 ../benchmarks/probes/summing_gemv_probe.py --json $OUT/summing-probe-01148df.json 2>&1 | tail -4)
PYTHONPATH=$PWD timeout 150 python3 benchmarks/probes/summing_gemv_probe.py --json $OUT/summing-probe-new.json 2>&1 | tail -4
echo "probes done at $SECONDS s"
TESTS=0 BASELINE=_baseline BASELINE_COMMIT=01148df bash benchmarks/probes/tp_batch_1_ab.sh $OUT/ab 2>&1 | tail -20
echo "done at $SECONDS s"
