"""Load-test analysis (chapter 06, exercise 6.3): raw client-side timings in, latency percentiles out.

A load generator records, for every request, when it was sent, when each streamed chunk of
text arrived and when the stream ended; these raw timings are all it keeps. The summary a
serving benchmark reports (vLLM's `benchmark_serving`, `mili bench serve`) is computed from
them afterwards: throughput, and mean / median / percentiles of TTFT, TPOT, ITL and
end-to-end latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mili.exercise import exercise

METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestRecord:
    """One request as the client saw it (times in seconds from any fixed origin, e.g. perf_counter)."""

    start: float  # the request was sent
    end: float  # the response ended (or failed)
    token_times: list[float] = field(default_factory=list)  # each streamed chunk that carried new text
    prompt_tokens: int = 0
    output_tokens: int = 0  # from the server's usage
    error: str | None = None  # None when the request succeeded


@exercise("6.3", "Load-test analysis: percentiles from raw timings")
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
    raise NotImplementedError("Exercise 6.3: see chapters/06_deployment.ipynb, section 6")
