"""`mili bench serve`: a load generator for an OpenAI-compatible server (after vLLM's benchmark_serving).

    mili bench serve --url http://127.0.0.1:8000 --num-prompts 200 --max-concurrency 32 \\
                     [--request-rate R] [--dataset random|shared-prefix] [--json FILE]

Requests go to `/v1/completions` as token-id prompts with `ignore_eos`, so every prompt and every
output has exactly the length asked for. They arrive as a Poisson process at --request-rate
per second (inf: all at once), at most --max-concurrency at a time. Each is streamed; the client
keeps raw timings only (sent, each chunk, end) and `summarize_requests` (exercise 6.3) turns
them into throughput and TTFT / TPOT / ITL / end-to-end percentiles. The prefix-cache hit rate
comes from the server's `/metrics`, read before and after.

`--goodput ttft:MS tpot:MS` (vLLM's flag) also counts the requests that met every one of these
service-level objectives: goodput is their number per second of the run. The JSON keeps each
request's TTFT, TPOT and end-to-end latency (`per_request`), so other objectives can be applied later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from pathlib import Path

import httpx

from mili.bench.analysis import RequestRecord, summarize_requests


def make_prompts(dataset: str, num_prompts: int, input_len: int, vocab_size: int, seed: int,
                 prefix_len: int = 0) -> list[list[int]]:
    """Token-id prompts of `input_len` tokens; 'shared-prefix' starts each with the same `prefix_len`."""
    if dataset not in ("random", "shared-prefix"):
        raise ValueError(f"dataset must be 'random' or 'shared-prefix', got {dataset!r}")
    if dataset == "shared-prefix" and not 0 < prefix_len < input_len:
        raise ValueError(f"prefix_len must be in (0, input_len={input_len}), got {prefix_len}")
    rng = random.Random(seed)
    prefix = [rng.randrange(vocab_size) for _ in range(prefix_len if dataset == "shared-prefix" else 0)]
    return [prefix + [rng.randrange(vocab_size) for _ in range(input_len - len(prefix))] for _ in range(num_prompts)]


async def _one_request(client: httpx.AsyncClient, url: str, body: dict) -> RequestRecord:
    record = RequestRecord(start=time.perf_counter(), end=0.0, prompt_tokens=len(body["prompt"]))
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        record.error = chunk["error"]["message"]
                    elif chunk["choices"] and chunk["choices"][0]["text"]:
                        record.token_times.append(time.perf_counter())
                    if chunk.get("usage"):
                        record.output_tokens = chunk["usage"]["completion_tokens"]
                        record.prompt_tokens = chunk["usage"]["prompt_tokens"]
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as err:
        record.error = f"{type(err).__name__}: {err}"
    record.end = time.perf_counter()
    return record


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` (with these label values) in Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


SLO_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """['ttft:250', 'tpot:25'] -> {'ttft_ms': 250.0, 'tpot_ms': 25.0}; bad items: ValueError."""
    slo = {}
    for item in items or []:
        name, _, value = item.partition(":")
        if name not in SLO_METRICS or not value:
            raise ValueError(f"--goodput takes METRIC:MILLISECONDS with METRIC one of {', '.join(SLO_METRICS)}, "
                             f"got {item!r}")
        try:
            slo[f"{name}_ms"] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {item!r}: {value!r} is not a number of milliseconds") from None
        if not slo[f"{name}_ms"] > 0:
            raise ValueError(f"--goodput {item!r}: the objective must be > 0 ms")
    return slo


def request_latencies(records: list[RequestRecord]) -> list[dict]:
    """Per successful request, in milliseconds: ttft, tpot (None with one output token or none), e2el
    (the definitions of exercise 6.3)."""
    rows = []
    for r in records:
        if r.error is not None:
            continue
        ttft = (r.token_times[0] - r.start) * 1e3 if r.token_times else None
        tpot = ((r.end - r.token_times[0]) * 1e3 / (r.output_tokens - 1)
                if r.token_times and r.output_tokens > 1 else None)
        rows.append({"ttft_ms": ttft, "tpot_ms": tpot, "e2el_ms": (r.end - r.start) * 1e3})
    return rows


def goodput(latencies: list[dict], slo: dict[str, float], duration_s: float) -> dict:
    """Requests per second that met every objective in `slo` (a figure a request lacks counts as met)."""
    met = sum(all(row[name] is None or row[name] <= limit for name, limit in slo.items()) for row in latencies)
    return {"slo_ms": dict(slo), "requests_met": met, "fraction_met": met / len(latencies) if latencies else 0.0,
            "request_goodput": met / duration_s}


async def run_load(url: str, prompts: list[list[int]], *, output_len: int, request_rate: float = float("inf"),
                   max_concurrency: int = 32, seed: int = 0, api_key: str | None = None,
                   timeout_s: float = 600.0, slo: dict[str, float] | None = None) -> dict:
    """Send every prompt, return the summary (exercise 6.3) plus the server's prefix-cache hit rate,
    each request's latencies and, with `slo` ({'ttft_ms': 250.0, ...}), the goodput."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max_concurrency + 4, max_keepalive_connections=max_concurrency + 4)
    async with httpx.AsyncClient(headers=headers, timeout=timeout_s, limits=limits) as client:
        model = (await client.get(url + "/v1/models")).json()["data"][0]["id"]
        before = (await client.get(url + "/metrics")).text
        gate, rng = asyncio.Semaphore(max_concurrency), random.Random(seed)

        async def limited(prompt: list[int]) -> RequestRecord:
            body = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0.0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            async with gate:
                return await _one_request(client, url, body)

        start, tasks = time.perf_counter(), []
        for prompt in prompts:
            tasks.append(asyncio.create_task(limited(prompt)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        records = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        after = (await client.get(url + "/metrics")).text
    summary = summarize_requests(records, duration)
    queries, hits = (metric_value(after, f"mili:prefix_cache_{n}_total") - metric_value(before, f"mili:prefix_cache_{n}_total")
                     for n in ("queries", "hits"))
    summary["prefix_cache_hit_rate"] = hits / queries if queries else 0.0
    summary["model"] = model
    summary["first_errors"] = [r.error for r in records if r.error][:5]
    summary["per_request"] = request_latencies(records)
    if slo:
        summary["goodput"] = goodput(summary["per_request"], slo, duration)
    return summary


def print_summary(summary: dict, out=sys.stdout) -> None:
    print(f"completed {summary['completed']}, errors {summary['errors']}, {summary['duration_s']:.2f} s, "
          f"{summary['request_throughput']:.2f} req/s, {summary['output_throughput']:.1f} output tok/s, "
          f"{summary['total_token_throughput']:.1f} total tok/s, prefix-cache hit rate "
          f"{summary['prefix_cache_hit_rate']:.1%}", file=out)
    print(f"{'metric':<8} {'mean ms':>10} {'median ms':>10} {'p99 ms':>10}", file=out)
    for name in ("ttft", "tpot", "itl", "e2el"):
        s = summary[f"{name}_ms"]
        print(f"{name:<8} {s['mean']:>10.1f} {s['median']:>10.1f} {s['p99']:>10.1f}", file=out)
    if "goodput" in summary:
        g = summary["goodput"]
        objectives = ", ".join(f"{k[:-3]} <= {v:g} ms" for k, v in g["slo_ms"].items())
        print(f"goodput {g['request_goodput']:.2f} req/s ({g['requests_met']} of {summary['completed']} requests met "
              f"{objectives})", file=out)


def plot_summary(summary: dict, path: Path, title: str) -> None:
    """Median and p99 of TTFT, TPOT, ITL and end-to-end latency as bars (log scale), saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("ttft", "tpot", "itl", "e2el")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, stat in enumerate(("median", "p99")):
        ax.bar([i + 0.4 * k for i in range(len(names))], [summary[f"{n}_ms"][stat] for n in names], 0.4, label=stat)
    ax.set_xticks([i + 0.2 for i in range(len(names))], [n.upper() for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("milliseconds (log scale)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mili bench serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--request-rate", type=float, default=float("inf"), help="requests per second (inf: all at once)")
    p.add_argument("--max-concurrency", type=int, default=32)
    p.add_argument("--dataset", choices=["random", "shared-prefix"], default="random")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--prefix-len", type=int, default=48, help="shared-prefix: tokens every prompt shares")
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=None, help="token ids are drawn below this (default: 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=None)
    p.add_argument("--json", type=Path, default=None, help="write the summary and the set-up to this file")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of the latency percentiles")
    p.add_argument("--goodput", nargs="+", metavar="METRIC:MS", default=None,
                   help="service-level objectives, e.g. --goodput ttft:250 tpot:25: also report the requests per "
                        "second that met all of them")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("num_prompts", "max_concurrency", "input_len", "output_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.request_rate > 0:
        raise ValueError(f"--request-rate must be > 0, got {args.request_rate}")
    slo = parse_goodput(args.goodput)
    prompts = make_prompts(args.dataset, args.num_prompts, args.input_len, args.vocab_size or 1000, args.seed,
                           args.prefix_len)
    try:
        summary = asyncio.run(run_load(args.url.rstrip("/"), prompts, output_len=args.output_len,
                                       request_rate=args.request_rate, max_concurrency=args.max_concurrency,
                                       seed=args.seed, api_key=args.api_key, slo=slo))
    except httpx.HTTPError as err:
        raise RuntimeError(f"cannot reach the server at {args.url}: {type(err).__name__}: {err}") from None
    print_summary(summary)
    if args.json:
        setup = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        # imported here: it imports torch, which a client needs no sooner
        from mili.bench.environment import environment

        run_on = environment(httpx=httpx.__version__, platform=platform.platform())
        args.json.write_text(json.dumps({"setup": setup, "environment": run_on, "summary": summary},
                                        indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_summary(summary, args.plot, f"{summary['model']}: {args.num_prompts} requests, concurrency "
                     f"{args.max_concurrency}, {summary['output_throughput']:.0f} output tok/s")
        print(f"wrote {args.plot}")
    return 0 if summary["errors"] == 0 else 1
