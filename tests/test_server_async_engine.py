"""The async engine in process: a failing request or step ends only what it must, aborts free blocks,
and the gauges hold the pool's size from the start."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from mili import LLM, SamplingParams
from mili.engine.sampling_params import RequestOutputKind
from mili.server.async_engine import AsyncEngine
from mili.server.errors import APIError
from mili.server.metrics import ServerMetrics


@pytest.fixture(scope="module")
def llm(checkpoint_folder):
    return LLM(str(checkpoint_folder), num_kv_blocks=64, max_model_len=256)


async def _run(engine: AsyncEngine, request_id: str, prompt, max_tokens: int = 6):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    try:
        async for output in engine.generate(request_id, prompt, params):
            pass
        return output
    except APIError as err:
        return err


def _in_use(engine: AsyncEngine) -> int:
    return engine.stats["kv_blocks_in_use"]


def test_a_request_the_engine_rejects_fails_alone(llm):
    async def scenario():
        engine = AsyncEngine(llm.engine, ServerMetrics("m"))
        engine.start()
        try:
            too_long = {"prompt_token_ids": [1] * 300}  # beyond max_model_len: add_request raises
            return await asyncio.gather(_run(engine, "good-1", {"prompt_token_ids": [1, 2, 3]}),
                                        _run(engine, "bad", too_long),
                                        _run(engine, "good-2", {"prompt_token_ids": [4, 5]}))
        finally:
            engine.shutdown()

    good1, bad, good2 = asyncio.run(scenario())
    assert isinstance(bad, APIError) and bad.status == 400 and "max_model_len" in bad.message
    for output in (good1, good2):
        assert output.finished and output.outputs[0].finish_reason == "length" and len(output.outputs[0].token_ids) == 6


def test_a_failing_step_ends_its_requests_and_the_engine_keeps_serving(llm, monkeypatch, caplog):
    # the last resort: LLMEngine.step contains request failures itself (tests/test_engine_isolation.py),
    # so this is its recovery failing; the loop ends the requests in flight and goes on
    real_step, calls = llm.engine.step, []

    def flaky_step():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real_step()

    monkeypatch.setattr(llm.engine, "step", flaky_step)

    async def scenario():
        engine = AsyncEngine(llm.engine, ServerMetrics("m"))
        engine.start()
        try:
            failed = await _run(engine, "victim", {"prompt_token_ids": [1, 2, 3]})
            after = await _run(engine, "later", {"prompt_token_ids": [7, 8, 9]})
            await asyncio.sleep(0.1)
            return failed, after, engine.is_alive, _in_use(engine)
        finally:
            engine.shutdown()

    failed, after, alive, in_use = asyncio.run(scenario())
    assert isinstance(failed, APIError) and failed.status == 500
    # the client learns only where to look; the log says what happened
    assert "injected" not in failed.message and "RuntimeError" not in failed.message and "victim" in failed.message
    assert "injected failure" in caplog.text and "victim" in caplog.text
    assert alive and after.finished and len(after.outputs[0].token_ids) == 6
    assert in_use == 0 and not llm.engine.has_unfinished_requests()


def test_leaving_the_stream_early_aborts_and_frees_the_blocks(llm):
    async def scenario():
        engine = AsyncEngine(llm.engine, ServerMetrics("m"))
        engine.start()
        try:
            params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
            stream = engine.generate("leaver", {"prompt_token_ids": list(range(1, 40))}, params)
            async for output in stream:
                if len(output.outputs[0].token_ids) == 3:
                    held = _in_use(engine)
                    break
            await stream.aclose()
            for _ in range(100):
                if _in_use(engine) == 0 and not llm.engine.has_unfinished_requests():
                    break
                await asyncio.sleep(0.01)
            return held, _in_use(engine)
        finally:
            engine.shutdown()

    held, after = asyncio.run(scenario())
    assert held >= 3 and after == 0


def test_the_gauges_are_set_before_the_first_request(llm):
    metrics = ServerMetrics("m")
    AsyncEngine(llm.engine, metrics)
    text = metrics.render().decode()
    assert f'mili:kv_cache_blocks_total{{model_name="m"}} {float(llm.engine.stats()["kv_blocks"])}' in text


def test_each_reader_gets_the_outputs_it_asked_for_and_the_metrics_count_every_token(llm):
    from tests.server_helpers import metric

    metrics = ServerMetrics("m")

    async def collect(engine, kind):
        params = SamplingParams(n=2, temperature=0, max_tokens=7, ignore_eos=True, output_kind=kind)
        return [output async for output in engine.generate(kind.value, {"prompt_token_ids": [3, 4, 5, 6]}, params)]

    async def scenario():
        engine = AsyncEngine(llm.engine, metrics)
        engine.start()
        try:
            return await asyncio.gather(*(collect(engine, kind) for kind in RequestOutputKind))
        finally:
            engine.shutdown()

    by_kind = dict(zip(RequestOutputKind, asyncio.run(scenario())))
    cumulative, delta, final_only = (by_kind[kind] for kind in (
        RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY))
    assert len(final_only) == 1 and final_only[0].outputs == cumulative[-1].outputs
    assert len(delta) == len(cumulative) > 1
    for choice in cumulative[-1].outputs:
        pieces = [c for output in delta for c in output.outputs if c.index == choice.index]
        assert [t for c in pieces for t in c.token_ids] == choice.token_ids and len(choice.token_ids) == 7
        assert "".join(c.text for c in pieces) == choice.text
    assert metric(metrics.render().decode(), "mili:generation_tokens_total") == 3 * 2 * 7
