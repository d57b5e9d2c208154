"""Prometheus metrics of the server (chapter 06, exercise 6.2), named as vLLM's with a `mili:` prefix.

Gauges say what the engine holds now (running and waiting requests, KV-cache usage, blocks held
by requests); counters only grow (tokens, prefix-cache queries and hits, preemptions, finished
requests by reason, failed requests apart); histograms record each request's latencies: time to first token (TTFT),
time per output token (TPOT, the mean gap after the first token), every inter-token gap (ITL)
and end-to-end latency. Each server has its own registry, so several can live in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mili.exercise import exercise

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


class ServerMetrics:
    """The metric families of one server, in their own registry (`render()` gives the text format)."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels, r = ["model_name"], self.registry

        def gauge(name, doc):
            return Gauge(f"mili:{name}", doc, labels, registry=r).labels(model_name)

        def counter(name, doc):
            return Counter(f"mili:{name}", doc, labels, registry=r).labels(model_name)

        def histogram(name, doc, buckets):
            return Histogram(f"mili:{name}", doc, labels, buckets=buckets, registry=r).labels(model_name)

        self.num_requests_running = gauge("num_requests_running", "Requests with a sequence in the running batch "
                                          "(a request with n > 1 counts once).")
        self.num_requests_waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled, none of whose "
                                          "sequences runs.")
        self.kv_cache_usage_perc = gauge("kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full), "
                                         "counting blocks kept by the prefix cache.")
        self.kv_cache_blocks_total = gauge("kv_cache_blocks_total", "KV blocks in the pool.")
        self.kv_cache_blocks_in_use = gauge("kv_cache_blocks_in_use", "KV blocks held by running or preempted "
                                            "requests (prefix-cache blocks no request uses are not counted).")
        self.prefix_cache_queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.num_preemptions = counter("num_preemptions", "Sequences preempted (recomputed later).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished and running requests.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self._success = Counter("mili:request_success", "Finished requests by finish reason (stop, length, "
                                "abort).", ["model_name", "finished_reason"], registry=r)
        self.request_failure = counter("request_failure", "Requests the engine failed on (finish_reason 'error'; "
                                       "the client got a 500).")
        self.time_to_first_token = histogram("time_to_first_token_seconds", "Arrival to first token.", _TTFT_BUCKETS)
        self.time_per_output_token = histogram("time_per_output_token_seconds",
                                               "Mean time per output token after the first, per request.",
                                               _TPOT_BUCKETS)
        self.inter_token_latency = histogram("inter_token_latency_seconds", "Gap between consecutive tokens.",
                                             _TPOT_BUCKETS)
        self.e2e_request_latency = histogram("e2e_request_latency_seconds", "Arrival to finish.", _E2E_BUCKETS)
        self.model_name = model_name
        self._last_counts = {"queries": 0, "hits": 0, "preemptions": 0}

    def request_finished(self, reason: str | None) -> None:
        if reason in (None, "error"):
            self.request_failure.inc()
        else:
            self._success.labels(self.model_name, reason).inc()

    def update_engine_stats(self, stats: dict) -> None:
        """Copy an `LLMEngine.stats()` snapshot into the gauges; counters grow by what is new."""
        self.num_requests_running.set(stats["running_requests"])
        self.num_requests_waiting.set(stats["waiting_requests"])
        self.kv_cache_usage_perc.set(stats["kv_cache_usage"])
        self.kv_cache_blocks_total.set(stats["kv_blocks"])
        self.kv_cache_blocks_in_use.set(stats["kv_blocks_in_use"])
        for key, stat, counter in (("queries", "prefix_cache_query_tokens", self.prefix_cache_queries),
                                   ("hits", "prefix_cache_hit_tokens", self.prefix_cache_hits),
                                   ("preemptions", "preemptions", self.num_preemptions)):
            new = stats[stat] - self._last_counts[key]
            if new > 0:
                counter.inc(new)
                self._last_counts[key] = stats[stat]

    def render(self) -> bytes:
        return generate_latest(self.registry)


@exercise("6.2", "Recording TTFT and TPOT")
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
    raise NotImplementedError("Exercise 6.2: see chapters/06_deployment.ipynb, section 4")
