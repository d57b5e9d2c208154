"""Grader for exercise 6.3 (load-test analysis: throughput and latency percentiles from raw timings).

Oracle: numpy (`percentile` with its default linear interpolation, `mean`, `std`) on the
figures defined in the docstring, computed here from random request records.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from mili.bench.analysis import RequestRecord, summarize_requests
from mili.testing import seed_from

pytestmark = pytest.mark.exercise("6.3")


def records(name: str, count: int, error_rate: float = 0.0) -> list[RequestRecord]:
    rng = random.Random(seed_from(name))
    out = []
    for _ in range(count):
        start = rng.uniform(0, 10)
        outputs = rng.randint(1, 30)
        chunks, now = [], start + rng.uniform(0.05, 1.5)
        for _ in range(rng.randint(1, outputs)):  # a chunk may carry several tokens
            chunks.append(now)
            now += rng.expovariate(20)
        end = now + rng.uniform(0, 0.01)
        error = "HTTP 500" if rng.random() < error_rate else None
        out.append(RequestRecord(start, end, chunks, rng.randint(5, 200), outputs, error))
    return out


def oracle(recs: list[RequestRecord], percentiles) -> dict:
    ok = [r for r in recs if r.error is None]
    values = {
        "ttft": [(r.token_times[0] - r.start) * 1e3 for r in ok if r.token_times],
        "tpot": [(r.end - r.token_times[0]) * 1e3 / (r.output_tokens - 1) for r in ok if r.output_tokens > 1],
        "itl": [(b - a) * 1e3 for r in ok for a, b in zip(r.token_times, r.token_times[1:])],
        "e2el": [(r.end - r.start) * 1e3 for r in ok],
    }
    out = {}
    for name, v in values.items():
        v = np.array(v, dtype=np.float64)
        stats = {"mean": v.mean(), "median": np.median(v), "std": v.std()}
        stats.update({f"p{p:g}": np.percentile(v, p) for p in percentiles})
        out[f"{name}_ms"] = stats
    return out


def compare(got: dict, want: dict) -> None:
    for figure, stats in want.items():
        assert figure in got, f"the summary has no {figure!r} (keys: {sorted(got)})"
        for stat, value in stats.items():
            assert stat in got[figure], f"{figure} has no {stat!r} (keys: {sorted(got[figure])})"
            assert got[figure][stat] == pytest.approx(value, rel=1e-9, abs=1e-9), (
                f"{figure}[{stat!r}] is {got[figure][stat]!r}, expected {value!r}. Percentiles interpolate "
                "linearly between the two closest ranks (rank = p/100 * (n - 1)); std divides by n")


@pytest.mark.parametrize("percentiles", [(50, 90, 99), (25, 99.9)])
def test_latency_statistics_match_numpy(percentiles):
    recs = records(f"stats-{percentiles}", 64)
    compare(summarize_requests(recs, 12.5, percentiles), oracle(recs, percentiles))


def test_errors_are_counted_and_left_out():
    recs = records("errors", 80, error_rate=0.25)
    summary = summarize_requests(recs, 8.0)
    ok = [r for r in recs if r.error is None]
    assert (summary["completed"], summary["errors"]) == (len(ok), len(recs) - len(ok))
    compare(summary, oracle(recs, (50, 90, 99)))
    assert summary["duration_s"] == 8.0
    assert summary["request_throughput"] == pytest.approx(len(ok) / 8.0)
    assert summary["output_throughput"] == pytest.approx(sum(r.output_tokens for r in ok) / 8.0), (
        "output throughput counts the output tokens of successful requests only")
    assert summary["total_token_throughput"] == pytest.approx(sum(r.output_tokens + r.prompt_tokens for r in ok) / 8.0)


def test_a_figure_without_samples_is_zero():
    recs = [RequestRecord(0.0, 0.5, [0.2], 10, 1)]  # one token: no TPOT, no gap
    summary = summarize_requests(recs, 1.0)
    assert summary["tpot_ms"] == {"mean": 0.0, "median": 0.0, "std": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    assert summary["itl_ms"]["p99"] == 0.0
    assert summary["ttft_ms"]["mean"] == pytest.approx(200.0) and summary["e2el_ms"]["median"] == pytest.approx(500.0)


@pytest.mark.parametrize("duration,percentiles", [(0.0, (50,)), (-1.0, (50,)), (1.0, (101,)), (1.0, (-5,))])
def test_bad_arguments_raise(duration, percentiles):
    with pytest.raises(ValueError):
        summarize_requests(records("bad", 3), duration, percentiles)
