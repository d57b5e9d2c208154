"""The offline API, shaped like vLLM's: `LLM(model).generate(prompts, params)`.

    from mili import LLM, SamplingParams
    llm = LLM("data/mili-tiny-qwen3")
    outputs = llm.generate(["2 + 3 ="], SamplingParams(temperature=0, max_tokens=8))
    print(outputs[0].outputs[0].text)

All prompts go into the engine at once; continuous batching runs them together, and the
results come back in the order of the prompts.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import torch

from mili.engine.engine import EngineConfig, LLMEngine
from mili.engine.sampling_params import RequestOutputKind, SamplingParams
from mili.engine.sequence import RequestOutput

DEFAULT_MODEL = str(Path(__file__).resolve().parents[2] / "data" / "mili-tiny-qwen3")

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


class LLM:
    """A model, its tokenizer and an engine, for offline batched generation.

    model: a Hugging Face Qwen3 folder, or a preset name ('Qwen3-0.6B') for random weights.
    dtype: 'auto' (bfloat16 on CUDA, float32 elsewhere), a name or a torch.dtype.
    device: None picks CUDA when present. The engine settings are those of `EngineConfig`.
    tensor_parallel_size: split the model over this many processes (GPUs device, device+1, ...;
    or CPU ranks over gloo); see mili/distributed. On CUDA every rank records its own decode graphs.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, tokenizer=None, dtype: str | torch.dtype = "auto",
                 device: str | torch.device | None = None, backend: str = "auto", seed: int = 0, block_size: int = 16,
                 num_kv_blocks: int | None = None, max_num_seqs: int = 256, max_num_batched_tokens: int | None = None,
                 max_model_len: int | None = None, enable_prefix_caching: bool = True,
                 gpu_memory_utilization: float = 0.9, enforce_eager: bool = False, persistent_batch: bool = True,
                 overlap: bool = True, tensor_parallel_size: int = 1):
        from mili.checkpoint import load_model
        from mili.engine.batched_attention import engine_backend

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model_name = str(model)
        self.tensor_parallel_size = tensor_parallel_size
        if tensor_parallel_size == 1:
            backend = engine_backend(backend, device) if isinstance(backend, str) else backend
            self.model = load_model(model, dtype=_resolve_dtype(dtype), device=device, backend=backend, seed=seed)
        else:
            from functools import partial

            from mili.distributed.model import load_tensor_parallel

            if not isinstance(backend, str):
                raise ValueError("with tensor_parallel_size > 1 name the backend ('auto', 'torch', 'triton'): "
                                 "every rank makes its own")
            self.model = load_tensor_parallel(model, tensor_parallel_size, dtype=_resolve_dtype(dtype), device=device,
                                              make_backend=partial(engine_backend, backend), seed=seed)
        self.tokenizer = _load_tokenizer(tokenizer if tokenizer is not None else model)
        config = EngineConfig(block_size=block_size, num_kv_blocks=num_kv_blocks, max_num_seqs=max_num_seqs,
                              max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                              enable_prefix_caching=enable_prefix_caching,
                              gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                              persistent_batch=persistent_batch, overlap=overlap)
        self.engine = LLMEngine(self.model, self.tokenizer, config)
        self._request_ids = itertools.count()

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """prompts: a string, {'prompt_token_ids': [...]}, or a list of them. sampling_params: one
        for all, or one per prompt. Returns one finished RequestOutput per prompt, in order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if isinstance(sampling_params, (list, tuple)):
            if len(sampling_params) != len(prompts):
                raise ValueError(f"got {len(sampling_params)} sampling_params for {len(prompts)} prompts")
            params = list(sampling_params)
        else:
            params = [sampling_params or SamplingParams()] * len(prompts)
        final_only = {}  # offline: one output per request, when it finishes (nothing built per step)
        params = [final_only.setdefault(id(p), _final_only(p)) for p in params]
        ids = []
        try:
            for prompt, p in zip(prompts, params):
                ids.append(f"offline-{next(self._request_ids)}")
                self.engine.add_request(ids[-1], prompt, p)
        except (ValueError, TypeError):
            for request_id in ids:
                self.engine.abort(request_id)
            raise
        return self._run(ids, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]], sampling_params=None, use_tqdm: bool = True, *,
             add_generation_prompt: bool = True, enable_thinking: bool | None = None) -> list[RequestOutput]:
        """One conversation ([{'role': ..., 'content': ...}]) or a list of them, through the chat template."""
        if self.tokenizer is None:
            raise ValueError("chat needs a tokenizer: load a model folder with tokenizer.json")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=add_generation_prompt, tokenize=False,
                                                      enable_thinking=enable_thinking) for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def stats(self) -> dict:
        """Preemptions, prefix-cache hit rate, KV usage and more, since the engine started."""
        return self.engine.stats()

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        pending, results = set(request_ids), {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(request_ids), desc="Processed prompts", unit="req", dynamic_ncols=True)
        start, generated = time.perf_counter(), 0
        while pending:
            if not self.engine.has_unfinished_requests():
                raise RuntimeError(f"the engine has no work left but {len(pending)} requests never finished")
            outputs = self.engine.step()
            for output in outputs:
                if output.request_id in pending and output.finished:
                    pending.discard(output.request_id)
                    results[output.request_id] = output
                    generated += sum(len(c.token_ids) for c in output.outputs)
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                bar.set_postfix_str(f"{generated / max(time.perf_counter() - start, 1e-9):.0f} out tok/s (finished)")
        if bar is not None:
            bar.close()
        return [results[r] for r in request_ids]


def _final_only(params):
    if not isinstance(params, SamplingParams):
        return params  # the engine names the wrong type
    return dataclasses.replace(params, output_kind=RequestOutputKind.FINAL_ONLY)


def _resolve_dtype(dtype) -> torch.dtype | None:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return None
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto', a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _load_tokenizer(source):
    if source is None:
        return None
    if not isinstance(source, (str, Path)):
        return source  # already a tokenizer
    folder = Path(source).expanduser()
    if not (folder / "tokenizer.json").exists():
        return None  # a preset with random weights: token ids only
    from mili.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(folder)
