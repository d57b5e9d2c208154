"""The OpenAI-compatible FastAPI app (chapter 06).

    app = build_app(load_engine, ServerConfig(model_name="mili-tiny-qwen3"))

`load_engine()` returns `(LLMEngine, tokenizer)`; it runs in a worker thread after the server
starts listening, so `/health` answers 503 ("starting") until the model is loaded (and warmed up,
see `mili.server.cli.warm_up`), then 200.
Requests are validated here, tokenized here (the prompt's length is checked against the context
window before anything reaches the engine), then handed to the `AsyncEngine`. The server counts
the requests it has admitted: beyond `max_num_seqs + max_queue` of them a new one gets 429 with
Retry-After, and while draining (SIGTERM) every new one gets 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from mili.server.async_engine import AsyncEngine
from mili.server.errors import APIError, bad_request, from_validation_errors
from mili.server.metrics import ServerMetrics
from mili.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_completion_body,
    completion_body,
    new_id,
    now,
    sse,
)
from mili.server.streaming import chat_completion_stream, completion_stream

log = logging.getLogger("mili.server")


@dataclass
class ServerConfig:
    model_name: str
    model_path: str = ""
    api_key: str | None = None
    max_queue: int = 256  # requests admitted beyond the running batch before 429
    retry_after_s: int = 1


class ServerState:
    """What the endpoints share: the engine once loaded, the tokenizer, admission and draining."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = ServerMetrics(config.model_name)
        self.engine: AsyncEngine | None = None
        self.tokenizer = None
        self.load_error: BaseException | None = None
        self.draining = False
        self.in_flight = 0  # admitted requests whose response has not ended

    @property
    def status(self) -> str:
        if self.load_error is not None or (self.engine is not None and not self.engine.is_alive):
            return "dead"
        if self.engine is None:
            return "starting"
        return "draining" if self.draining else "ok"

    def ready_engine(self) -> AsyncEngine:
        """The engine, or a 503 with Retry-After while starting, draining or dead."""
        status = self.status
        if status != "ok":
            raise APIError(503, f"the server is {status}; retry elsewhere or later", retry_after=self.config.retry_after_s)
        return self.engine

    def admit(self) -> AsyncEngine:
        """Count one more request in flight, or refuse it (503 not ready, 429 at capacity)."""
        self.ready_engine()
        capacity = self.engine.max_num_seqs + self.config.max_queue
        if self.in_flight >= capacity:
            raise APIError(429, f"the server is at capacity ({self.in_flight} requests in flight, queue limit "
                           f"{self.config.max_queue}); retry later", retry_after=self.config.retry_after_s)
        self.in_flight += 1
        return self.engine


def build_app(load_engine: Callable[[], tuple], config: ServerConfig) -> FastAPI:
    state = ServerState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(_load(state, load_engine))
        yield
        loader.cancel()
        if state.engine is not None:
            state.engine.shutdown()

    app = FastAPI(title="mili", lifespan=lifespan)
    app.state.mili = state
    _install_error_handlers(app)

    def check_api_key(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if header != f"Bearer {config.api_key}":
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    def check_model(name: str | None) -> None:
        if name is not None and name != config.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {config.model_name!r}",
                           param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        status = state.status
        return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        check_api_key(request)
        max_len = state.engine.max_model_len if state.engine is not None else None
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": now(),
                                            "owned_by": "mili", "root": config.model_path or config.model_name,
                                            "max_model_len": max_len}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_api_key(request)
        body = _parse(ChatCompletionRequest, await _json(request))
        check_model(body.model)
        engine = state.ready_engine()
        messages = [m.as_template_message() for m in body.messages]
        try:
            text = state.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                       **(body.chat_template_kwargs or {}))
        except Exception as err:  # noqa: BLE001 - a template that rejects the conversation is the client's input
            raise bad_request(f"the chat template rejected the messages: {err}", "messages") from None
        ids = state.tokenizer.encode(text)
        params = body.sampling_params(len(ids), engine.max_model_len, body.requested_max_tokens())
        return await _serve(request, state, {"prompt": text, "prompt_token_ids": ids}, params, body,
                            new_id("chatcmpl"), chat_completion_stream, chat_completion_body)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_api_key(request)
        body = _parse(CompletionRequest, await _json(request))
        check_model(body.model)
        engine = state.ready_engine()
        prompt = body.single_prompt()
        if isinstance(prompt, str):
            text, ids = prompt, state.tokenizer.encode(prompt)
        else:
            vocab = engine.engine.model.config.vocab_size
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise bad_request(f"token ids must be in [0, {vocab}), got {min(prompt)}..{max(prompt)}", "prompt")
            text, ids = None, list(prompt)
        params = body.sampling_params(len(ids), engine.max_model_len, body.max_tokens)
        return await _serve(request, state, {"prompt": text, "prompt_token_ids": ids}, params, body,
                            new_id("cmpl"), completion_stream, completion_body)

    return app


async def _load(state: ServerState, load_engine: Callable[[], tuple]) -> None:
    try:
        engine, tokenizer = await asyncio.to_thread(load_engine)
    except (ValueError, OSError) as err:  # a wrong path or a bad checkpoint: one line is enough
        log.error("loading the model failed: %s", err)
        state.load_error = err
        return
    except Exception as err:
        log.exception("loading the model failed")
        state.load_error = err
        return
    async_engine = AsyncEngine(engine, state.metrics)
    async_engine.start()
    state.tokenizer = tokenizer or engine.tokenizer
    state.engine = async_engine
    log.info("engine ready: max_model_len=%d, %d KV blocks", engine.max_model_len, async_engine.stats["kv_blocks"])


async def _serve(request: Request, state: ServerState, prompt: dict, params, body, request_id: str,
                 stream_events: Callable, response_body: Callable):
    engine = state.admit()
    created, model = now(), state.config.model_name
    outputs = engine.generate(request_id, prompt, params)
    if body.stream:
        events = stream_events(outputs, completion_id=request_id, model=model, created=created,
                               include_usage=body.include_usage())
        return _EventStream(events, engine, request_id, state)
    try:
        final = await _last_unless_disconnected(outputs, request)
    finally:
        state.in_flight -= 1
    if final is None:  # the client left; nobody reads this answer
        return Response(status_code=499)
    return JSONResponse(response_body(final, completion_id=request_id, model=model, created=created))


class _EventStream(StreamingResponse):
    """An SSE response that releases its request however it ends: finished, failed, or the client gone
    (even before the first byte, when the event generator never started)."""

    def __init__(self, events: AsyncIterator[str], engine: AsyncEngine, request_id: str, state: ServerState):
        self.engine, self.request_id, self.state = engine, request_id, state
        self.finished = self.released = False
        super().__init__(self._guarded(events), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()

    async def _guarded(self, events: AsyncIterator[str]):
        """The events; a failure becomes an error event and [DONE]."""
        try:
            async for event in events:
                self.finished = event == "data: [DONE]\n\n"
                yield event
        except APIError as err:
            self.finished = True
            yield sse(err.body())
            yield sse("[DONE]")
        finally:
            self._release()

    def _release(self) -> None:
        if self.released:
            return
        self.released = True
        self.state.in_flight -= 1
        if not self.finished:  # the client disconnected: stop generating for it
            self.engine.abort(self.request_id)


async def _last_unless_disconnected(outputs: AsyncIterator, request: Request):
    async def last():
        final = None
        async for output in outputs:
            final = output
        return final

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    result, watcher = asyncio.create_task(last()), asyncio.create_task(disconnected())
    try:
        await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not result.done():
            result.cancel()  # leaves generate(), which aborts the request in the engine
            with contextlib.suppress(asyncio.CancelledError):
                await result
    return None if result.cancelled() else result.result()


async def _json(request: Request) -> dict:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _parse(model, data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise from_validation_errors(err.errors()) from None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        return from_validation_errors(list(err.errors())).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return APIError(err.status_code, str(err.detail)).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        log.exception("unhandled error")
        return APIError(500, f"internal error: {type(err).__name__}: {err}").response()
