"""`SamplingTensors`: one step's per-request sampling parameters, as tensors on the device.

The scheduler hands the sampler B sequences with B different `SamplingParams`; this module packs
them into [B] tensors (and, only when some request uses penalties, [B, V] token-occurrence
tensors) so that exercise 3.1 samples the whole batch with a handful of tensor operations.
The engine's persistent batch keeps these columns per slot and builds the same object by
slicing (`from_columns`); `from_params` builds it from a list, for tests and small examples.
What the sampler must decide before launching anything (all greedy? any filters? how many
candidates?) is computed here on the host, so that sampling never waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mili.engine.sampling_params import _GREEDY_EPS, SamplingParams

GREEDY_EPS = _GREEDY_EPS


@dataclass
class SamplingTensors:
    temperature: Tensor  # [B] float32, 0 = greedy
    top_k: Tensor  # [B] int64, vocab_size = keep all
    top_p: Tensor  # [B] float32, 1 = keep all
    min_p: Tensor  # [B] float32, 0 = keep all
    repetition_penalty: Tensor  # [B] float32, 1 = off
    presence_penalty: Tensor  # [B] float32
    frequency_penalty: Tensor  # [B] float32
    prompt_mask: Tensor | None = None  # [B, V] bool: token occurs in the prompt (None: no penalties)
    output_counts: Tensor | None = None  # [B, V] int32: occurrences in the output so far
    generators: list[torch.Generator | None] | None = None  # per row; None rows use the global RNG
    # Known on the host when the batch is built, so that sampling never asks the device:
    all_greedy: bool = False  # every row is greedy: the sampler is one argmax
    needs_filtering: bool = True  # some sampled row uses top-k, top-p or min-p
    filtered_rows: Tensor | None = None  # [B] bool: the rows that use top-k, top-p or min-p
    max_top_k: int = 0  # every filtering row keeps at most this many tokens (vocab_size: some row has no top-k)

    @classmethod
    def from_params(
        cls,
        params: list[SamplingParams],
        vocab_size: int,
        device: torch.device | str = "cpu",
        *,
        prompt_token_ids: list[list[int]] | None = None,
        output_token_ids: list[list[int]] | None = None,
        generators: list[torch.Generator | None] | None = None,
    ) -> SamplingTensors:
        """Pack B requests' parameters; token histories are needed only if a request uses penalties."""
        if not params:
            raise ValueError("params must hold at least one SamplingParams")
        if generators is not None and len(generators) != len(params):
            raise ValueError(f"need one generator (or None) per row: {len(generators)} for {len(params)} rows")
        rows = [[0.0 if p.is_greedy else float(p.temperature), *(float(getattr(p, name)) for name in FLOAT_COLUMNS[1:]),
                 float(min(p.top_k, vocab_size) if p.top_k > 0 else vocab_size)] for p in params]
        tensors = cls.from_columns(torch.tensor(rows, dtype=torch.float32), vocab_size, device)
        tensors.generators = generators
        if any(p.uses_penalties for p in params):
            if prompt_token_ids is None or output_token_ids is None:
                raise ValueError("penalties need prompt_token_ids and output_token_ids for every row")
            tensors.prompt_mask = token_counts(prompt_token_ids, vocab_size, device) > 0
            tensors.output_counts = token_counts(output_token_ids, vocab_size, device)
        return tensors

    @classmethod
    def from_columns(cls, columns: Tensor, vocab_size: int, device: torch.device | str) -> SamplingTensors:
        """From a host (CPU) table columns [B, 7] float32: FLOAT_COLUMNS then top_k (temperature
        already 0 for greedy rows, top_k = vocab_size for rows that keep every token). The host
        flags are computed here, on the CPU; the table goes to `device` in one copy that does not
        wait (pinned memory on CUDA)."""
        host = columns.numpy()
        temperature, top_p, min_p, top_k = host[:, 0], host[:, 1], host[:, 2], host[:, -1]
        sampled = temperature >= GREEDY_EPS
        filtered = sampled & ((top_k < vocab_size) | (top_p < 1.0) | (min_p > 0.0))
        needs_filtering = bool(filtered.any())
        max_top_k = 0
        if needs_filtering:
            max_top_k = int(top_k[filtered].max()) if (top_k[filtered] < vocab_size).all() else vocab_size
        flags = torch.from_numpy(filtered)
        penalised = (host[:, 3] != 1.0) | (host[:, 4] != 0.0) | (host[:, 5] != 0.0)
        if sampled.any() or penalised.any():  # else the sampler reads nothing but all_greedy: no copy
            pin = torch.device(device).type == "cuda"
            columns, flags = (t.pin_memory() if pin and not t.is_pinned() else t for t in (columns, flags))
            columns, flags = columns.to(device, non_blocking=True), flags.to(device, non_blocking=True)
        fields = dict(zip(FLOAT_COLUMNS, columns.unbind(1)))
        return cls(**fields, top_k=columns[:, -1].long(), all_greedy=not sampled.any(), needs_filtering=needs_filtering,
                   filtered_rows=flags, max_top_k=max_top_k)


FLOAT_COLUMNS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")


def token_counts(rows: list[list[int]], vocab_size: int, device) -> Tensor:
    """[B, V] int32: how often each token id occurs in each row."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.tensor([r + [vocab_size] * (width - len(r)) for r in rows], dtype=torch.int64, device=device)
    counts = torch.zeros(len(rows), vocab_size + 1, dtype=torch.int32, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
    return counts[:, :vocab_size]


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
