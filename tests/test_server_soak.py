"""A bounded soak of a live `mili serve`: 1,000 requests of random sizes, 32 at a time, a fifth of the
streams dropped by their client after the first chunk, a few hostile requests mixed in. Every good
reply must equal the offline engine's; every hostile one must be a 4xx; afterwards nothing runs, no
KV block is held, and the server's memory is back near where it started."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")

from mili import LLM, SamplingParams
from mili.server.launch import launch_server
from tests.server_helpers import metric

REQUESTS = 1000
CONCURRENCY = 32
DISCONNECT_SHARE = 0.2
PROMPTS = [[(31 * i + 7 * k) % 1200 + 3 for k in range(3 + 2 * i)] for i in range(12)]
LENGTHS = (2, 6)
MAX_RSS_GROWTH_MB = 150
HOSTILE = [  # (body, expected status)
    ('{"prompt": "a\\ud800b", "max_tokens": 2}', 400),
    ('{"prompt": [1, 2], "seed": 18446744073709551616}', 400),
    ('{"prompt": [1, 2], "n": 9}', 400),
    ('{"prompt": [1, 2], "temperature": Infinity}', 400),
    ('{"prompt": ' + json.dumps("x" * 70_000) + "}", 413),
    ("{not json", 400),
]


@pytest.fixture(scope="module")
def server(checkpoint_folder):
    args = ["--max-model-len", "128", "--num-kv-blocks", "256", "--max-num-seqs", "32", "--max-body-bytes", "65536"]
    with launch_server(checkpoint_folder, args=args) as running:
        yield running


@pytest.fixture(scope="module")
def expected(checkpoint_folder) -> dict:
    """(prompt index, max_tokens) -> the offline engine's greedy text."""
    llm = LLM(str(checkpoint_folder), num_kv_blocks=128, max_model_len=128)
    keys = [(i, n) for i in range(len(PROMPTS)) for n in LENGTHS]
    outputs = llm.generate([{"prompt_token_ids": PROMPTS[i]} for i, _ in keys],
                           [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for _, n in keys],
                           use_tqdm=False)
    return {key: out.outputs[0].text for key, out in zip(keys, outputs)}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _good(client, rng, i, expected, disconnect: bool):
    key = (rng.randrange(len(PROMPTS)), rng.choice(LENGTHS))
    body = {"prompt": PROMPTS[key[0]], "max_tokens": key[1], "temperature": 0, "ignore_eos": True,
            "stream": disconnect or rng.random() < 0.5}
    if not body["stream"]:
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 200, (i, response.text)
        assert response.json()["choices"][0]["text"] == expected[key], (i, key)
        return
    text = ""
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200, i
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text += json.loads(line[6:])["choices"][0]["text"]
            if disconnect:
                return  # leaving the block closes the connection mid-stream
    assert text == expected[key], (i, key)


async def _hostile(client, i):
    body, status = HOSTILE[i % len(HOSTILE)]
    response = await client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, (body[:80], response.text[:200])


def _warm_up_and_measure(server) -> float:
    """RSS after the allocations every server makes once (the first batches, the thread pool)."""
    async def burst(n: int):
        bodies = [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 6, "ignore_eos": True} for i in range(n)]
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))

    for n in (1, 8, 32):
        asyncio.run(burst(n))
    return _rss_mb(server.process.pid)


def test_soak_1000_requests_with_disconnects_and_hostile_ones(server, expected):
    rss_start = _warm_up_and_measure(server)
    before = httpx.get(server.url + "/metrics").text
    rng = random.Random(13)
    kinds = ["hostile" if i % 97 == 0 else "drop" if rng.random() < DISCONNECT_SHARE else "good"
             for i in range(REQUESTS)]

    async def run_all():
        gate = asyncio.Semaphore(CONCURRENCY)
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            async def one(i, kind):
                async with gate:
                    if kind == "hostile":
                        await _hostile(client, i)
                    else:
                        await _good(client, random.Random(i), i, expected, disconnect=kind == "drop")

            await asyncio.gather(*(one(i, kind) for i, kind in enumerate(kinds)))

    asyncio.run(run_all())
    assert asyncio.run(_wait_idle(server)), "the server did not go idle"
    after = httpx.get(server.url + "/metrics").text
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_blocks_in_use"):
        assert metric(after, f"mili:{name}") == 0, f"{name} is {metric(after, f'mili:{name}')} after the soak"
    assert metric(after, "mili:request_failure_total") == metric(before, "mili:request_failure_total") == 0
    finished = sum(metric(after, "mili:request_success_total", finished_reason=r) -
                   metric(before, "mili:request_success_total", finished_reason=r) for r in ("length", "abort"))
    assert finished == kinds.count("good") + kinds.count("drop")
    growth = _rss_mb(server.process.pid) - rss_start
    assert growth < MAX_RSS_GROWTH_MB, f"the server's RSS grew by {growth:.0f} MB over the soak"
    assert "Traceback" not in server.log()


async def _wait_idle(server, timeout: float = 30.0) -> bool:
    async with httpx.AsyncClient(base_url=server.url) as client:
        for _ in range(int(timeout / 0.1)):
            text = (await client.get("/metrics")).text
            if all(metric(text, f"mili:{n}") == 0 for n in ("num_requests_running", "num_requests_waiting",
                                                             "kv_cache_blocks_in_use")):
                return True
            await asyncio.sleep(0.1)
    return False
