"""The async engine (chapter 06): one background thread steps the engine; each request gets a stream.

The engine core is not thread-safe, so exactly one thread touches it: the engine thread. The
event loop talks to it through a command queue (add, abort, abort all), applied between
steps, and gets results back through one `asyncio.Queue` per request, fed with
`loop.call_soon_threadsafe`. An abort therefore takes effect before the next step, and the
engine frees the request's KV blocks at once.

    engine = AsyncEngine(llm_engine, metrics)
    engine.start()                                    # inside the running event loop
    async for output in engine.generate(request_id, {"prompt_token_ids": ids}, params):
        ...                                           # shaped by params.output_kind; the last one finished

The engine thread always asks the engine for DELTA outputs (each step costs the same however
long the text already is) and records every token's arrival time from them for the latency
metrics; a reader that asked for CUMULATIVE or FINAL_ONLY outputs gets the deltas joined.

Leaving the `async for` early (a client that disconnects) aborts the request. A request the
engine fails on (`finish_reason` "error": the engine isolates the failure to it, see
`mili/engine/recovery.py`) ends its stream with an `APIError` 500 that names only the request id;
the error itself goes to the log under that id. The others go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mili.engine.engine import LLMEngine
from mili.engine.sampling_params import RequestOutputKind, SamplingParams
from mili.engine.sequence import CompletionOutput, RequestOutput
from mili.server.errors import APIError, internal_error
from mili.server.metrics import ServerMetrics, observe_request

log = logging.getLogger("mili.server")

_IDLE_WAIT_S = 0.05  # how long the idle engine thread waits for a command before looking again


@dataclass
class _Tracked:
    """What the engine thread knows about one request it serves (owned by the engine thread)."""

    stream: asyncio.Queue
    arrival: float
    kind: RequestOutputKind  # what the reader asked for; the engine makes DELTA outputs
    num_prompt_tokens: int = 0
    token_times: list[float] = field(default_factory=list)  # one per output token of choice 0
    texts: dict[int, list[str]] = field(default_factory=dict)  # per choice, its text pieces (not for DELTA)
    token_ids: dict[int, list[int]] = field(default_factory=dict)  # per choice, its tokens (not for DELTA)

    def shaped(self, delta: RequestOutput) -> RequestOutput | None:
        """The engine's DELTA output as the reader asked for it; None while FINAL_ONLY has nothing to send."""
        if self.kind is RequestOutputKind.DELTA:
            return delta
        for choice in delta.outputs:
            self.texts.setdefault(choice.index, []).append(choice.text)
            self.token_ids.setdefault(choice.index, []).extend(choice.token_ids)
        if self.kind is RequestOutputKind.FINAL_ONLY and not delta.finished:
            return None
        whole = [CompletionOutput(c.index, "".join(self.texts[c.index]), list(self.token_ids[c.index]), c.finish_reason,
                                  c.stop_reason) for c in delta.outputs]
        return dataclasses.replace(delta, outputs=whole)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, metrics: ServerMetrics | None = None):
        self.engine = engine
        self.metrics = metrics
        self.max_model_len = engine.max_model_len
        self.max_num_seqs = engine.scheduler.max_num_seqs
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._tracked: dict[str, _Tracked] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._metrics_failed = False
        self.error: BaseException | None = None  # set when the engine thread died
        self._publish_stats()  # the gauges (KV blocks in the pool, ...) hold from the start

    # ------------------------------------------------------------------ the event loop side

    def start(self) -> None:
        """Start the engine thread; call from inside the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="mili-engine", daemon=True)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    async def generate(self, request_id: str, prompt: dict, params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Queue a request and yield its outputs as the engine makes them (an APIError if it fails)."""
        if not self.is_alive:
            raise APIError(503, "the engine is not running", retry_after=5)
        stream: asyncio.Queue = asyncio.Queue()
        self._commands.put(("add", request_id, prompt, params, stream, time.monotonic()))
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request before the next step (its stream gets a last output, finish_reason 'abort')."""
        self._commands.put(("abort", request_id))

    def abort_all(self) -> None:
        self._commands.put(("abort_all",))

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._apply_commands(wait=not self.engine.has_unfinished_requests())
                if not self.engine.has_unfinished_requests():
                    continue
                try:
                    outputs = self.engine.step()
                except Exception:  # the engine contains request failures; this is its recovery failing
                    log.exception("engine step failed outside its failure isolation; ending every request (%s)",
                                  ", ".join(self._tracked))
                    self._fail_all(None)
                    continue
                now = time.monotonic()
                for output in outputs:
                    self._deliver(output, now)
                self._publish_stats()
        except BaseException as err:
            log.exception("the engine thread died")
            self.error = err
            self._fail_all(APIError(503, "the engine stopped", retry_after=5), abort=False)

    def _apply_commands(self, wait: bool) -> None:
        try:
            command = self._commands.get(timeout=_IDLE_WAIT_S) if wait else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
        self._publish_stats()

    def _apply(self, command: tuple) -> None:
        kind = command[0]
        if kind == "add":
            _, request_id, prompt, params, stream, arrival = command
            tracked = _Tracked(stream, arrival, params.output_kind)
            try:
                self.engine.add_request(request_id, prompt,
                                        dataclasses.replace(params, output_kind=RequestOutputKind.DELTA))
            except (ValueError, TypeError) as err:
                self._send(tracked, APIError(400, str(err), param="prompt"))
                return
            self._tracked[request_id] = tracked
            tracked.num_prompt_tokens = len(self.engine.requests[request_id].prompt_token_ids)
            if self.metrics is not None:
                self.metrics.prompt_tokens.inc(tracked.num_prompt_tokens)
        elif kind == "abort":
            output = self.engine.abort(command[1])
            if output is not None:
                self._deliver(output, time.monotonic())
        elif kind == "abort_all":
            for request_id in list(self.engine.requests):
                output = self.engine.abort(request_id)
                if output is not None:
                    self._deliver(output, time.monotonic())

    def _deliver(self, output: RequestOutput, now: float) -> None:
        tracked = self._tracked.get(output.request_id)
        if tracked is None:
            return
        tracked.token_times.extend([now] * len(output.outputs[0].token_ids))
        new_tokens = sum(len(c.token_ids) for c in output.outputs)
        if self.metrics is not None and new_tokens:
            self.metrics.generation_tokens.inc(new_tokens)
        if output.finished:
            del self._tracked[output.request_id]
            self._record_finished(tracked, output, now)
        if output.error is not None:
            log.error("the engine failed on this request: %s", output.error, extra={"request_id": output.request_id})
            self._send(tracked, internal_error(output.request_id))
        else:
            shaped = tracked.shaped(output)
            if shaped is not None:
                self._send(tracked, shaped)

    def _record_finished(self, tracked: _Tracked, output: RequestOutput, now: float) -> None:
        if self.metrics is None:
            return
        self.metrics.request_finished(output.outputs[0].finish_reason)
        try:
            observe_request(self.metrics, tracked.arrival, tracked.token_times, now)
        except Exception as err:  # noqa: BLE001 - an unfinished exercise 6.2 must not stop serving
            if not self._metrics_failed:
                log.warning("observe_request failed (%s: %s); latency histograms stay empty",
                            type(err).__name__, err)
                self._metrics_failed = True

    def _fail_all(self, error: APIError | None, abort: bool = True) -> None:
        """End every tracked request with `error` (None: each its own internal error)."""
        for request_id, tracked in list(self._tracked.items()):
            if abort:
                try:
                    self.engine.abort(request_id)
                except Exception:
                    log.exception("abort of %s failed", request_id)
            self._send(tracked, error or internal_error(request_id))
        self._tracked.clear()
        self._publish_stats()

    def _send(self, tracked: _Tracked, item) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(tracked.stream.put_nowait, item)

    def _snapshot(self) -> dict:
        stats = self.engine.stats()
        cache = self.engine.block_manager.stats
        stats["kv_blocks_in_use"] = cache.used_blocks - cache.evictable_blocks
        return stats

    def _publish_stats(self) -> None:
        self.stats = self._snapshot()  # one reference swap: readers on the event loop see a whole dict
        if self.metrics is not None:
            self.metrics.update_engine_stats(self.stats)
