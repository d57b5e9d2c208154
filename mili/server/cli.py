"""`mili serve`: the OpenAI-compatible server under uvicorn, with a graceful drain on SIGTERM.

    mili serve --model data/mili-tiny-qwen3 [--host 127.0.0.1] [--port 8000] [--config server_config.yaml]
               [--api-key-file FILE] [--max-queue N] [--max-n N] [--max-body-bytes B] [--log-format json]
               [--reasoning-parser qwen3] ...

Every flag can also be a key of the YAML file given to --config (`max-queue: 64`); flags on the
command line override the file. The API key comes from --api-key-file, $MILI_API_KEY or
--api-key (visible to every user of the machine in `ps`: the others are better). Binding an
address other than loopback without a key logs a warning; --require-api-key (set in the
manifests of deployment/) refuses to start without one.

The socket opens at once and `/health` says 503 until the model is loaded and warmed up (one short
request compiles the kernels). With --tensor-parallel-size N the model is split over N processes
(GPUs device .. device+N-1, or CPU ranks): this process runs the server and the engine (rank 0),
the others only their part of the model; they stop when the server stops, and a failed rank
ends the server with status 1 (nothing can be served without it). On SIGTERM (or Ctrl+C) the server drains: new requests get 503,
`/health` 503 (a load balancer stops sending),
requests in flight may finish for up to --shutdown-timeout seconds, then the rest are aborted
(their streams end with finish_reason "abort") and the process exits with status 0. A second
signal aborts every request at once and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
import time
from pathlib import Path

import uvicorn

from mili.argtypes import device, non_negative_int, port, positive_int, seed, triton_problem
from mili.distributed.failure import TensorParallelFailure
from mili.exercise import repo_root
from mili.server.app import ServerConfig, ServerState, build_app
from mili.server.logs import LOG_FORMATS, configure_logging

DEFAULT_MODEL = repo_root() / "data" / "mili-tiny-qwen3"
API_KEY_ENV = "MILI_API_KEY"
_ABORT_GRACE_S = 5.0  # after aborting, how long aborted streams get to send their last chunk
_FORCED_EXIT_GRACE_S = 1.0  # after a second signal, how long aborted requests get to answer
log = logging.getLogger("mili.server")


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains the engine before the server stops."""

    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_timeout: float):
        super().__init__(config)
        self.state, self.shutdown_timeout = state, shutdown_timeout
        self.drain_deadline: float | None = None
        self.aborted_at: float | None = None

    def handle_exit(self, sig, frame) -> None:
        # unlike uvicorn's, this does not re-raise the signal after shutdown: a drained server exits 0
        if self.state.engine is None:
            self.should_exit = True
            return
        if self.drain_deadline is not None:
            log.warning("second signal: aborting %d sequences in flight and exiting now", self.state.in_flight)
            self.state.engine.abort_all()
            self.should_exit = self.force_exit = True
            return
        log.info("draining: %d sequences in flight, up to %.1f s", self.state.in_flight, self.shutdown_timeout)
        self.state.draining = True
        self.drain_deadline = time.monotonic() + self.shutdown_timeout

    async def shutdown(self, sockets=None) -> None:
        if self.force_exit:  # the requests were just aborted: let them send their last chunk or JSON
            deadline = time.monotonic() + _FORCED_EXIT_GRACE_S
            while self.state.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        await super().shutdown(sockets)
        if self.force_exit:  # uvicorn skips the app's shutdown then; it stops the engine thread
            await self.lifespan.shutdown()

    @property
    def group_failure(self) -> TensorParallelFailure | None:
        """Why the tensor-parallel group failed, if it did (the engine thread died of it)."""
        error = self.state.engine.error if self.state.engine is not None else None
        return error if isinstance(error, TensorParallelFailure) else None

    async def on_tick(self, counter: int) -> bool:
        if self.state.load_error is not None or self.group_failure is not None:
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
    p.add_argument("--config", type=Path, default=None,
                   help="a YAML file whose keys are these flags (max-queue: 64); flags given here override it")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder or preset (default: the tiny model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key-file", type=Path, default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1/*, KEY read from this file (or set ${API_KEY_ENV})")
    p.add_argument("--api-key", default=None, help=f"the key itself (visible in `ps`: prefer --api-key-file or "
                   f"${API_KEY_ENV})")
    p.add_argument("--require-api-key", action="store_true",
                   help="refuse to start without a key (the container images and manifests set this)")
    p.add_argument("--served-model-name", default=None, help="the model id clients use (default: folder name)")
    p.add_argument("--reasoning-parser", default=None, choices=["qwen3"],
                   help="split what the model thinks (<think> ... </think>) from its chat answer into "
                        "reasoning_content (default: off, the answer is the whole text)")
    p.add_argument("--max-queue", type=non_negative_int, default=256,
                   help="sequences admitted beyond the running batch before new requests get 429 (default 256)")
    p.add_argument("--max-n", type=positive_int, default=8, help="the most completions (n) one request may ask "
                   "for (default 8)")
    p.add_argument("--max-body-bytes", type=positive_int, default=4 * 2**20,
                   help="larger request bodies get 413 (default 4 MiB)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may take to finish after SIGTERM (default 30)")
    p.add_argument("--max-num-seqs", type=positive_int, default=256, help="sequences in the running batch "
                   "(default 256)")
    p.add_argument("--max-model-len", type=positive_int, default=None,
                   help="context length in tokens (default: the model's)")
    p.add_argument("--num-kv-blocks", type=positive_int, default=None,
                   help="KV-cache blocks (default: as many as fit in memory)")
    p.add_argument("--block-size", type=positive_int, default=16, help="tokens per KV-cache block (default 16)")
    p.add_argument("--no-prefix-caching", action="store_true", help="do not reuse the KV blocks of shared prefixes")
    p.add_argument("--enforce-eager", action="store_true",
                   help="CUDA: launch every kernel of a decode step instead of replaying a CUDA graph")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights and activations (default: bfloat16 on CUDA, float32 on a CPU)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"],
                   help="the ops: plain PyTorch or Triton kernels (default: triton on CUDA, torch on a CPU)")
    p.add_argument("--seed", type=seed, default=0, help="weights seed for a preset (default 0)")
    p.add_argument("--tensor-parallel-size", type=positive_int, default=1, metavar="N",
                   help="split the model over N processes: GPUs device, device+1, ... (NCCL) or CPU ranks (gloo)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="default info; debug also logs every HTTP request")
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text lines, or one JSON object per line for log shippers (default text)")
    return p


def config_file_argv(parser: argparse.ArgumentParser, path: Path) -> list[str]:
    """The flags that a --config YAML file stands for, validated by the parser like typed flags."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        parser.error(f"--config {path}: {err}")
    if data is None:
        return []
    if not isinstance(data, dict):
        parser.error(f"--config {path}: the file must be a mapping of flag names to values")
    flags = {action.option_strings[-1][2:]: action for action in parser._actions if action.option_strings}
    argv = []
    for key, value in data.items():
        name = str(key).replace("_", "-")
        action = flags.get(name)
        if action is None or name in ("config", "help"):
            parser.error(f"--config {path}: unknown key {key!r}; the keys are the flags of mili serve --help")
        if action.nargs == 0:  # a switch such as no-prefix-caching
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key} must be true or false, got {value!r}")
            argv += [f"--{name}"] if value else []
        elif value is not None:
            if isinstance(value, (dict, list)):
                parser.error(f"--config {path}: {key} must be a single value, got {value!r}")
            argv += [f"--{name}", str(value)]
    return argv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, over the --config file's values, over the defaults; then the API key is resolved."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    first = parser.parse_args(argv)
    if first.config is not None:
        argv = config_file_argv(parser, first.config) + argv
    args = parser.parse_args(argv)
    args.api_key = resolve_api_key(parser, args)
    if args.require_api_key and args.api_key is None:
        parser.error(f"--require-api-key: no API key; set ${API_KEY_ENV} or pass --api-key-file")
    if (problem := triton_problem(args.backend, args.device)) is not None:
        parser.error(problem)
    return args


def resolve_api_key(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """--api-key, else --api-key-file, else $MILI_API_KEY, else none (an empty key is an error)."""
    if args.api_key is not None:
        key, source = args.api_key, "--api-key"
    elif args.api_key_file is not None:
        try:
            key, source = args.api_key_file.read_text().strip(), f"--api-key-file {args.api_key_file}"
        except OSError as err:
            parser.error(f"--api-key-file: {err}")
    elif API_KEY_ENV in os.environ:
        key, source = os.environ[API_KEY_ENV].strip(), f"${API_KEY_ENV}"
    else:
        return None
    if not key:
        parser.error(f"the API key from {source} is empty")
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EngineLoader:
    """Builds (LLMEngine, tokenizer) from the parsed arguments when called (off the event loop);
    `close()` stops a tensor-parallel model's worker processes once the server has stopped."""

    def __init__(self, args):
        self.args = args
        self.llm = None

    def __call__(self):
        from mili.engine.llm import LLM

        args, tokenizer = self.args, None
        if not (Path(args.model) / "tokenizer.json").exists():
            from mili.qwen3_tokenizer import (
                qwen3_tokenizer,  # presets use the real Qwen3 vocabulary
            )

            tokenizer = qwen3_tokenizer()
        device = None if args.device == "auto" else args.device
        self.llm = LLM(args.model, tokenizer=tokenizer, dtype=args.dtype, device=device, backend=args.backend,
                       seed=args.seed, block_size=args.block_size, num_kv_blocks=args.num_kv_blocks,
                       max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                       enable_prefix_caching=not args.no_prefix_caching, enforce_eager=args.enforce_eager,
                       tensor_parallel_size=args.tensor_parallel_size)
        warm_up(self.llm)
        report_compiles_while_serving()
        return self.llm.engine, self.llm.tokenizer

    def close(self) -> None:
        if self.llm is not None and self.llm.tensor_parallel_size > 1:
            self.llm.model.shutdown()


def warm_up(llm) -> None:
    """Requests before /health says ready (a Kubernetes readiness probe waits for them): each kind of
    step compiles its kernels on first use, seconds on a GPU that would fall on the first users. A
    prompt one KV block long and a little more, twice: the first runs a prefill and decodes; with
    the prefix cache on, the second reads its first block from the cache, which is a prefill
    over the paged cache (chapter 04's other prefill kernel). On a GPU, then a batch one prompt
    longer than a step's token budget: prefills of many tokens, whose kernels take other tile
    sizes, and a prompt that runs in chunks (or, with the cache, hits it), each later chunk
    reading the earlier ones from the paged cache. Then the prefix cache is emptied, so nothing of
    the warm-up stays in it."""
    from mili.engine.sampling_params import SamplingParams

    engine, new_tokens = llm.engine, 2
    length = max(1, min(engine.config.block_size + 3, engine.max_model_len - new_tokens))
    prompt = {"prompt_token_ids": [0] * length}
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    for _ in range(2 if engine.config.enable_prefix_caching else 1):
        llm.generate([prompt], params, use_tqdm=False)
    if llm.model.device.type == "cuda":
        budget = engine.scheduler.max_num_batched_tokens
        length = max(1, min(engine.max_model_len - new_tokens, budget))
        llm.generate([{"prompt_token_ids": [0] * length}] * (budget // length + 1), params, use_tqdm=False)
    engine.reset_prefix_cache()


def report_compiles_while_serving() -> None:
    """From now on, log every Triton compile: after the warm-up each one stalls a step."""
    from mili.kernels._triton import watch_compiles

    watch_compiles(lambda kernel: log.warning(
        "compiled the Triton kernel %s while serving: a step needed a specialisation that the warm-up did not "
        "cover, and its requests waited for the compiler", kernel))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if any(a == "--api-key" or a.startswith("--api-key=") for a in argv):
        log.warning("--api-key on the command line is visible to every user of this machine (ps); "
                    "prefer --api-key-file or $%s", API_KEY_ENV)
    if args.api_key is None and not is_loopback(args.host):
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model; "
                    "set $%s or --api-key-file", args.host, API_KEY_ENV)
    name = args.served_model_name or Path(args.model).name
    config = ServerConfig(model_name=name, api_key=args.api_key, max_queue=args.max_queue, max_n=args.max_n,
                          max_body_bytes=args.max_body_bytes, reasoning_parser=args.reasoning_parser)
    loader = EngineLoader(args)
    app = build_app(loader, config)
    uv_config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, log_config=None,
                               timeout_graceful_shutdown=int(_ABORT_GRACE_S), access_log=args.log_level == "debug")
    server = DrainingServer(uv_config, app.state.mili, args.shutdown_timeout)
    try:
        server.run()
    finally:
        loader.close()
    if app.state.mili.load_error is not None:
        print(f"mili serve: error: {app.state.mili.load_error}", file=sys.stderr)
        return 1
    if server.group_failure is not None:
        print(f"mili serve: error: {server.group_failure}", file=sys.stderr)
        return 1
    if server.force_exit:  # a second signal: skip the interpreter's teardown of the model (seconds on a busy CPU)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
