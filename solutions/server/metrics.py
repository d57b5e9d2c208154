"""Reference for exercise 6.2: a finished request's TTFT, TPOT, inter-token gaps and latency."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mili.server.metrics import ServerMetrics


def observe_request(metrics: ServerMetrics, arrival_time: float, token_times: list[float],
                    finish_time: float) -> None:
    """Record one finished request's latencies in the histograms of `metrics`.

    arrival_time: when the server received the request (seconds, time.monotonic()).
    token_times: when each output token reached the server, in order (len = output tokens of
    the first choice; may be empty for a request aborted before its first token).
    finish_time: when the request finished.

    Observe (each with `.observe(seconds)`):
    - metrics.e2e_request_latency: finish_time - arrival_time, always;
    - metrics.time_to_first_token: token_times[0] - arrival_time, if there is a first token;
    - metrics.inter_token_latency: every gap token_times[i] - token_times[i - 1], i >= 1;
    - metrics.time_per_output_token: (token_times[-1] - token_times[0]) / (len(token_times) - 1),
      once, if there are at least two tokens.
    Raises ValueError (before observing anything) if token_times is not sorted or starts before
    arrival_time, or if finish_time is before the last token.
    """
    if token_times and token_times[0] < arrival_time:
        raise ValueError(f"the first token ({token_times[0]}) comes before the arrival ({arrival_time})")
    if any(b < a for a, b in zip(token_times, token_times[1:])):
        raise ValueError("token_times must be sorted")
    if token_times and finish_time < token_times[-1]:
        raise ValueError(f"finish_time ({finish_time}) is before the last token ({token_times[-1]})")
    metrics.e2e_request_latency.observe(finish_time - arrival_time)
    if not token_times:
        return
    metrics.time_to_first_token.observe(token_times[0] - arrival_time)
    for previous, current in zip(token_times, token_times[1:]):
        metrics.inter_token_latency.observe(current - previous)
    if len(token_times) > 1:
        metrics.time_per_output_token.observe((token_times[-1] - token_times[0]) / (len(token_times) - 1))
