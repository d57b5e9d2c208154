"""Grader for exercise 6.2 (recording TTFT, TPOT, inter-token gaps and end-to-end latency).

Oracle: the definitions computed here in float64 from random timings, compared with the sums
and counts the Prometheus histograms hold afterwards.
"""

from __future__ import annotations

import random

import pytest

from mili.server.metrics import ServerMetrics, observe_request
from mili.testing import seed_from

pytestmark = pytest.mark.exercise("6.2")

HISTOGRAMS = ("time_to_first_token_seconds", "time_per_output_token_seconds", "inter_token_latency_seconds",
              "e2e_request_latency_seconds")


def timings(name: str, num_tokens: int):
    rng = random.Random(seed_from(name))
    arrival = rng.uniform(100, 200)
    times, now = [], arrival + rng.uniform(0.01, 2.0)
    for _ in range(num_tokens):
        times.append(now)
        now += rng.uniform(0.001, 0.2)
    return arrival, times, now + rng.uniform(0.0, 0.05)


def expected(arrival, times, finish) -> dict:
    out = {name: (0, 0.0) for name in HISTOGRAMS}
    out["e2e_request_latency_seconds"] = (1, finish - arrival)
    if times:
        out["time_to_first_token_seconds"] = (1, times[0] - arrival)
        gaps = [b - a for a, b in zip(times, times[1:])]
        out["inter_token_latency_seconds"] = (len(gaps), sum(gaps))
    if len(times) > 1:
        out["time_per_output_token_seconds"] = (1, (times[-1] - times[0]) / (len(times) - 1))
    return out


def observed(metrics: ServerMetrics) -> dict:
    get = metrics.registry.get_sample_value
    labels = {"model_name": "m"}
    return {name: (get(f"mili:{name}_count", labels), get(f"mili:{name}_sum", labels)) for name in HISTOGRAMS}


def check(metrics, want: dict, hint: str) -> None:
    got = observed(metrics)
    for name in HISTOGRAMS:
        (count, total), (want_count, want_total) = got[name], want[name]
        assert count == want_count, f"{name}: {count:g} observations, expected {want_count}. {hint}"
        assert total == pytest.approx(want_total, rel=1e-9, abs=1e-12), (
            f"{name}: observed values sum to {total!r}, expected {want_total!r}. {hint}")


@pytest.mark.parametrize("num_tokens", [2, 7, 50])
def test_one_request_with_several_tokens(num_tokens):
    metrics = ServerMetrics("m")
    arrival, times, finish = timings(f"tokens-{num_tokens}", num_tokens)
    observe_request(metrics, arrival, times, finish)
    check(metrics, expected(arrival, times, finish),
          "TTFT counts from the arrival, TPOT is the mean gap after the first token (once per request), "
          "ITL is observed once per gap")


@pytest.mark.parametrize("num_tokens", [0, 1])
def test_requests_with_too_few_tokens_for_some_figures(num_tokens):
    metrics = ServerMetrics("m")
    arrival, times, finish = timings(f"few-{num_tokens}", num_tokens)
    observe_request(metrics, arrival, times, finish)
    check(metrics, expected(arrival, times, finish),
          "with no token there is no TTFT; with fewer than two tokens there is no TPOT and no gap")


def test_observations_accumulate_over_requests():
    metrics = ServerMetrics("m")
    total = {name: (0, 0.0) for name in HISTOGRAMS}
    for k in range(5):
        arrival, times, finish = timings(f"many-{k}", k * 3)
        observe_request(metrics, arrival, times, finish)
        total = {n: (total[n][0] + v[0], total[n][1] + v[1]) for n, v in expected(arrival, times, finish).items()}
    check(metrics, total, "each call observes one more request; never reset the histograms")


@pytest.mark.parametrize("case", ["unsorted", "before-arrival", "finish-too-early"])
def test_bad_timings_raise_before_observing(case):
    metrics = ServerMetrics("m")
    arrival, times, finish = timings(f"bad-{case}", 5)
    if case == "unsorted":
        times[1], times[3] = times[3], times[1]
    elif case == "before-arrival":
        arrival = times[0] + 0.5
    else:
        finish = times[-1] - 0.01
    with pytest.raises(ValueError):
        observe_request(metrics, arrival, times, finish)
    check(metrics, {name: (0, 0.0) for name in HISTOGRAMS}, "check the timings before observing anything")
