"""`mili serve`: the OpenAI-compatible server under uvicorn, with a graceful drain on SIGTERM.

    mili serve --model data/mili-tiny-qwen3 [--host 127.0.0.1] [--port 8000] [--api-key KEY]
               [--max-queue N] [--served-model-name NAME] [--shutdown-timeout S]

The socket opens at once and `/health` says 503 until the model is loaded and warmed up (one short
request compiles the kernels). On SIGTERM (or Ctrl+C) the server drains: new requests get 503,
`/health` 503 (a load balancer stops sending),
requests in flight may finish for up to --shutdown-timeout seconds, then the rest are aborted
(their streams end with finish_reason "abort") and the process exits with status 0. A second
signal stops at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import uvicorn

from mili.argtypes import non_negative_int, positive_int
from mili.exercise import repo_root
from mili.server.app import ServerConfig, ServerState, build_app

DEFAULT_MODEL = repo_root() / "data" / "mili-tiny-qwen3"
_ABORT_GRACE_S = 5.0  # after aborting, how long aborted streams get to send their last chunk


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains the engine before the server stops."""

    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_timeout: float):
        super().__init__(config)
        self.state, self.shutdown_timeout = state, shutdown_timeout
        self.drain_deadline: float | None = None
        self.aborted_at: float | None = None

    def handle_exit(self, sig, frame) -> None:
        # unlike uvicorn's, this does not re-raise the signal after shutdown: a drained server exits 0
        if self.drain_deadline is not None or self.state.engine is None:
            self.should_exit = True
            return
        logging.getLogger("mili.server").info("draining: %d requests in flight, up to %.1f s",
                                              self.state.in_flight, self.shutdown_timeout)
        self.state.draining = True
        self.drain_deadline = time.monotonic() + self.shutdown_timeout

    async def on_tick(self, counter: int) -> bool:
        if self.state.load_error is not None:
            self.should_exit = True
        if self.drain_deadline is not None and not self.should_exit:
            clock = time.monotonic()
            if self.state.in_flight == 0:
                self.should_exit = True
            elif self.aborted_at is None and clock >= self.drain_deadline:
                self.state.engine.abort_all()
                self.aborted_at = clock
            elif self.aborted_at is not None and clock - self.aborted_at > _ABORT_GRACE_S:
                self.should_exit = True
        return await super().on_tick(counter)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mili serve", description="Serve a model behind an OpenAI-compatible API.")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder or preset (default: the tiny model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--served-model-name", default=None, help="the model id clients use (default: folder name)")
    p.add_argument("--max-queue", type=non_negative_int, default=256,
                   help="requests admitted beyond the running batch before new ones get 429")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may take to finish after SIGTERM")
    p.add_argument("--max-num-seqs", type=positive_int, default=256)
    p.add_argument("--max-model-len", type=positive_int, default=None)
    p.add_argument("--num-kv-blocks", type=positive_int, default=None)
    p.add_argument("--block-size", type=positive_int, default=16)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--enforce-eager", action="store_true",
                   help="CUDA: launch every kernel of a decode step instead of replaying a CUDA graph")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--seed", type=int, default=0, help="weights seed for a preset")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def engine_loader(args):
    """A function that builds (LLMEngine, tokenizer) from the parsed arguments (run off the event loop)."""

    def load():
        from mili.engine.llm import LLM

        tokenizer = None
        if not (Path(args.model) / "tokenizer.json").exists():
            from mili.qwen3_tokenizer import (
                qwen3_tokenizer,  # presets use the real Qwen3 vocabulary
            )

            tokenizer = qwen3_tokenizer()
        llm = LLM(args.model, tokenizer=tokenizer, dtype=args.dtype, device=args.device, backend=args.backend,
                  seed=args.seed, block_size=args.block_size, num_kv_blocks=args.num_kv_blocks,
                  max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                  enable_prefix_caching=not args.no_prefix_caching, enforce_eager=args.enforce_eager)
        warm_up(llm)
        return llm.engine, llm.tokenizer

    return load


def warm_up(llm) -> None:
    """One short request before /health says ready (a Kubernetes readiness probe waits for it): the
    first prefill and decode compile their kernels, seconds on a GPU that would fall on the first
    users. Prompt and output fill no whole KV block, so nothing of them stays in the prefix cache."""
    from mili.engine.sampling_params import SamplingParams

    new_tokens = 2
    prompt = {"prompt_token_ids": [0] * max(1, llm.engine.config.block_size - new_tokens - 1)}
    llm.generate([prompt], SamplingParams(max_tokens=new_tokens, ignore_eos=True), use_tqdm=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = args.served_model_name or Path(args.model).name
    config = ServerConfig(model_name=name, model_path=str(args.model), api_key=args.api_key, max_queue=args.max_queue)
    app = build_app(engine_loader(args), config)
    uv_config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                               timeout_graceful_shutdown=int(_ABORT_GRACE_S), access_log=args.log_level == "debug")
    server = DrainingServer(uv_config, app.state.mili, args.shutdown_timeout)
    server.run()
    if app.state.mili.load_error is not None:
        print(f"mili serve: error: {app.state.mili.load_error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
