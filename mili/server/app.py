"""The OpenAI-compatible FastAPI app (chapter 06).

    app = build_app(load_engine, ServerConfig(model_name="mili-tiny-qwen3"))

`load_engine()` returns `(LLMEngine, tokenizer)`; it runs in a worker thread after the server
starts listening, so `/health` answers 503 ("starting") until the model is loaded (and warmed up,
see `mili.server.cli.warm_up`), then 200.

A request goes through, in order: the API key; the body, read up to `max_body_bytes` (413
beyond); JSON that holds only valid Unicode; the strict request model; the fields this server
refuses (400, see protocol.py) and the cap on `n`; admission, which counts *sequences* (a request
asks for `n`): beyond `max_num_seqs + max_queue` of them a new request gets 429 with
Retry-After, and while draining (SIGTERM) 503. Only then is the prompt rendered and tokenized,
in a worker thread with the GIL released, so that a huge prompt delays nobody else; a prompt
that cannot fit the context is refused from its length in characters before it is tokenized.

Every response carries `X-Request-Id`; every log line about a request names it; a 500 tells the
client only that id (the details are in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from mili.distributed.failure import TensorParallelFailure
from mili.server.async_engine import AsyncEngine
from mili.server.errors import APIError, bad_request, from_validation_errors, internal_error
from mili.server.logs import REQUEST_ID
from mili.server.metrics import ServerMetrics
from mili.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_completion_body,
    completion_body,
    now,
    sse,
)
from mili.server.streaming import (
    chat_completion_stream,
    completion_stream,
    with_reasoning,
    with_tool_calls,
)

log = logging.getLogger("mili.server")

# NFC normalization composes at most four characters into one (Greek "ᾄ"), so a text needs at
# least len(text) / (4 * longest token) tokens: longer than that times the context, it cannot fit.
_NORMALIZATION_SLACK = 4


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    max_queue: int = 256  # sequences admitted beyond the running batch before 429
    max_n: int = 8  # the most completions one request may ask for
    max_body_bytes: int = 4 * 2**20
    retry_after_s: int = 1
    reasoning_parser: str | None = None  # "qwen3": a chat answer's <think> block becomes reasoning_content


class ServerState:
    """What the endpoints share: the engine once loaded, the tokenizer, admission and draining."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = ServerMetrics(config.model_name)
        self.engine: AsyncEngine | None = None
        self.tokenizer = None
        self.max_prompt_chars: int | None = None
        self.load_error: BaseException | None = None
        self.draining = False
        self.in_flight = 0  # admitted sequences (n per request) whose response has not ended

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

    def admit(self, n: int) -> AsyncEngine:
        """Count n more sequences in flight, or refuse (503 not ready, 429 at capacity, 400 never fits)."""
        engine = self.ready_engine()
        capacity = engine.max_num_seqs + self.config.max_queue
        if n > capacity:
            raise bad_request(f"n={n} completions exceed what this server holds at once ({capacity} sequences)", "n")
        if self.in_flight + n > capacity:
            raise APIError(429, f"the server is at capacity ({self.in_flight} sequences in flight, capacity "
                           f"{capacity}); retry later", retry_after=self.config.retry_after_s)
        self.in_flight += n
        return engine

    def release(self, n: int) -> None:
        self.in_flight -= n


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorBody(BaseModel):
    error: ErrorDetail


def _errors(*statuses: int) -> dict:
    return {status: {"model": ErrorBody, "description": description} for status, description in (
        (400, "invalid request"), (401, "missing or wrong API key"), (404, "no such model"),
        (413, "body too large"), (429, "at capacity: retry after Retry-After seconds"),
        (500, "internal error (the log has the details under the request id)"),
        (503, "starting, draining or dead: retry after Retry-After seconds")) if status in statuses}


def _json_body(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


_COMPLETION_RESPONSES = {200: {"description": "the completion (JSON), or Server-Sent Events when stream is true",
                               "content": {"application/json": {"schema": {"type": "object"}},
                                           "text/event-stream": {"schema": {"type": "string"}}}},
                         **_errors(400, 401, 404, 413, 429, 500, 503)}


def build_app(load_engine: Callable[[], tuple], config: ServerConfig) -> FastAPI:
    state = ServerState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(_load(state, load_engine))
        yield
        loader.cancel()
        if state.engine is not None:
            state.engine.shutdown()

    # no /docs or /redoc: their pages load scripts from a CDN; /openapi.json describes the API
    app = FastAPI(title="mili", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.mili = state
    app.add_middleware(_RequestIds)
    _install_error_handlers(app)
    _install_openapi(app, (ChatCompletionRequest, CompletionRequest))

    def check_api_key(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def check_model(name: str | None) -> None:
        if name is not None and name != config.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {config.model_name!r}",
                           param="model", code="model_not_found")

    async def parse(request: Request, model: type[BaseModel]):
        check_api_key(request)
        body = _parse(model, await _json(request, config.max_body_bytes))
        check_model(body.model)
        body.refuse_unsupported()
        if body.n > config.max_n:
            raise bad_request(f"n must be at most {config.max_n} on this server, got {body.n}", "n")
        return body

    def model_card() -> dict:
        max_len = state.engine.max_model_len if state.engine is not None else None
        return {"id": config.model_name, "object": "model", "created": now(), "owned_by": "mili",
                "root": config.model_name, "max_model_len": max_len}

    @app.get("/health", responses={200: {"description": "serving"}, 503: {"description": "starting, draining or dead"}})
    async def health():
        status = state.status
        return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses=_errors(401))
    async def models(request: Request):
        check_api_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", responses=_errors(401, 404))
    async def model(model_id: str, request: Request):
        check_api_key(request)
        check_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions", openapi_extra=_json_body(ChatCompletionRequest), responses=_COMPLETION_RESPONSES)
    async def chat_completions(request: Request):
        body = await parse(request, ChatCompletionRequest)
        engine = state.admit(body.n)
        try:
            prompt = await asyncio.to_thread(_chat_prompt, state, body)
            params = body.sampling_params(len(prompt["prompt_token_ids"]), engine.max_model_len,
                                          body.requested_max_tokens())
        except BaseException:
            state.release(body.n)
            raise
        parsing = {"tool_calls": body.calls_tools(),
                   "reasoning": state.config.reasoning_parser is not None and body.leaves_room_to_think()}
        return await _serve(request, state, engine, prompt, params, body, "chatcmpl",
                            functools.partial(_chat_stream, **parsing),
                            functools.partial(chat_completion_body, **parsing))

    @app.post("/v1/completions", openapi_extra=_json_body(CompletionRequest), responses=_COMPLETION_RESPONSES)
    async def completions(request: Request):
        body = await parse(request, CompletionRequest)
        single = body.single_prompt()
        engine = state.admit(body.n)
        try:
            prompt = await asyncio.to_thread(_completion_prompt, state, engine, single)
            params = body.sampling_params(len(prompt["prompt_token_ids"]), engine.max_model_len, body.max_tokens)
        except BaseException:
            state.release(body.n)
            raise
        return await _serve(request, state, engine, prompt, params, body, "cmpl", completion_stream, completion_body)

    return app


async def _load(state: ServerState, load_engine: Callable[[], tuple]) -> None:
    try:
        engine, tokenizer = await asyncio.to_thread(load_engine)
    except (ValueError, OSError) as err:  # a wrong path or a bad checkpoint: one line is enough
        log.error("loading the model failed: %s", err)
        state.load_error = err
        return
    except (Exception, TensorParallelFailure) as err:
        log.exception("loading the model failed")
        state.load_error = err
        return
    async_engine = AsyncEngine(engine, state.metrics)
    async_engine.start()
    state.tokenizer = tokenizer or engine.tokenizer
    state.max_prompt_chars = _NORMALIZATION_SLACK * engine.max_model_len * state.tokenizer.longest_token_chars
    state.engine = async_engine
    log.info("engine ready: max_model_len=%d, %d KV blocks", engine.max_model_len, async_engine.stats["kv_blocks"])


# ---------------------------------------------------------------- prompts (run in a worker thread)

def _check_length(state: ServerState, chars: int, param: str) -> None:
    if chars > state.max_prompt_chars:
        raise bad_request(f"the prompt has {chars} characters, more than can fit in this model's maximum "
                          f"context length of {state.engine.max_model_len} tokens", param)


def _tokenize(state: ServerState, text: str, param: str) -> list[int]:
    _check_length(state, len(text), param)
    return state.tokenizer.encode_releasing_gil(text)


def _chat_prompt(state: ServerState, body: ChatCompletionRequest) -> dict:
    messages = [m.as_template_message() for m in body.messages]
    _check_length(state, sum(len(m["content"]) for m in messages), "messages")
    try:
        text = state.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                   tools=body.template_tools(), **(body.chat_template_kwargs or {}))
    except Exception as err:  # noqa: BLE001 - a template that rejects the conversation is the client's input
        raise bad_request(f"the chat template rejected the messages: {err}", "messages") from None
    return {"prompt": text, "prompt_token_ids": _tokenize(state, text, "messages")}


def _completion_prompt(state: ServerState, engine: AsyncEngine, prompt: str | list[int]) -> dict:
    if isinstance(prompt, str):
        return {"prompt": prompt, "prompt_token_ids": _tokenize(state, prompt, "prompt")}
    vocab = engine.engine.model.config.vocab_size
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise bad_request(f"token ids must be in [0, {vocab}), got {min(prompt)}..{max(prompt)}", "prompt")
    return {"prompt": None, "prompt_token_ids": list(prompt)}


# ---------------------------------------------------------------- serving one request

def _chat_stream(outputs: AsyncIterator, *, tool_calls: bool = False, reasoning: bool = False,
                 **options) -> AsyncIterator[str]:
    """The chat chunks, with the reasoning taken out first: tool calls are looked for in the answer only."""
    events = chat_completion_stream(outputs, **options)
    if reasoning:
        events = with_reasoning(events)
    return with_tool_calls(events) if tool_calls else events


async def _serve(request: Request, state: ServerState, engine: AsyncEngine, prompt: dict, params, body, prefix: str,
                 stream_events: Callable, response_body: Callable):
    """Run an admitted request (its n sequences are counted in `state.in_flight`) and answer it."""
    request_id = f"{prefix}-{REQUEST_ID.get()}"
    created, model = now(), state.config.model_name
    outputs = engine.generate(request_id, prompt, params)
    if body.stream:
        events = stream_events(outputs, completion_id=request_id, model=model, created=created,
                               include_usage=body.include_usage())
        return _EventStream(events, engine, request_id, state, body.n)
    try:
        final = await _last_unless_disconnected(outputs, request)
    finally:
        state.release(body.n)
    if final is None:  # the client left; nobody reads this answer
        return Response(status_code=499)
    return JSONResponse(response_body(final, completion_id=request_id, model=model, created=created))


class _EventStream(StreamingResponse):
    """An SSE response that releases its request however it ends: finished, failed, or the client gone
    (even before the first byte, when the event generator never started)."""

    def __init__(self, events: AsyncIterator[str], engine: AsyncEngine, request_id: str, state: ServerState, n: int):
        self.engine, self.request_id, self.state, self.n = engine, request_id, state, n
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
        self.state.release(self.n)
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


# ---------------------------------------------------------------- reading the body

async def _json(request: Request, limit: int) -> dict:
    """The body as a JSON object: at most `limit` bytes (413), standard JSON (no NaN), valid Unicode."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the body has {int(declared)} bytes; this server accepts at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the body is larger than {limit} bytes, the most this server accepts")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks), parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, an int of 5,000 digits
        raise bad_request(f"the body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__}")
    _check_unicode(data)
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _check_unicode(data) -> None:
    """A 400 naming the field of the first string that is not valid Unicode (a lone surrogate "\\ud800")."""
    pending = [((), data)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, dict):
            pending.extend(((*path, key), item) for key, item in value.items())
            pending.extend(((*path, key), key) for key in value)
        elif isinstance(value, list):
            pending.extend(((*path, index), item) for index, item in enumerate(value))
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                param = ".".join(str(p) for p in path) or None
                raise bad_request(f"{param}: not valid Unicode (a lone surrogate at character {err.start})",
                                  param) from None


def _parse(model, data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise from_validation_errors(err.errors()) from None


# ---------------------------------------------------------------- request ids, errors, the spec

class _RequestIds:
    """ASGI middleware: a request id for each HTTP request (the `X-Request-Id` header, the logs'
    `request_id`), and an exception nothing else caught becomes a 500 naming only that id."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await internal_error(request_id).response()(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # only a server that stops cancels a request's task: end the answer cleanly and quietly
            # (uvicorn would log a traceback and send a text/plain 500)
            log.info("%s %s cancelled: the server is stopping", scope.get("method"), scope.get("path"))
            with contextlib.suppress(Exception):
                if not started:
                    await APIError(503, "the server is shutting down; retry elsewhere",
                                   retry_after=1).response()(scope, receive, send_with_id)
                else:
                    await send_with_id({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            REQUEST_ID.reset(token)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        return from_validation_errors(list(err.errors())).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):  # 404, and 405 with its Allow header
        return APIError(err.status_code, str(err.detail), headers=err.headers).response()


def _install_openapi(app: FastAPI, request_models: tuple[type[BaseModel], ...]) -> None:
    """The endpoints read their bodies themselves (for the size limit and the error shape), so the
    spec gets their request models here, under components/schemas."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in request_models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
