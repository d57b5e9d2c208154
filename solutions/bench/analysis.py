"""Reference for exercise 6.3: throughput and latency percentiles from a load test's raw timings."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mili.bench.analysis import RequestRecord


def _percentile(sorted_values: list[float], p: float) -> float:
    """Linear interpolation between the closest ranks, as numpy.percentile does by default."""
    rank = p / 100 * (len(sorted_values) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _statistics(values: list[float], percentiles) -> dict:
    names = ["mean", "median", "std"] + [f"p{p:g}" for p in percentiles]
    if not values:
        return dict.fromkeys(names, 0.0)
    values = sorted(values)
    mean = sum(values) / len(values)
    summary = {"mean": mean, "median": _percentile(values, 50),
               "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}
    summary.update({f"p{p:g}": _percentile(values, p) for p in percentiles})
    return summary


def summarize_requests(records: list[RequestRecord], duration_s: float,
                       percentiles: tuple[float, ...] = (50, 90, 99)) -> dict:
    """Summarize a load test the way vLLM's serving benchmark does.

    records: one RequestRecord per request sent; those with `error` set count as errors and are
    left out of every other figure. duration_s: wall time of the whole test (> 0, else ValueError).
    percentiles: values in [0, 100] (else ValueError).

    Per successful request (times in milliseconds):
    - ttft = token_times[0] - start (only requests with at least one chunk);
    - tpot = (end - token_times[0]) / (output_tokens - 1) (only requests with output_tokens > 1);
    - itl = every gap token_times[i] - token_times[i - 1] (all gaps of all requests pooled);
    - e2el = end - start.

    Returns {"completed", "errors", "duration_s", "request_throughput" (completed / s),
    "output_throughput" (output tokens / s), "total_token_throughput" ((prompt + output) tokens / s),
    and for each of "ttft", "tpot", "itl", "e2el" a key "<name>_ms" holding {"mean", "median", "std",
    "p<P>" for each P (formatted with "g": 50 -> "p50", 99.9 -> "p99.9")}}. Percentiles interpolate
    linearly between the closest ranks (numpy's default); "std" is the population standard deviation.
    A figure with no samples is 0.0 in every statistic.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if any(not 0 <= p <= 100 for p in percentiles):
        raise ValueError(f"percentiles must be in [0, 100], got {percentiles}")
    ok = [r for r in records if r.error is None]
    samples = {name: [] for name in ("ttft", "tpot", "itl", "e2el")}
    for r in ok:
        samples["e2el"].append((r.end - r.start) * 1e3)
        if r.token_times:
            samples["ttft"].append((r.token_times[0] - r.start) * 1e3)
            samples["itl"].extend((b - a) * 1e3 for a, b in zip(r.token_times, r.token_times[1:]))
            if r.output_tokens > 1:
                samples["tpot"].append((r.end - r.token_times[0]) * 1e3 / (r.output_tokens - 1))
    output_tokens = sum(r.output_tokens for r in ok)
    summary = {"completed": len(ok), "errors": len(records) - len(ok), "duration_s": duration_s,
               "request_throughput": len(ok) / duration_s, "output_throughput": output_tokens / duration_s,
               "total_token_throughput": (output_tokens + sum(r.prompt_tokens for r in ok)) / duration_s}
    for name, values in samples.items():
        summary[f"{name}_ms"] = _statistics(values, percentiles)
    return summary
